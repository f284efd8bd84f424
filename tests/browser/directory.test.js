// The key directory in the page: the checks compiled to WebAssembly (/assets/enigma_verify.wasm,
// `make wasm`) load under the page's own Content-Security-Policy, accept the valid answers of
// docs/vectors/directory-v1.json and refuse every tampered one for the reason the native code
// gives; and the page uses a contact's key only once the directory proves it. The relay of these
// tests has no directory, so its answers are played from the vectors (routed by the browser).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, cleanup, launchBrowser, newUser, startServer, waitFor } from "./harness.js";

const VECTORS = JSON.parse(readFileSync(join(ROOT, "docs/vectors/directory-v1.json"), "utf8"));
const [FIRST, , LATEST] = VECTORS.roots;
const BOB = VECTORS.lookup;

let server;
after(cleanup);
before(async () => {
  server = await startServer();
});

test("the WebAssembly checks accept the vectors' answers and refuse each tampered one for its reason", async () => {
  const browser = await launchBrowser();
  const page = await browser.context.newPage();
  await page.goto(`${server.url}/`);
  const results = await page.evaluate(async (vectors) => {
    const { check } = await import("/assets/directory.js");
    const [first, , latest] = vectors.roots;
    const outcome = async (request) => {
      try {
        return { done: true, answer: await check(request) };
      } catch (e) {
        return { done: false, kind: e.kind, error: e.message };
      }
    };
    const begun = await outcome({ op: "begin", kept: first, root: latest });
    const extended = await outcome({ op: "extend", kept: first, answer: vectors.audit, target: latest });
    const { userId, publicKey, answer } = vectors.lookup;
    const proven = await outcome({ op: "lookup", kept: latest, answer, userId, publicKey });
    const history = await outcome({ op: "history", kept: latest, answer: vectors.history.answer, userId: "alice" });
    const refused = [];
    for (const case_ of vectors.refused) refused.push({ name: case_.name, ...(await outcome(case_.request)) });
    return { begun, extended, proven, history, refused };
  }, VECTORS);
  assert.equal(results.begun.answer.next, "audit");
  assert.deepEqual([results.begun.answer.from, results.begun.answer.to], [1, 3]);
  assert.equal(results.extended.answer.done, true);
  assert.deepEqual(results.extended.answer.kept, LATEST);
  assert.deepEqual(results.proven.answer, { version: 1, epoch: 3 });
  assert.deepEqual(results.history.answer.versions.map((v) => v.publicKey), VECTORS.history.keys);
  assert.equal(results.refused.length, VECTORS.refused.length);
  for (const [i, got] of results.refused.entries()) {
    assert.equal(got.done, false, `${got.name}: accepted`);
    assert.equal(got.kind, VECTORS.refused[i].kind, `${got.name}: ${got.error}`);
  }
  await browser.close();
});

/**
 * Plays the directory of the vectors (bob's key proven at epoch 3) on `context`'s requests;
 * `connectKey` is what /connect says bob's key is, `root` what /directory/root answers.
 */
async function playDirectory(context, { connectKey = BOB.publicKey, root = () => LATEST } = {}) {
  const json = (route, status, body) => route.fulfill({ status, contentType: "application/json", body: JSON.stringify(body) });
  await context.route(/\/connect\/bob$/, (route) => json(route, 200, { userId: "bob", user: "bob", publicKey: connectKey }));
  await context.route(/\/directory\//, (route) => {
    const path = new URL(route.request().url()).pathname;
    if (path === "/directory/root") return json(route, 200, root());
    if (path === "/directory/lookup/bob") return json(route, 200, BOB.answer);
    if (path === `/directory/audit/${FIRST.epoch}/${LATEST.epoch}`) return json(route, 200, VECTORS.audit);
    return json(route, 404, { error: "not found", code: "not_found" });
  });
}

const keptRoot = (page) =>
  page.evaluate(async () => (await import("/assets/store.js")).getDirectoryRoot());

async function addBob(page) {
  await page.fill("#add-id", "bob");
  await page.fill("#add-nick", "Bob");
  await page.click("#add-btn");
}

test("a contact's key is used once the directory proves it, and the root is kept", async () => {
  const browser = await launchBrowser();
  await playDirectory(browser.context);
  const { page } = await newUser(browser.context, server.url);
  await addBob(page);
  await waitFor("the proven key", async () => (await page.textContent("#chat-fp")).includes("proven by the server's key directory (epoch 3)"));
  assert.deepEqual(await keptRoot(page), LATEST);
  assert.deepEqual(page.errors, []);
  await browser.close();
});

test("a key the directory does not prove is refused, and nothing is pinned", async () => {
  const browser = await launchBrowser();
  // /connect hands out another key for bob than the directory proves.
  await playDirectory(browser.context, { connectKey: VECTORS.refused[0].request.publicKey });
  const { page } = await newUser(browser.context, server.url);
  await addBob(page);
  await waitFor("the refusal", async () => (await page.textContent("#add-error")).includes("does not prove the key of bob"));
  const error = await page.textContent("#add-error");
  assert.match(error, /Nothing is sealed to a key the directory does not prove/);
  assert.equal(await page.$(`#contacts li[data-user="bob"]`), null, "added all the same");
  await browser.close();
});

/**
 * A page that proved Bob's key at the newest root (epoch 3) and keeps that root, served by a
 * directory whose root the test then changes with `serve(root)`.
 */
async function pageKeepingTheNewestRoot() {
  const browser = await launchBrowser();
  let root = LATEST;
  await playDirectory(browser.context, { root: () => root });
  const { page } = await newUser(browser.context, server.url);
  await addBob(page);
  await waitFor("the proven key", async () => (await page.textContent("#chat-fp")).includes("epoch 3"));
  return { browser, page, serve: (next) => (root = next) };
}

