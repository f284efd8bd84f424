// The server restarts under open pages.
// - Without its data (the memory engine): the pages recover by themselves. The server no longer
//   knows their users, so each registers its key again and gets a NEW id, said plainly; the
//   conversations stay as history; a message that waited through the outage ends failed with its
//   reason and a Retry, never "sending…" for ever; a page opened only after the restart recovers
//   too; the statuses are words, never a close code. A server that refuses the key for good gets
//   a "Start again", which makes a fresh identity.
// - With its data (SIGKILL, then a new process on the same port and store): the pages simply go
//   on, same ids, and every message receipted before the restart arrives; one queued during the
//   outage is sent once the server is back. At desktop width and on a phone. The store is Redis,
//   and the embedded engine's file (the default without Redis).
// - Races with the registration again: another tab of the same browser starting again meanwhile
//   (this tab stops and says so; the stored identity is never a new key under the old key's id),
//   and a second trigger meanwhile (it joins the recovery: one new id, each message sent once).
import { randomBytes } from "node:crypto";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import {
  PHONE, addContact, cleanup, isOnline, launchBrowser, messages, newUser, openTab, sendText, shot, shown,
  startRedis, startServer, tempDir, texts, waitFor, waitForText,
} from "./harness.js";

after(cleanup);

/** A raw close code, as the page once showed them ("disconnected (1006), reconnecting…"). */
const RAW_CODE = /\b(1000|1001|1002|1005|1006|1007|1008|1009|1011|1012|1013|1015|4401|4404|4408|4409|4429)\b|disconnected \(/;
function assertWords(texts, who) {
  const raw = texts.filter((t) => RAW_CODE.test(t));
  assert.deepEqual(raw, [], `${who} showed a close code`);
}

const outgoing = async (page) => (await messages(page)).filter((m) => m.state !== "received");
const openChat = async (page, userId) => {
  await page.click(`#contacts li[data-user="${userId}"]`);
  await page.waitForSelector(`#contacts li.active[data-user="${userId}"]`, { state: "attached" });
};

// A relay that lost its data lost its key directory too: a page that kept a root is shown a new
// directory signed by a new key and refuses it, as it must (it cannot tell that from an attack;
// what the page should offer then is open). This test is about registering again, so its relay
// runs without the directory.
const NO_DIRECTORY = { ENIGMA__DIRECTORY__ENABLED: "false" };

test("the server restarts without its data: both pages register again, say their new id, and nothing waits for ever", async () => {
  let server = await startServer({ engine: "memory", env: NO_DIRECTORY });
  const { port } = server;
  const [alice, bob] = [await launchBrowser(), await launchBrowser()];
  const a = await newUser(alice.context, server.url);
  const b = await newUser(bob.context, server.url);
  await addContact(a.page, b.userId, "Bob");
  await addContact(b.page, a.userId, "Alice");
  await sendText(a.page, "before the restart");
  await waitForText(b.page, "before the restart");
  await sendText(b.page, "answered before it");
  await waitForText(a.page, "answered before it");
  await b.page.close(); // Bob comes back only once the server is back: a fresh page load

  // The server dies and stays down; what Alice writes meanwhile waits, then fails, with a Retry.
  await server.kill();
  await waitFor("Alice's page to notice", async () => !(await isOnline(a.page)));
  await sendText(a.page, "written during the outage");
  await waitFor("the status to say the server is unreachable", async () =>
    /^Server unreachable — retrying in \d+ s$/.test(await a.page.textContent("#status")));
  await waitFor("the waiting message to fail", async () =>
    (await outgoing(a.page)).some((m) => m.text === "written during the outage" && m.state === "failed"), 40000);
  const failed = (await outgoing(a.page)).find((m) => m.text === "written during the outage");
  assert.match(failed.meta, /NOT SENT.*could not be reached/, failed.meta);
  assert.ok(await a.page.isVisible("#messages li.failed .retry"), "no Retry on the failed message");
  await shot(a.page, "08-server-unreachable");

  // It comes back empty: Alice's open page registers her key again and says so.
  server = await startServer({ port, engine: "memory", env: NO_DIRECTORY });
  await waitFor("Alice's new id", async () => (await a.page.textContent("#my-id")) !== a.userId, 30000);
  const aliceNow = (await a.page.textContent("#my-id")).trim();
  await waitFor("Alice online again", () => isOnline(a.page));
  const said = await a.page.textContent("#notice-text");
  assert.ok(said.includes("new id") && said.includes(aliceNow) && said.includes("share it again"), said);
  assert.ok(await a.page.isVisible("#notice"));
  await shot(a.page, "09-new-id-after-the-server-lost-its-data");

  // Bob's page, opened after the restart, does the same (it used to say "connecting…" for ever).
  const back = await openTab(bob.context);
  await back.goto(`${server.url}/`);
  await waitFor("Bob's new id", async () => {
    const id = (await back.textContent("#my-id")).trim();
    return id && id !== b.userId;
  }, 30000);
  const bobNow = (await back.textContent("#my-id")).trim();
  await waitFor("Bob online again", () => isOnline(back));
  assert.ok((await back.textContent("#notice-text")).includes(bobNow));

  // The conversations are kept, as history; the old ids name nobody now, so Retry fails at once
  // with the reason (the queued message is never stuck).
  await openChat(back, a.userId);
  assert.deepEqual(await texts(back), ["before the restart", "answered before it"]);
  await a.page.click("#messages li.failed .retry");
  await waitFor("the retried message to fail with its reason", async () => {
    const m = (await outgoing(a.page)).find((x) => x.text === "written during the outage");
    return m.state === "failed" && /does not know/.test(m.meta);
  });
  assert.deepEqual((await texts(a.page)).slice(0, 2), ["before the restart", "answered before it"]);

  // Shared again, the new ids chat as before.
  await addContact(a.page, bobNow, "Bob (new id)");
  await addContact(back, aliceNow, "Alice (new id)");
  await sendText(a.page, "hello again");
  await waitForText(back, "hello again");
  await sendText(back, "hello again to you");
  await waitForText(a.page, "hello again to you");

  // A reload keeps the new identity.
  assertWords(await shown(a.page), "Alice's page");
  await a.page.reload();
  await waitFor("Alice online after a reload", () => isOnline(a.page));
  assert.equal((await a.page.textContent("#my-id")).trim(), aliceNow);

  assertWords(await shown(back), "Bob's page");
  assertWords(await shown(a.page), "Alice's page after the reload");
  assert.deepEqual([...a.page.errors, ...back.errors], [], "no script error");
  return { alice, bob };
});

test("a server that refuses the key for good: the page says so and Start again makes a new identity", async () => {
  let server = await startServer({ engine: "memory" });
  const { port } = server;
  const browser = await launchBrowser();
  const { page, userId } = await newUser(browser.context, server.url);

  // The new server accepts no key as long as this page's (43 characters): registering again is refused.
  await server.kill();
  server = await startServer({ port, engine: "memory", env: { ENIGMA__LIMITS__MAX_PUBLIC_KEY_BYTES: "16" } });
  await waitFor("the banner offering to start again", () => page.isVisible("#start-again"), 30000);
  const banner = await page.textContent("#banner-text");
  assert.match(banner, /refuses to register/, banner);
  assert.match(await page.getAttribute("#status", "class"), /lost/);
  await shot(page, "10-start-again");
  assertWords(await shown(page), "the page");

  // Start again: this browser forgets the identity; the page offers to create one.
  await page.click("#start-again");
  await page.waitForSelector("#welcome:not([hidden])");
  assert.equal(await page.isVisible("#app"), false);

  // With a server that accepts keys, the new identity is made and connects.
  await server.kill();
  server = await startServer({ port, engine: "memory" });
  await page.reload();
  await page.waitForSelector("#welcome:not([hidden])");
  await page.click("#create");
  await page.waitForSelector("#my-id:not(:empty)");
  await waitFor("online with the new identity", () => isOnline(page));
  assert.notEqual((await page.textContent("#my-id")).trim(), userId);
  assert.equal(await page.$$eval("#contacts li", (els) => els.length), 0);
  assert.deepEqual(page.errors, [], "no script error");
});

/**
 * Alice at desktop width, Bob on a phone: they chat, Bob leaves, Alice writes three messages
 * (receipted), the server is killed, Alice writes one more; a new server process starts on the
 * same port and store. Both go on with the same ids and everything arrives.
 */
async function survivesWithItsData(startDurable) {
  let server = await startDurable();
  const { port } = server;
  const alice = await launchBrowser();
  const bob = await launchBrowser(PHONE);
  const a = await newUser(alice.context, server.url);
  const b = await newUser(bob.context, server.url);
  await addContact(a.page, b.userId, "Bob");
  await b.page.fill("#add-id", a.userId);
  await b.page.fill("#add-nick", "Alice");
  await b.page.tap("#add-btn");
  await waitFor("Bob's chat with Alice", async () => (await b.page.textContent("#chat-title")).includes(a.userId));
  await sendText(a.page, "before 1");
  await waitForText(b.page, "before 1");
  await sendText(b.page, "before 2");
  await waitForText(a.page, "before 2");
  await b.page.close();

  const receipted = ["receipted 1", "receipted 2 — ü", "receipted 3 🎉"];
  for (const t of receipted) await sendText(a.page, t);
  await waitFor("Alice's messages receipted", async () => (await outgoing(a.page)).every((m) => m.state === "stored"));

  await server.kill();
  await waitFor("Alice's page to notice", async () => !(await isOnline(a.page)));
  await sendText(a.page, "during the outage");
  server = await startDurable(port);

  await waitFor("Alice online again", () => isOnline(a.page), 30000);
  await waitFor("the queued message sent", async () =>
    (await outgoing(a.page)).every((m) => m.state === "stored"), 30000);
  assert.equal((await a.page.textContent("#my-id")).trim(), a.userId, "Alice's id changed");
  assert.equal(await a.page.isVisible("#notice"), false, "a notice of a new id");

  const back = await openTab(bob.context);
  await back.goto(`${server.url}/`);
  await waitFor("Bob online again", () => isOnline(back), 30000);
  assert.equal((await back.textContent("#my-id")).trim(), b.userId, "Bob's id changed");
  await waitFor("the unread count", async () => (await back.textContent("#drawer-toggle")).includes("(4)"));
  // A page with no chat open starts with the contacts drawer open.
  assert.equal(await back.getAttribute("#drawer-toggle", "aria-expanded"), "true");
  await back.tap(`#contacts li[data-user="${a.userId}"] button`);
  const all = ["before 1", "before 2", ...receipted, "during the outage"];
  await waitFor("everything, once, in order", async () => JSON.stringify(await texts(back)) === JSON.stringify(all))
    .catch(async (e) => assert.fail(`${e.message}: ${JSON.stringify(await texts(back))}`));
  await back.fill("#compose-text", "all here");
  await back.tap("#send");
  await waitForText(a.page, "all here");

  assertWords(await shown(a.page), "Alice's page");
  assertWords(await shown(back), "Bob's page");
  assert.deepEqual([...a.page.errors, ...back.errors], [], "no script error");
  return { alice, bob };
}

test("the server restarts with its data (Redis, new token keys): the pages sign in again and go on, same ids, nothing lost", async () => {
  const redis = await startRedis();
  const prefix = `restart-${process.pid}:`;
  // Each process signs tokens with a key of its own: the pages' tokens from before are refused
  // (4401) and they sign in again by themselves.
  let n = 0;
  const keys = () => ({ ENIGMA__AUTH__TOKEN_KEYS: `k${++n}:${randomBytes(32).toString("base64")}` });
  const { alice } = await survivesWithItsData((port) => startServer({ port, redis, prefix, env: keys() }));
  const tokens = alice.requests.filter((u) => new URL(u).pathname === "/auth/token");
  assert.equal(tokens.length, 2, "Alice's page signed in once before the restart and once after");
});

test("the server restarts with its data (embedded engine, SIGKILL): the pages go on, same ids, nothing lost", async () => {
  const dir = tempDir("enigma-data-");
  await survivesWithItsData((port) => startServer({ port, env: { ENIGMA__DATA_DIR: dir } }));
});

/** Holds `page`'s registrations (`GET /login/…`) until `release()`; `count` says how many came. */
async function holdRegistrations(page) {
  let release;
  const released = new Promise((r) => (release = r));
  const held = { count: 0, release };
  await page.route("**/login/*", async (route) => {
    held.count += 1;
    await released;
    await route.continue();
  });
  return held;
}

/** What `page`'s browser stores as its identity (its user id, key, former ids), or null. */
const storedIdentity = (page) => page.evaluate(async () => {
  const me = await (await import("/assets/store.js")).getIdentity();
  return me ? { userId: me.userId, publicKey: me.publicKey, formerIds: me.formerIds ?? [] } : null;
});

/**
 * Two tabs of Bob's, the first replaced by the other; the server loses its data and refuses his
 * key, so the other offers Start again; then a server that accepts keys (returned).
 */
async function twoTabsOneOfferingStartAgain() {
  let server = await startServer({ engine: "memory" });
  const { port } = server;
  const bob = await launchBrowser();
  const first = (await newUser(bob.context, server.url)).page;
  const other = await openTab(bob.context);
  await other.goto(`${server.url}/`);
  await waitFor("the first tab replaced", async () => (await first.getAttribute("#status", "class")) === "status replaced");
  await waitFor("the other tab online", () => isOnline(other));

  await server.kill();
  server = await startServer({ port, engine: "memory", env: { ENIGMA__LIMITS__MAX_PUBLIC_KEY_BYTES: "16" } });
  await waitFor("the other tab's Start again", () => other.isVisible("#start-again"), 30000);
  await server.kill();
  server = await startServer({ port, engine: "memory" });
  return { server, first, other };
}

/** `page` stopped because another tab started again, says so in words, and offers a reload. */
async function assertStartedAgainElsewhere(page) {
  assert.equal(await page.getAttribute("#status", "class"), "status started-again");
  assert.equal(await page.textContent("#status"), "Stopped: another tab started again");
  assert.match(await page.textContent("#banner-text"), /Another tab started again.*Reload this tab/);
  assert.ok(await page.isVisible("#reload"), "no Reload");
  assertWords(await shown(page), "the stopped tab");
}

/**
 * The first tab takes over and registers the key again; while that registration is under way,
 * the other starts again (and, `withNewKey`, makes a new identity). The first must stop and say
 * so, and leave what the other wrote alone.
 */
async function startAgainDuringRecovery(withNewKey) {
  const { server, first: recovering, other } = await twoTabsOneOfferingStartAgain();
  const held = await holdRegistrations(recovering);
  await recovering.click("#banner-action");
  await waitFor("the registration again", () => held.count === 1);
  assert.equal(await recovering.getAttribute("#status", "class"), "status recovering");

  await other.click("#start-again");
  await other.waitForSelector("#welcome:not([hidden])");
  let fresh = null;
  if (withNewKey) {
    await other.click("#create");
    await waitFor("the other tab online with a new identity", () => isOnline(other));
    fresh = await storedIdentity(other);
  }

  held.release();
  await waitFor("the registration to end", async () =>
    (await recovering.getAttribute("#status", "class")) !== "status recovering");
  // Only what the other tab wrote: its own key under its own id, or nothing.
  assert.deepEqual(await storedIdentity(other), fresh, "the stored identity was rewritten");
  if (fresh) {
    const listed = await (await fetch(`${server.url}/connect/${fresh.userId}`)).json();
    assert.equal(listed.publicKey, fresh.publicKey, "the stored id is not the stored key's");
  }
  await assertStartedAgainElsewhere(recovering);
  assert.deepEqual([...recovering.errors, ...other.errors], [], "no script error");

  // Reloaded, it shows what this browser holds now.
  await recovering.click("#reload");
  if (fresh) {
    await waitFor("the reloaded tab on the new identity", async () => (await recovering.textContent("#my-id")).trim() === fresh.userId);
  } else {
    await recovering.waitForSelector("#welcome:not([hidden])");
  }
}

test("another tab starts again while this one registers again: this one stops and says so", async () => {
  await startAgainDuringRecovery(false);
});

test("another tab starts again with a new key while this one registers again: never the new key under the old key's id", async () => {
  await startAgainDuringRecovery(true);
});

test("'Use this tab' after another tab started again with a new key: this one stops and offers a reload", async () => {
  const { first, other } = await twoTabsOneOfferingStartAgain();
  await other.click("#start-again");
  await other.waitForSelector("#welcome:not([hidden])");
  await other.click("#create");
  await waitFor("the other tab online with a new identity", () => isOnline(other));
  const fresh = (await other.textContent("#my-id")).trim();

  await first.click("#banner-action");
  await waitFor("the first tab to stop", async () => (await first.getAttribute("#status", "class")) !== "status replaced");
  await assertStartedAgainElsewhere(first);
  assert.ok(await isOnline(other), "the other tab was displaced");
  await first.click("#reload");
  await waitFor("the reloaded tab on the new identity", async () => (await first.textContent("#my-id")).trim() === fresh);
  assert.deepEqual([...first.errors, ...other.errors], [], "no script error");
});

test("a second trigger while the page registers again joins that recovery: one new id, each waiting message sent once", async () => {
  // Without the directory, like the first test: a page that kept a root before the relay lost its
  // data (its own history is read once it is online: a race with the kill below) refuses the new
  // directory, as it must.
  let server = await startServer({ engine: "memory", env: NO_DIRECTORY });
  const { port } = server;
  const alice = await launchBrowser();
  const { page, userId } = await newUser(alice.context, server.url);
  // The page without its app (whose relay would be a second tab of Alice's): the test drives a
  // relay of its own, with the page's modules and store.
  await page.route("**/assets/app.js", (route) => route.fulfill({ contentType: "text/javascript", body: "" }));
  await page.reload();
  const sent = new Map(); // a message's ref -> how many times it was sent
  page.on("websocket", (ws) => ws.on("framesent", ({ payload }) => {
    const frame = JSON.parse(payload);
    if (frame.ref) sent.set(frame.ref, (sent.get(frame.ref) ?? 0) + 1);
  }));

  await server.kill();
  server = await startServer({ port, engine: "memory", env: NO_DIRECTORY });
  const bobKey = randomBytes(32).toString("base64url");
  const bob = (await (await fetch(`${server.url}/login/${bobKey}`)).json()).userId;
  const held = await holdRegistrations(page);
  // Two messages to Bob wait (written before the page knows its id is gone), then it connects.
  const refs = await page.evaluate(async (to) => {
    const { Relay } = await import("/assets/relay.js");
    const store = await import("/assets/store.js");
    const relay = new Relay(await store.getIdentity());
    window.relay = relay;
    window.reidentified = 0;
    relay.addEventListener("reidentified", () => (window.reidentified += 1));
    const refs = [(await relay.send(to, "waiting 1")).msgId, (await relay.send(to, "waiting 2")).msgId];
    await relay.start();
    return refs;
  }, bob);
  await waitFor("the registration again", () => held.count === 1);
  assert.equal(await page.evaluate(() => window.relay.state), "recovering");

  // A second trigger: the page is asked to reconnect now.
  await page.evaluate(() => window.relay.reconnectNow());
  await new Promise((r) => setTimeout(r, 1000)); // a window for a second registration, not a wait for a condition
  const registrations = held.count;
  held.release();

  await waitFor("online again", async () => (await page.evaluate(() => window.relay.state)) === "online");
  await waitFor("both messages receipted", () => page.evaluate(async () =>
    (await (await import("/assets/store.js")).pending()).length === 0));
  const me = await storedIdentity(page);
  assert.notEqual(me.userId, userId);
  assert.deepEqual(me.formerIds, [userId], "the ids it had before");
  assert.equal(await page.evaluate(() => window.reidentified), 1, "re-identified more than once");
  assert.deepEqual(refs.map((ref) => sent.get(ref)), [1, 1], "times each waiting message was sent");
  assert.equal(registrations, 1, "registrations while the first was under way");
  assert.deepEqual(page.errors, [], "no script error");
});
