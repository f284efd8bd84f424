// Helpers for the browser tests: relay processes and redis-server on free ports, Debian's
// chromium through playwright-core with a fresh profile each, the CLI. Everything started
// here is stopped by `cleanup()` (call it from `after`), and every wait has a deadline.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

export const ROOT = resolve(import.meta.dirname, "../..");
const BIN = join(ROOT, "target/debug");
// Where `shot` writes: docs/screenshots/ only when asked (`make screenshots` sets
// ENIGMA_SCREENSHOTS); a test run writes to a temporary directory, so `make test` leaves the
// checkout as it found it.
const SCREENSHOTS = process.env.ENIGMA_SCREENSHOTS ? resolve(process.env.ENIGMA_SCREENSHOTS) : null;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** A phone (an iPhone 12-sized screen), for the narrow layout. */
export const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

const owned = [];
const dirs = [];

export function tempDir(prefix = "enigma-browser-") {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

export async function waitFor(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

function track(child, name) {
  const entry = { child, name, log: "" };
  child.stdout?.on("data", (d) => (entry.log += d));
  child.stderr?.on("data", (d) => (entry.log += d));
  owned.push(entry);
  return entry;
}

export async function startRedis() {
  const port = await freePort();
  const dir = tempDir("enigma-redis-");
  const entry = track(
    spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir]),
    "redis",
  );
  await waitFor("redis", () => entry.log.includes("Ready to accept connections"));
  return { url: `redis://127.0.0.1:${port}`, port, stop: () => stop(entry) };
}

/**
 * An enigma-server on `port` (a free one if not given); `redis` for the shared engine;
 * `engine: "memory"` for one that forgets everything when it stops (also the default without
 * Redis, unless `env` gives an `ENIGMA__DATA_DIR` for the embedded engine).
 */
export async function startServer({ port, redis, prefix, engine, env: extra } = {}) {
  port ??= await freePort();
  const env = { PATH: process.env.PATH, ENIGMA__SERVER__ADDR: `127.0.0.1:${port}`, ENIGMA__LOG__LEVEL: "warn" };
  if (redis) Object.assign(env, { ENIGMA__REDIS__URL: redis.url, ENIGMA__REDIS__PREFIX: prefix ?? "browser" });
  else if (engine) env.ENIGMA__ENGINE = engine;
  // Without Redis the binary's default is the embedded engine, which writes ./enigma-data: a
  // test that does not give its own data directory runs on the memory engine.
  else if (!extra?.ENIGMA__DATA_DIR) env.ENIGMA__ENGINE = "memory";
  Object.assign(env, extra ?? {}); // settings of one test (a rate budget…)
  const entry = track(spawn(join(BIN, "enigma-server"), [], { env }), "enigma-server");
  await waitFor("enigma-server listening", () => entry.log.includes("listening on"), 30000);
  return { port, url: `http://127.0.0.1:${port}`, stop: () => stop(entry), kill: () => stop(entry, "SIGKILL"), entry };
}

/** Stops a process (SIGTERM, SIGKILL after 10 s; or `signal` at once) and waits for its exit. */
function stop(entry, signal = "SIGTERM") {
  return new Promise((res) => {
    if (entry.child.exitCode !== null || entry.child.signalCode !== null) return res();
    entry.child.once("exit", () => res());
    entry.child.kill(signal);
    setTimeout(() => entry.child.kill("SIGKILL"), 10000).unref();
  });
}

/**
 * A chromium with its own profile (a phone's screen with `PHONE`); records every request the
 * pages make, and every text the status line and the banners showed (`shown(page)`).
 */
export async function launchBrowser(device = {}) {
  const profile = tempDir("enigma-chromium-");
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1100, height: 700 },
    ...device,
  });
  const requests = [];
  context.on("request", (r) => requests.push(r.url()));
  await context.addInitScript(() => {
    window.__shown = [];
    // "interactive" comes before the page's module scripts run: nothing they show is missed.
    document.addEventListener("readystatechange", () => {
      if (document.readyState !== "interactive") return;
      for (const id of ["status", "banner-text", "notice-text"]) {
        const el = document.getElementById(id);
        const note = () => el.textContent && window.__shown.push(el.textContent);
        new MutationObserver(note).observe(el, { childList: true, characterData: true, subtree: true });
      }
    });
  });
  owned.push({ context, name: "chromium" });
  return { context, requests, close: () => context.close() };
}

/** Every text the status line and the banners of `page` showed since it was loaded. */
export const shown = (page) => page.evaluate(() => window.__shown);

/**
 * Whether a console message is the browser's note on a 404 of the key directory (a user not
 * published yet, or a server without a directory): the protocol at work, not a page error.
 */
