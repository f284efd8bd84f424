// The page behind nginx (configured from `deploy/local/nginx.conf.template`, as `make cluster`
// does) in front of two replicas on one Redis: two browser users, on different replicas,
// chat both ways through it.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  addContact, cleanup, launchBrowser, metric, newUser, sendText, startNginx, startRedis, startServer, waitFor,
  waitForText,
} from "./harness.js";

let replicas, lb;
after(cleanup);
before(async () => {
  const redis = await startRedis();
  const prefix = `browser-lb-${process.pid}:`;
  replicas = [await startServer({ redis, prefix }), await startServer({ redis, prefix })];
  lb = await startNginx(replicas);
});

const open = async () => Promise.all(replicas.map((r) => metric(r, "enigma_connections_open")));

test("two browser users on two replicas behind nginx chat both ways", async () => {
  const alice = await launchBrowser();
  const bob = await launchBrowser();
  const a = await newUser(alice.context, lb.url);
  const b = await newUser(bob.context, lb.url);
  // Round-robin decides where each socket lands; reload Bob until the two are on different
  // replicas, so that the chat really crosses them.
  for (let i = 0; i < 10; i++) {
    const counts = await open();
    if (counts[0] === 1 && counts[1] === 1) break;
    // Each reload makes the same number of requests: one or two more, by turns, shift the
    // round-robin to the other replica whatever that number is.
    for (let extra = 0; extra <= i % 2; extra++) await fetch(`${lb.url}/healthz`);
    await b.page.reload();
    await waitFor("Bob online again", async () => (await b.page.getAttribute("#status", "class")).includes("online"));
    await waitFor("one socket per user", async () => (await open()).reduce((x, y) => x + y) === 2);
  }
  assert.deepEqual(await open(), [1, 1], "one socket on each replica");

  await addContact(a.page, b.userId, "Bob");
  await addContact(b.page, a.userId, "Alice");
  await sendText(a.page, "through the balancer → 🛰");
  await waitForText(b.page, "through the balancer → 🛰");
  await sendText(b.page, "and back ← ✔");
  await waitForText(a.page, "and back ← ✔");
  await waitFor("both messages marked sent", async () => {
    const states = await Promise.all([a.page, b.page].map((p) =>
      p.$$eval("#messages li.out", (els) => els.map((e) => e.dataset.state))));
    return states.flat().length === 2 && states.flat().every((s) => s === "stored");
  });
  const origin = new URL(lb.url).origin;
  const foreign = [...alice.requests, ...bob.requests].filter((u) => new URL(u).origin !== origin);
  assert.deepEqual(foreign, [], "every request goes through the balancer");
  assert.deepEqual([...a.page.errors, ...b.page.errors], [], "no script error");
});
