// A browser user and a CLI user (`target/debug/enigma`, the Rust SDK) exchange messages both
// ways: the page's WebCrypto HPKE (auth mode, payload v2) and the `hpke` crate agree. Then the
// relay (Redis engine, so users survive) restarts mid-chat on the same port and the page
// recovers by itself: a message sent while it was down is delivered once it is back.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  addContact, cleanup, cli, launchBrowser, newUser, sendText, shot, startRedis, startServer, tempDir, texts,
  waitFor, waitForText,
} from "./harness.js";

let redis;
after(cleanup);
before(async () => {
  redis = await startRedis();
});

test("a browser user and a CLI user talk both ways; the page survives a server restart", async () => {
  let server = await startServer({ redis, prefix: "interop" });
  const home = tempDir();
  const key = join(home, "cli.key");
  cli(server.url, key, ["keygen"]);
  const cliUser = cli(server.url, key, ["login"]).trim().split("\n").pop().trim();

  const browser = await launchBrowser();
  const { page, userId } = await newUser(browser.context, server.url);
  await addContact(page, cliUser, "Terminal");

  // Browser -> CLI.
  const toCli = "from the browser: naïve façade — 🚀";
  await sendText(page, toCli);
  const heard = JSON.parse(cli(server.url, key, ["listen", "--json", "--count", "1"]).trim());
  assert.equal(heard.from, userId);
  assert.equal(heard.text, toCli);

  // CLI -> browser.
  const toPage = "from the terminal: ¡hola! 🌍";
  cli(server.url, key, ["send", userId, toPage]);
  await waitForText(page, toPage);
  await shot(page, "05-browser-and-cli");

  // The relay restarts on the same port; the page reconnects by itself.
  const port = server.port;
  await server.stop();
  await waitFor("the page to notice", async () => !(await page.getAttribute("#status", "class")).includes("online"));
  server = await startServer({ port, redis, prefix: "interop" });
  cli(server.url, key, ["send", userId, "after the restart"]);
  await waitForText(page, "after the restart", 30000);
  await waitFor("online again", async () => (await page.getAttribute("#status", "class")).includes("online"));
  // And the page can still send: a receipt arrives for a message sent after the restart.
  await sendText(page, "still here");
  const back = JSON.parse(cli(server.url, key, ["listen", "--json", "--count", "1"]).trim());
  assert.equal(back.text, "still here");
  assert.deepEqual(await texts(page), [toCli, toPage, "after the restart", "still here"]);
  assert.deepEqual(page.errors, []);
});
