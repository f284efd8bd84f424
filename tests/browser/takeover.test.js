// A second tab of the same identity takes over: the first says so plainly ("opened in another
// tab", close 4409) and does not fight back (it opens no socket after being replaced), while
// the second tab stays connected and receives.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { addContact, cleanup, launchBrowser, newUser, sendText, shot, startServer, waitFor, waitForText } from "./harness.js";

let server;
after(cleanup);
before(async () => {
  server = await startServer();
});

/** Counts the WebSockets `page` opens, and how each ended. */
function watchSockets(page) {
  const seen = { opened: 0, closed: 0 };
  page.on("websocket", (ws) => {
    seen.opened += 1;
    ws.on("close", () => (seen.closed += 1));
  });
  return seen;
}

test("a second tab takes over; the first shows the banner and opens no new socket", async () => {
  const bob = await launchBrowser();
  const alice = await launchBrowser();
  const b = await newUser(bob.context, server.url);
  const a = await newUser(alice.context, server.url);
  const firstSockets = watchSockets(b.page);
  await addContact(a.page, b.userId, "Bob");

  // The same profile, so the same identity: a second tab of Bob's.
  const second = await bob.context.newPage();
  const secondErrors = [];
  second.on("pageerror", (e) => secondErrors.push(e.message));
  const secondSockets = watchSockets(second);
  await second.goto(`${server.url}/`);
  await second.waitForSelector(`#my-id:text("${b.userId}")`);

  await waitFor("the first tab's banner", async () =>
    (await b.page.isVisible("#banner")) && (await b.page.textContent("#banner-text")).includes("another tab"));
  assert.equal(await b.page.getAttribute("#status", "class"), "status replaced");
  await waitFor("the second tab online", async () => (await second.getAttribute("#status", "class")).includes("online"));
  await shot(b.page, "06-replaced-by-another-tab");

  // The second tab is the live one: it receives. By then the first has had ample time for
  // several reconnect attempts (its backoff starts at 250 ms); it must have made none.
  const started = Date.now();
  await sendText(a.page, "to whichever tab is live");
  await second.click(`#contacts li[data-user="${a.userId}"]`);
  await waitForText(second, "to whichever tab is live");
  const settle = Math.max(0, 3000 - (Date.now() - started));
  await new Promise((r) => setTimeout(r, settle)); // a window to watch for sockets, not a wait for a condition
  assert.equal(firstSockets.opened, 0, "the replaced tab opened a socket after the takeover");
  assert.equal(secondSockets.opened, 1, "the live tab's one socket");
  assert.equal(secondSockets.closed, 0, "the live tab was not displaced back");
  assert.equal(await second.getAttribute("#status", "class"), "status online");
  assert.equal(await b.page.getAttribute("#status", "class"), "status replaced");
  assert.deepEqual([...b.page.errors, ...secondErrors, ...a.page.errors], [], "no script error");
});

test("'Use this tab' shows at once what the other tab received meanwhile", async () => {
  const bob = await launchBrowser();
  const alice = await launchBrowser();
  const b = await newUser(bob.context, server.url);
  const a = await newUser(alice.context, server.url);
  await addContact(a.page, b.userId, "Bob");
  await sendText(a.page, "to the first tab");
  await b.page.click(`#contacts li[data-user="${a.userId}"]`);
  await waitForText(b.page, "to the first tab");

  // A second tab takes over and receives; the first keeps Alice's chat open, stopped.
  const second = await bob.context.newPage();
  await second.goto(`${server.url}/`);
  await waitFor("the first tab replaced", async () => (await b.page.getAttribute("#status", "class")) === "status replaced");
  await waitFor("the second tab online", async () => (await second.getAttribute("#status", "class")).includes("online"));
  await sendText(a.page, "while the second tab was live");
  await second.click(`#contacts li[data-user="${a.userId}"]`);
  await waitForText(second, "while the second tab was live");

  // The first tab takes over again: its open chat shows the message without being reopened.
  await b.page.click("#banner-action");
  await waitFor("the first tab online", async () => (await b.page.getAttribute("#status", "class")).includes("online"));
  await waitForText(b.page, "while the second tab was live", 5000);
  assert.equal(await b.page.isVisible("#banner"), false);
  assert.deepEqual(b.page.errors, [], "no script error");
});