test("a directory rolled back behind the kept root is refused", async () => {
  const { browser, page, serve } = await pageKeepingTheNewestRoot();
  // The next load finds an older root: refused, the kept one stays.
  serve(FIRST);
  await page.reload();
  await page.waitForSelector(`#contacts li[data-user="bob"]`);
  await page.click(`#contacts li[data-user="bob"]`);
  await waitFor("the rollback named", async () => (await page.textContent("#chat-fp")).includes("ROLLBACK"));
  assert.match(await page.textContent("#chat-fp"), /does not prove the key of bob/);
  assert.deepEqual(await keptRoot(page), LATEST);
  await browser.close();
});

test("the owner's page reads its own history and says so plainly when the directory cannot prove it", async () => {
  const browser = await launchBrowser();
  await playDirectory(browser.context);
  // Whoever the page is, the directory answers with alice's history: not this user's entry.
  await browser.context.route(/\/directory\/history\//, (route) =>
    route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify(VECTORS.history.answer) }));
  const { page } = await newUser(browser.context, server.url);
  await waitFor("the notice", async () => (await page.textContent("#notice-text")).includes("could not prove your own key"));
  assert.match(await page.textContent("#notice-text"), /answered about user alice/);
  assert.equal(await page.isVisible("#notice"), true);
  await browser.close();
});

test("a server that had a directory cannot turn proofs off by answering 404 at its root", async () => {
  const browser = await launchBrowser();
  await playDirectory(browser.context);
  const { page } = await newUser(browser.context, server.url);
  await addBob(page);
  await waitFor("the proven key", async () => (await page.textContent("#chat-fp")).includes("epoch 3"));
  // The next load finds a server that says it has no directory (a plain 404, no Retry-After).
  await page.route(/\/directory\/root$/, (route) =>
    route.fulfill({ status: 404, contentType: "application/json", body: JSON.stringify({ error: "not found", code: "not_found" }) }));
  await page.reload();
  await page.waitForSelector(`#contacts li[data-user="bob"]`);
  await page.click(`#contacts li[data-user="bob"]`);
  await waitFor("the refusal", async () => (await page.textContent("#chat-fp")).includes("does not prove the key of bob"));
  const fp = await page.textContent("#chat-fp");
  assert.match(fp, /had a key directory \(epoch 3\) and now says it has none/);
  assert.doesNotMatch(fp, /checked against the pinned key only/);
  assert.deepEqual(await keptRoot(page), LATEST);
  await browser.close();
});

test("the owner's page says so when a server with a directory keeps not showing the owner's own key", async () => {
  const browser = await launchBrowser();
  await playDirectory(browser.context);
  // The directory (whose root the page keeps) answers 404 to every request for the owner's history.
  const asked = new Set();
  await browser.context.route(/\/directory\/history\//, (route) => {
    asked.add(decodeURIComponent(new URL(route.request().url()).pathname.split("/").pop()));
    return route.fulfill({ status: 404, contentType: "application/json", body: JSON.stringify({ error: "not found", code: "user_not_found" }) });
  });
  const { page, userId } = await newUser(browser.context, server.url);
  await waitFor("the notice", async () => (await page.textContent("#notice-text")).includes("could not show your own key"), 30_000);
  const notice = await page.textContent("#notice-text");
  assert.match(notice, new RegExp(`\\(${userId}\\) in 3 attempts: ${userId} is not in the server's key directory`));
  assert.equal(await page.isVisible("#notice"), true);
  assert.deepEqual([...asked], [userId]);
  assert.deepEqual(await keptRoot(page), LATEST);
  await browser.close();
});

/**
 * `root` re-signed by another key, as the relay serves every root once its signing key was
 * rotated (the root itself does not change).
 */
function reSigned(root) {
  const seed = Buffer.alloc(32, 4);
  const key = createPrivateKey({ key: Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed]), format: "der", type: "pkcs8" });
  const publicKey = createPublicKey(key).export({ format: "der", type: "spki" }).subarray(-32);
  const epoch = Buffer.alloc(8);
  epoch.writeBigUInt64BE(BigInt(root.epoch));
  const message = Buffer.concat([
    Buffer.from("enigma directory root v1\0"), epoch, Buffer.from(root.rootHash, "hex"), Buffer.from(root.vrfPublicKey, "base64"),
  ]);
  return { ...root, keyId: "k2", signingKey: publicKey.toString("base64"), signature: sign(null, message, key).toString("base64") };
}

test("after the server rotated its signing key the page follows the kept root, re-signed, and says so", async () => {
  const { browser, page, serve } = await pageKeepingTheNewestRoot();
  // The next load finds every root signed by the new key.
  const root = serve(reSigned(LATEST));
  await browser.context.route(/\/directory\/lookup\/bob$/, (route) =>
    route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify({ ...BOB.answer, root }) }));
  await page.reload();
  await waitFor("the notice", async () => (await page.textContent("#notice-text")).includes("signing key changed"));
  const notice = await page.textContent("#notice-text");
  assert.match(notice, /^The key directory's signing key changed from "test-1" \(.+\) to "k2" \(.+\); its roots are proven to extend the root this client kept\.$/);
  await page.click(`#contacts li[data-user="bob"]`);
  await waitFor("the proven key", async () => (await page.textContent("#chat-fp")).includes("proven by the server's key directory (epoch 3)"));
  assert.deepEqual(await keptRoot(page), root);
  assert.deepEqual(page.errors, []);
  await browser.close();
});
