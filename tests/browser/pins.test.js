// The page pins each contact's key on first use: when the directory later gives another key
// (here swapped in Redis, as an attacker with write access would), sending is refused with a
// message naming both fingerprints, until the user presses "Trust the new key".
import { execFileSync } from "node:child_process";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import {
  addContact, cleanup, launchBrowser, newUser, sendText, startRedis, startServer, texts, waitFor,
} from "./harness.js";

after(cleanup);

const states = (page) => page.$$eval("#messages li.out", (els) => els.map((e) => [e.querySelector(".text").textContent, e.dataset.state]));

test("a key swapped in the directory is refused until trusted", async () => {
  const redis = await startRedis();
  const prefix = "pins:";
  // Without a directory: pins are the only check (with one, the directory refuses the swap first:
  // swapped.test.js).
  const server = await startServer({ redis, prefix, env: { ENIGMA__DIRECTORY__ENABLED: "false" } });
  const [alice, bob, mallory] = [await launchBrowser(), await launchBrowser(), await launchBrowser()];
  const a = await newUser(alice.context, server.url);
  const b = await newUser(bob.context, server.url);
  const m = await newUser(mallory.context, server.url);
  const bobFp = (await b.page.textContent("#my-fp")).trim();
  const malloryFp = (await m.page.textContent("#my-fp")).trim();
  assert.notEqual(bobFp, malloryFp);

  await addContact(a.page, b.userId, "Bob");
  await sendText(a.page, "before the swap");
  await waitFor("the first message stored", async () =>
    (await states(a.page)).some(([t, s]) => t === "before the swap" && s === "stored"));

  // Mallory's key replaces Bob's in his user record.
  const malloryKey = (await (await fetch(`${server.url}/connect/${m.userId}`)).json()).publicKey;
  execFileSync("redis-cli", ["-p", String(redis.port), "HSET", `${prefix}user:{${b.userId}}`, "publicKey", malloryKey]);
  const swapped = (await (await fetch(`${server.url}/connect/${b.userId}`)).json()).publicKey;
  assert.equal(swapped, malloryKey, "the swap did not reach the directory");

  // A fresh page load (no key cached in memory) sees the new key and refuses to send.
  await a.page.reload();
  await a.page.waitForSelector(`#contacts li[data-user="${b.userId}"]`);
  await a.page.click(`#contacts li[data-user="${b.userId}"]`);
  await waitFor("the chat to warn about the key", async () => (await a.page.textContent("#chat-fp")).includes("KEY CHANGED"));
  await sendText(a.page, "after the swap");
  await waitFor("the refusal", async () => (await a.page.textContent("#compose-error")).includes("CHANGED"));
  const refusal = await a.page.textContent("#compose-error");
  assert.ok(refusal.includes(bobFp) && refusal.includes(malloryFp), `both fingerprints named: ${refusal}`);
  assert.ok(!(await texts(a.page)).includes("after the swap"), "the refused message was stored or sent");
  assert.equal(await a.page.inputValue("#compose-text"), "after the swap", "the draft was lost");

  // Explicit trust: from then on it sends (sealed to the new key).
  await a.page.click("#trust-key");
  await waitFor("the warning to go", async () => !(await a.page.textContent("#chat-fp")).includes("KEY CHANGED"));
  await sendText(a.page, "after trusting");
  await waitFor("the message stored", async () =>
    (await states(a.page)).some(([t, s]) => t === "after trusting" && s === "stored"));
  assert.ok(!(await texts(a.page)).includes("after the swap"));
  assert.deepEqual(a.page.errors, []);
});
