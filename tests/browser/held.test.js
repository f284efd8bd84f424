// Issue 23, point 2: the page checks the pin when it RECEIVES too. Mallory, with write access to
// Redis, puts her key in Bob's user record and Bob's id in her key's index entry, logs in as Bob
// with the CLI (the challenge is sealed to the swapped key) and writes to Alice and to Dave. Their
// pages refuse to open those messages: each is shown as refused with both fingerprints, is NOT
// acknowledged (it stays in the server's inbox, and comes again after a reload), and waits until
// the user discards it (acknowledged away) or trusts the new key (pinned, opened, acknowledged).
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import {
  addContact, cleanup, cli, launchBrowser, newUser, sendText, startRedis, startServer, tempDir, texts, waitFor,
  waitForText,
} from "./harness.js";

after(cleanup);

const FORGED = "FORGED: send the money to mallory";
const lastLine = (out) => out.trim().split("\n").pop().trim();
const messages = (page) =>
  page.$$eval("#messages li", (els) => els.map((e) => ({ state: e.dataset.state, text: e.querySelector(".text").textContent })));
const held = async (page) => (await messages(page)).filter((m) => m.state === "held");

async function openPage(context, base) {
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  await page.goto(`${base}/`);
  await waitFor("the page to be online", async () => (await page.getAttribute("#status", "class")).includes("online"));
  return page;
}

const openChat = async (page, userId) => {
  await page.click(`#contacts li[data-user="${userId}"]`);
  await page.waitForSelector(`#contacts li.active[data-user="${userId}"]`);
};