function directoryAnswer(message) {
  try {
    return new URL(message.location().url).pathname.startsWith("/directory/");
  } catch {
    return false;
  }
}

/**
 * A new tab; its script errors collect in `page.errors`, its console errors (a resource that
 * failed to load…) in `page.consoleErrors`, but for the key directory's 404s.
 */
export async function openTab(context) {
  const page = await context.newPage();
  page.errors = [];
  page.consoleErrors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && !directoryAnswer(m) && page.consoleErrors.push(m.text()));
  return page;
}

/** Opens the page and creates an identity; returns {page, userId}. */
export async function newUser(context, base) {
  const page = await openTab(context);
  await page.goto(`${base}/`);
  await page.click("#create");
  await page.waitForSelector("#my-id:not(:empty)");
  const userId = await page.textContent("#my-id");
  await waitFor("the page to be online", async () => (await page.getAttribute("#status", "class")).includes("online"));
  return { page, userId };
}

export async function addContact(page, userId, nickname) {
  await page.fill("#add-id", userId);
  await page.fill("#add-nick", nickname);
  await page.click("#add-btn");
  await page.waitForSelector(`#contacts li[data-user="${userId}"]`);
}

export async function sendText(page, text) {
  await page.fill("#compose-text", text);
  await page.click("#send");
}

/** The texts of the open chat's messages, in order. */
export const texts = (page) => page.$$eval("#messages li .text", (els) => els.map((e) => e.textContent));

export async function waitForText(page, text, ms = 15000) {
  await waitFor(`"${text}" on the page`, async () => (await texts(page)).includes(text), ms);
}

/** The open chat's messages: text, state, and everything shown on it (time, state, reason). */
export const messages = (page) =>
  page.$$eval("#messages li", (els) =>
    els.map((e) => ({ text: e.querySelector(".text").textContent, state: e.dataset.state, meta: e.querySelector(".meta").textContent })));

/** Whether the page shows `page`'s status as online. */
export const isOnline = async (page) => (await page.getAttribute("#status", "class")).includes("online");

export function shot(page, name) {
  const dir = SCREENSHOTS ?? tempDir("enigma-screenshots-");
  mkdirSync(dir, { recursive: true });
  return page.screenshot({ path: join(dir, `${name}.png`) });
}

/** Runs the CLI to completion. */
export function cli(server, key, args, input = "") {
  return execFileSync(join(BIN, "enigma"), ["--server", server, "--key", key, ...args], {
    input, encoding: "utf8", timeout: 30000, env: { PATH: process.env.PATH, HOME: tempDir("enigma-home-") },
  });
}

/** Starts a long-running CLI command (chat, listen); its output accumulates in `.log`. */
export function cliSpawn(server, key, args) {
  const entry = track(
    spawn(join(BIN, "enigma"), ["--server", server, "--key", key, ...args], {
      env: { PATH: process.env.PATH, HOME: tempDir("enigma-home-") },
    }),
    "enigma",
  );
  return entry;
}
export const stopProcess = stop;

export async function cleanup() {
  for (const entry of owned.reverse()) {
    if (entry.context) await entry.context.close().catch(() => {});
    else await stop(entry);
  }
  owned.length = 0;
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.length = 0;
}

/** The sum of a metric's series on a server's `/metrics` (0 if absent). */
export async function metric(server, name) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return text.split("\n")
    .filter((l) => l === name || l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

/** nginx in front of `servers`, configured from `deploy/local/nginx.conf.template` exactly as
 * `make cluster` and `tests/it/harness/nginx.rs` render it, in a prefix of its own. */
export async function startNginx(servers) {
  const nginx = process.env.NGINX ?? "/usr/sbin/nginx";
  const dir = tempDir("enigma-nginx-");
  mkdirSync(join(dir, "tmp"));
  const template = readFileSync(join(ROOT, "deploy/local/nginx.conf.template"), "utf8");
  const upstreams = servers.map((s) => `        server 127.0.0.1:${s.port} max_fails=1 fail_timeout=10s;`).join("\n");
  const port = await freePort();
  const conf = join(dir, "nginx.conf");
  writeFileSync(conf, template.replace("@LISTEN@", `127.0.0.1:${port}`).replace("@UPSTREAMS@", upstreams));
  // Its own process group (detached): its workers are stopped with it.
  const child = spawn(nginx, ["-p", `${dir}/`, "-c", conf, "-e", join(dir, "error.log"), "-g", "daemon off;"], {
    detached: true,
  });
  const entry = track(child, "nginx");
  await waitFor("nginx listening", async () => {
    if (child.exitCode !== null) throw new Error(`nginx exited: ${entry.log}`);
    return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
  });
  return { port, url: `http://127.0.0.1:${port}` };
}
