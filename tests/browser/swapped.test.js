// A key swapped in Redis behind the directory's back (the user record's publicKey rewritten
// after the user was published), as an attacker with write access to Redis would: a fresh
// browser that never saw the user refuses it, because the directory still proves the old key.
// Nothing is pinned and nothing is sent; a contact the directory does prove is added as usual.
import { execFileSync } from "node:child_process";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { cleanup, launchBrowser, newUser, startRedis, startServer, waitFor } from "./harness.js";

after(cleanup);

const published = (server, userId) => async () => (await fetch(`${server.url}/directory/lookup/${userId}`)).status === 200;

test("a key swapped in Redis behind the directory's back is refused by a fresh browser", async () => {
  const redis = await startRedis();
  const prefix = "swapped:";
  const server = await startServer({ redis, prefix });
  const [bob, mallory] = [await launchBrowser(), await launchBrowser()];
  const b = await newUser(bob.context, server.url);
  const m = await newUser(mallory.context, server.url);
  await waitFor("bob published", published(server, b.userId));
  await waitFor("mallory published", published(server, m.userId));

  // Mallory's key replaces Bob's in his user record; the directory is not told.
  const malloryKey = (await (await fetch(`${server.url}/connect/${m.userId}`)).json()).publicKey;
  const redisCli = (...args) => execFileSync("redis-cli", ["-p", String(redis.port), ...args], { encoding: "utf8" }).trim();
  redisCli("HSET", `${prefix}user:{${b.userId}}`, "publicKey", malloryKey);
  const swapped = (await (await fetch(`${server.url}/connect/${b.userId}`)).json()).publicKey;
  assert.equal(swapped, malloryKey, "the swap did not reach /connect");

  // A fresh browser, which never saw Bob, tries to add him.
  const alice = await launchBrowser();
  const a = await newUser(alice.context, server.url);
  await a.page.fill("#add-id", b.userId);
  await a.page.fill("#add-nick", "Bob");
  await a.page.click("#add-btn");
  await waitFor("the refusal", async () => (await a.page.textContent("#add-error")).includes(`does not prove the key of ${b.userId}`));
  assert.match(await a.page.textContent("#add-error"), /Nothing is sealed to a key the directory does not prove/);
  assert.equal(await a.page.$(`#contacts li[data-user="${b.userId}"]`), null, "added all the same");
  const contact = await a.page.evaluate(async (id) => (await import("/assets/store.js")).getContact(id), b.userId);
  assert.equal(contact?.pinnedFp, undefined, `the swapped key was pinned: ${JSON.stringify(contact)}`);
  assert.doesNotMatch(await a.page.textContent("#chat-title"), /Bob/, "a chat with bob opened");

  // The same page adds a contact the directory does prove: the refusal was about the swap.
  await a.page.fill("#add-id", m.userId);
  await a.page.fill("#add-nick", "Mallory");
  await a.page.click("#add-btn");
  await waitFor("mallory added, proven", async () => (await a.page.textContent("#chat-fp")).includes("proven by the server's key directory"));
  assert.equal(await a.page.$(`#contacts li[data-user="${b.userId}"]`), null);

  // Nothing reached Bob: no inbox in Redis, nothing on his page.
  assert.equal(redisCli("EXISTS", `${prefix}inbox:{${b.userId}}`), "0", "a message for bob was stored");
  assert.equal(await b.page.$(`#contacts li[data-user="${a.userId}"]`), null, "bob heard from alice");
  assert.deepEqual(a.page.errors, []);
});