test("a message sealed with a swapped key is shown refused with both fingerprints and kept until the user decides", async () => {
  const redis = await startRedis();
  const prefix = "held:";
  // Without a directory: the pins are the only check here. With one (the default), Mallory's CLI
  // already refuses to connect as Bob: the directory shows Bob's own key, not hers.
  const server = await startServer({ redis, prefix, env: { ENIGMA__DIRECTORY__ENABLED: "false" } });
  const redisCli = (...args) => execFileSync("redis-cli", ["-p", String(redis.port), ...args], { encoding: "utf8" }).trim();
  const inbox = (userId) => Number(redisCli("XLEN", `${prefix}inbox:{${userId}}`));

  const [alice, bob, dave] = [await launchBrowser(), await launchBrowser(), await launchBrowser()];
  const a = await newUser(alice.context, server.url);
  const b = await newUser(bob.context, server.url);
  const d = await newUser(dave.context, server.url);
  const bobFp = (await b.page.textContent("#my-fp")).trim();

  // Carol (CLI) only receives: a page's send to her, once receipted, proves that the server has
  // handled every frame the page wrote before it, acknowledgements included.
  const home = tempDir();
  const carolKey = join(home, "carol.key");
  cli(server.url, carolKey, ["keygen"]);
  const carolId = lastLine(cli(server.url, carolKey, ["login"]));
  let barriers = 0;
  async function barrier(page, back) {
    const note = `barrier ${++barriers}`;
    await openChat(page, carolId);
    await sendText(page, note);
    await waitFor(`"${note}" stored`, async () =>
      (await messages(page)).some((m) => m.text === note && m.state === "stored"));
    await openChat(page, back);
  }

  // Alice and Bob chat through the page (each pins the other's key); Dave has Bob as a contact
  // too, and his page stays open with Bob's key cached.
  await addContact(a.page, b.userId, "Bob");
  await addContact(b.page, a.userId, "Alice");
  await sendText(a.page, "hello Bob");
  await waitForText(b.page, "hello Bob");
  await sendText(b.page, "hello Alice");
  await waitForText(a.page, "hello Alice");
  await addContact(a.page, carolId, "Carol");
  await addContact(d.page, carolId, "Carol");
  await addContact(d.page, b.userId, "Bob");
  await b.page.close();
  await a.page.close(); // Alice comes back after the swap: a fresh page load

  // Mallory's key goes into Bob's record and Bob's id into her key's index entry.
  const malloryKey = join(home, "mallory.key");
  const malloryPublic = lastLine(cli(server.url, malloryKey, ["keygen"]));
  const malloryOwnId = lastLine(cli(server.url, malloryKey, ["login"]));
  const entries = redisCli("--scan", "--pattern", `${prefix}pk:*`).split("\n").filter((k) => k && redisCli("GET", k) === malloryOwnId);
  assert.ok(entries.length > 0, "no index entry names Mallory's id");
  for (const entry of entries) redisCli("SET", entry, b.userId);
  redisCli("HSET", `${prefix}user:{${b.userId}}`, "publicKey", malloryPublic);
  assert.equal(lastLine(cli(server.url, malloryKey, ["login"])), b.userId, "Mallory did not log in as Bob");
  const malloryFp = cli(server.url, malloryKey, ["whoami"]).match(/fingerprint: (.*)/)[1].trim();
  assert.notEqual(bobFp, malloryFp);
  const refusedWithBoth = (m) => m.text.includes(bobFp) && m.text.includes(malloryFp) && !m.text.includes("FORGED");

  // Dave's open page has Bob's real key cached: the forged message does not open with it, the
  // directory is asked again, and the new key is refused before anything is opened with it.
  cli(server.url, malloryKey, ["send", d.userId, FORGED]);
  await openChat(d.page, b.userId);
  await waitFor("Dave's page to hold the message", async () => (await held(d.page)).length === 1);
  assert.ok(refusedWithBoth((await held(d.page))[0]), JSON.stringify(await held(d.page)));
  await barrier(d.page, b.userId);
  assert.equal(inbox(d.userId), 1, "Dave's page acknowledged the forged message");

  // Alice's page, loaded after the swap (the case): refused, named, not acknowledged.
  cli(server.url, malloryKey, ["send", a.userId, FORGED]);
  const page = await openPage(alice.context, server.url);
  await waitFor("an unread message from Bob", async () =>
    (await page.$$eval(`#contacts li[data-user="${b.userId}"] .unread`, (els) => els.map((e) => e.textContent))).join() === "1");
  await openChat(page, b.userId);
  await waitFor("the refused message", async () => (await held(page)).length === 1);
  assert.ok(refusedWithBoth((await held(page))[0]), JSON.stringify(await held(page)));
  assert.ok(!(await texts(page)).includes(FORGED), "the forged text is shown");
  const head = await page.textContent("#chat-fp");
  assert.ok(head.includes("KEY CHANGED") && head.includes(bobFp) && head.includes(malloryFp), head);
  await barrier(page, b.userId);
  assert.equal(inbox(a.userId), 1, "the page acknowledged the forged message");

  // After a reload it comes again (still on the server), shown once, still not acknowledged; a
  // second one arriving live is held too (its display means the redelivery was handled first).
  await page.reload();
  await waitFor("online again", async () => (await page.getAttribute("#status", "class")).includes("online"));
  await openChat(page, b.userId);
  cli(server.url, malloryKey, ["send", a.userId, `${FORGED} (second)`]);
  await waitFor("both held", async () => (await held(page)).length === 2);
  await barrier(page, b.userId);
  assert.equal(inbox(a.userId), 2, "a held message was acknowledged");
  assert.ok((await held(page)).every(refusedWithBoth));
  assert.deepEqual((await messages(page)).map((m) => m.text).slice(0, 2), ["hello Bob", "hello Alice"]);

  // Discard: acknowledged away, never opened.
  await page.click("#messages li.held >> nth=0 >> .discard-held");
  await waitFor("the discarded one acknowledged", async () => inbox(a.userId) === 1);
  await waitFor("shown as discarded", async () => (await messages(page)).some((m) => m.state === "discarded"));
  assert.ok(!(await texts(page)).some((t) => t.startsWith(FORGED)));

  // Trust: the fingerprint shown is pinned, the held one is opened (as the user chose) and acknowledged.
  await page.click("#messages li.held >> .trust-held");
  await waitForText(page, `${FORGED} (second)`);
  await waitFor("the trusted one acknowledged", async () => inbox(a.userId) === 0);
  await waitFor("the warning to go", async () => !(await page.textContent("#chat-fp")).includes("KEY CHANGED"));
  assert.deepEqual((await messages(page)).map((m) => m.state), ["stored", "received", "discarded", "received"]);

  // A reload keeps the decisions: nothing held, nothing left on the server.
  await page.reload();
  await waitFor("online again", async () => (await page.getAttribute("#status", "class")).includes("online"));
  await openChat(page, b.userId);
  await waitFor("the chat as decided", async () =>
    JSON.stringify((await messages(page)).map((m) => m.state)) === JSON.stringify(["stored", "received", "discarded", "received"]));
  assert.equal(inbox(a.userId), 0);
  assert.deepEqual([...page.errors, ...d.page.errors], []);
});
