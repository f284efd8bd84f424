// A `rate_limited` refusal is shown where it happened: with a send budget of two messages,
// five sent quickly give two marked sent (and received) and three marked NOT SENT, rate
// limited, each on its own message.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { addContact, cleanup, launchBrowser, newUser, sendText, shot, startServer, texts, waitFor } from "./harness.js";

let server;
after(cleanup);
before(async () => {
  server = await startServer({
    env: {
      ENIGMA__RATE__SEND_MESSAGES_PER_USER__BURST: "2",
      ENIGMA__RATE__SEND_MESSAGES_PER_USER__PER_SECOND: "0.01",
    },
  });
});

const outgoing = (page) => page.$$eval("#messages li.out", (els) =>
  els.map((e) => ({ text: e.querySelector(".text").textContent, state: e.dataset.state, meta: e.textContent })));

test("messages over the send budget are marked refused, rate limited, where they were sent", async () => {
  const alice = await launchBrowser();
  const bob = await launchBrowser();
  const a = await newUser(alice.context, server.url);
  const b = await newUser(bob.context, server.url);
  await addContact(a.page, b.userId, "Bob");
  await addContact(b.page, a.userId, "Alice");
  const sent = ["one", "two", "three", "four", "five"];
  for (const t of sent) await sendText(a.page, t);
  await waitFor("every message settled", async () => {
    const out = await outgoing(a.page);
    return out.length === 5 && out.every((m) => m.state === "stored" || m.state === "failed");
  }).catch(async (e) => assert.fail(`${e.message}: ${JSON.stringify(await outgoing(a.page))}`));
  const out = await outgoing(a.page);
  const stored = out.filter((m) => m.state === "stored");
  const failed = out.filter((m) => m.state === "failed");
  assert.equal(stored.length, 2, JSON.stringify(out));
  assert.equal(failed.length, 3, JSON.stringify(out));
  for (const m of failed) assert.match(m.meta, /NOT SENT.*rate limited/, JSON.stringify(m));
  assert.deepEqual(out.map((m) => m.text), sent, "each refusal on its own message, in place");
  await shot(a.page, "07-rate-limited");
  // Bob gets exactly the two that were accepted.
  await waitFor("Bob has the accepted two", async () =>
    JSON.stringify(await texts(b.page)) === JSON.stringify(stored.map((m) => m.text)));
  assert.deepEqual([...a.page.errors, ...b.page.errors], [], "no script error");
});
