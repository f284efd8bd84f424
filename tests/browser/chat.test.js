// Two browser users chat both ways through the server's own page, end-to-end encrypted, with
// any Unicode; one leaves, receives while away, comes back with the same identity and gets it
// all; an unknown id is refused where it was typed; the page never leaves its origin.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  addContact, cleanup, launchBrowser, newUser, sendText, shot, startServer, texts, waitFor, waitForText,
} from "./harness.js";

let server;
after(cleanup);
before(async () => {
  server = await startServer();
});

test("two browser users chat both ways, receive while away, and nothing leaves the origin", async () => {
  const alice = await launchBrowser();
  const bob = await launchBrowser();
  const a = await newUser(alice.context, server.url);
  const b = await newUser(bob.context, server.url);
  await shot(a.page, "01-identity");

  await addContact(a.page, b.userId, "Bob");
  await addContact(b.page, a.userId, "Alice");
  const hello = "Grüße, café ☕ — 你好 👋🏽";
  await sendText(a.page, hello);
  await waitForText(b.page, hello);
  await waitFor("Alice's message marked sent", async () =>
    (await a.page.$$eval("#messages li.out", (els) => els.map((e) => e.dataset.state))).every((s) => s === "stored"));
  await sendText(b.page, "Bien reçu ✅");
  await waitForText(a.page, "Bien reçu ✅");
  await shot(a.page, "02-chat");

  // Bob closes his tab; Alice writes three messages; Bob comes back in the same profile.
  await b.page.close();
  const away = ["while you were away 1", "while you were away 2 — ü", "while you were away 3 🎉"];
  for (const t of away) await sendText(a.page, t);
  await waitFor("Alice's messages stored", async () =>
    (await a.page.$$eval("#messages li.out", (els) => els.map((e) => e.dataset.state))).every((s) => s === "stored"));
  const back = await bob.context.newPage();
  const backErrors = [];
  back.on("pageerror", (e) => backErrors.push(e.message));
  await back.goto(`${server.url}/`);
  await back.waitForSelector(`#my-id:text("${b.userId}")`);
  await waitFor("an unread count of 3", async () =>
    (await back.textContent(`#contacts li[data-user="${a.userId}"] .unread`))?.trim() === "3");
  await shot(back, "03-unread");
  await back.click(`#contacts li[data-user="${a.userId}"]`);
  await waitFor("everything, once, in order", async () => {
    const seen = await texts(back);
    return JSON.stringify(seen) === JSON.stringify([hello, "Bien reçu ✅", ...away]);
  });

  // An unknown id is refused where it was typed, and nothing is added.
  await back.fill("#add-id", "00000000-0000-4000-8000-000000000000");
  await back.click("#add-btn");
  await waitFor("the refusal", async () => (await back.textContent("#add-error")).includes("user not found"));
  assert.equal(await back.$$eval("#contacts li", (els) => els.length), 1);
  await shot(back, "04-unknown-user");

  const origin = new URL(server.url).origin;
  const foreign = [...alice.requests, ...bob.requests].filter((u) => new URL(u).origin !== origin);
  assert.deepEqual(foreign, [], "every request stays on the page's origin");
  assert.deepEqual([...a.page.errors, ...backErrors], [], "no script error");
});

test("the page is served with a strict policy and the protocol's routes are unchanged", async () => {
  const res = await fetch(`${server.url}/`);
  assert.equal(res.status, 200);
  const csp = res.headers.get("content-security-policy");
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /connect-src 'self'/);
  // No inline script and no JavaScript eval; WebAssembly (the directory's checks) may be compiled.
  assert.doesNotMatch(csp, /unsafe-inline|'unsafe-eval'/);
  assert.match(csp, /script-src 'self' 'wasm-unsafe-eval';/);
  assert.equal(res.headers.get("x-content-type-options"), "nosniff");
  const js = await fetch(`${server.url}/assets/app.js`);
  assert.match(js.headers.get("content-type"), /^text\/javascript/);
  const missing = await fetch(`${server.url}/assets/nope.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).code, "not_found");
  const other = await fetch(`${server.url}/index.html`);
  assert.equal(other.status, 404);
});

test("a note to self (a message to one's own id) is shown once", async () => {
  const browser = await launchBrowser();
  const other = await launchBrowser();
  const { page, userId } = await newUser(browser.context, server.url);
  const o = await newUser(other.context, server.url);
  await addContact(page, userId, "");
  assert.match(await page.textContent("#chat-title"), /^Notes to self/);
  await sendText(page, "remember the milk");
  await sendText(page, "and the bread");
  await waitFor("both notes receipted", async () =>
    (await page.$$eval("#messages li", (els) => els.map((e) => e.dataset.state))).join() === "stored,stored");
  // Each note is delivered back to this page too. Deliveries come in order: once a message
  // sent after the notes has arrived, their deliveries have been handled.
  await addContact(o.page, userId, "Note taker");
  await sendText(o.page, "after your notes");
  await waitFor("the later message", async () => (await page.$(`#contacts li[data-user="${o.userId}"]`)) !== null);
  assert.deepEqual(await texts(page), ["remember the milk", "and the bread"]);
  await page.reload();
  await waitFor("online again", async () => (await page.getAttribute("#status", "class")).includes("online"));
  await page.click(`#contacts li[data-user="${userId}"]`);
  await waitFor("the notes, once each, after a reload", async () =>
    JSON.stringify(await texts(page)) === JSON.stringify(["remember the milk", "and the bread"]));
  assert.equal(await page.textContent(`#contacts li[data-user="${userId}"] .name`), "Notes to self");
  assert.equal(await page.$(`#contacts li[data-user="${userId}"] .unread`), null, "a note counted as unread");
  assert.deepEqual(page.errors, []);
});
