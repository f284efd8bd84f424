// The page on a phone (390×844, touch): one column, the contacts in a drawer that a button
// opens and closes and that choosing a contact closes; never wider than the screen (long words
// and ids wrap, fingerprints between their groups only); the composer and Send on screen. Two
// phone users chat; the one written to names the contact who wrote first. No console error
// (the favicon is served).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cleanup, launchBrowser, newUser, PHONE, shot, startServer, texts, waitFor, waitForText } from "./harness.js";

let server;
after(cleanup);
before(async () => {
  server = await startServer();
});

/** What a user of a phone would call broken: a sideways scroll, Send out of reach. */
async function layout(page) {
  return page.evaluate(() => {
    const send = document.getElementById("send").getBoundingClientRect();
    return {
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth,
      innerHeight,
      send: { left: send.left, right: send.right, top: send.top, bottom: send.bottom, width: send.width },
    };
  });
}

async function assertFits(page, when) {
  const l = await layout(page);
  assert.ok(l.scrollWidth <= l.innerWidth, `${when}: the page scrolls sideways (${l.scrollWidth} > ${l.innerWidth})`);
  return l;
}

async function assertSendVisible(page, when) {
  const l = await assertFits(page, when);
  const s = l.send;
  assert.ok(s.width > 0 && s.left >= 0 && s.right <= l.innerWidth && s.top >= 0 && s.bottom <= l.innerHeight,
    `${when}: Send is not within the screen: ${JSON.stringify(l)}`);
}

/** Whether the drawer is open, as the button says and as the screen shows. */
async function drawer(page) {
  const expanded = await page.getAttribute("#drawer-toggle", "aria-expanded");
  const box = await page.evaluate(() => {
    const r = document.getElementById("drawer").getBoundingClientRect();
    return { left: r.left, right: r.right, visible: getComputedStyle(document.getElementById("drawer")).visibility };
  });
  const onScreen = box.visible === "visible" && box.right > 0 && box.left >= 0;
  return { expanded: expanded === "true", onScreen };
}

async function waitDrawer(page, open) {
  await waitFor(`the drawer ${open ? "open" : "closed"}`, async () => {
    const d = await drawer(page);
    return d.expanded === open && d.onScreen === open;
  });
}

/**
 * The lines (their tops) each group of four of each fingerprint in `selector` is on: a Range
 * over a group's characters has one box per line it is on.
 */
function fingerprintGroupsWhole(page, selector) {
  return page.$eval(selector, (el) => {
    const nodes = [];
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    let text = "";
    while (walker.nextNode()) {
      nodes.push({ node: walker.currentNode, at: text.length });
      text += walker.currentNode.textContent;
    }
    const position = (i) => {
      const n = nodes.findLast((x) => x.at <= i);
      return [n.node, i - n.at];
    };
    const groups = [];
    for (const m of text.matchAll(/[0-9a-f]{4}(?: [0-9a-f]{4}){7}/g)) {
      for (let g = 0; g < 8; g++) {
        const start = m.index + g * 5;
        const range = document.createRange();
        const [last, offset] = position(start + 3);
        range.setStart(...position(start));
        range.setEnd(last, offset + 1);
        const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        groups.push({ group: text.slice(start, start + 4), lines: [...lines] });
      }
    }
    return groups;
  });
}

test("two phone users chat: one column, a contacts drawer, nothing wider than the screen", async () => {
  const alice = await launchBrowser(PHONE);
  const bob = await launchBrowser(PHONE);
  const a = await newUser(alice.context, server.url);
  const b = await newUser(bob.context, server.url);

  // A page with no chat open starts with the drawer open: the id to share and "Add contact".
  await waitDrawer(a.page, true);
  await assertFits(a.page, "a new identity");

  // Alice adds Bob: his chat opens and the drawer closes; Send is within reach.
  await a.page.fill("#add-id", b.userId);
  await a.page.fill("#add-nick", "Bob");
  await a.page.tap("#add-btn");
  await waitFor("Bob's chat open", async () => (await a.page.textContent("#chat-title")).includes(b.userId));
  await waitDrawer(a.page, false);
  await assertSendVisible(a.page, "Alice's chat with Bob");

  // A long word, an id and a link-like run wrap inside the bubble instead of widening the page.
  const long = `${"x".repeat(300)} ${b.userId}${b.userId} https://example.invalid/${"path/".repeat(40)}`;
  for (const t of ["Hello Bob, from a phone 📱", long]) {
    await a.page.fill("#compose-text", t);
    await a.page.tap("#send");
  }
  await waitFor("both sent", async () =>
    (await a.page.$$eval("#messages li.out", (els) => els.map((e) => e.dataset.state))).join() === "stored,stored");
  await assertSendVisible(a.page, "after a long message");

  // Bob: the message from someone new waits behind the drawer button, which says so.
  await waitDrawer(b.page, true);
  await waitFor("Alice in Bob's contacts", async () => (await b.page.$(`#contacts li[data-user="${a.userId}"]`)) !== null);
  await b.page.tap("#drawer-toggle");
  await waitDrawer(b.page, false);
  await waitFor("the unread count on the button", async () => (await b.page.textContent("#drawer-toggle")).includes("(2)"));
  await b.page.tap("#drawer-toggle");
  await waitDrawer(b.page, true);
  await assertFits(b.page, "the drawer open");
  await b.page.tap(`#contacts li[data-user="${a.userId}"] button`);
  await waitDrawer(b.page, false);
  await waitForText(b.page, "Hello Bob, from a phone 📱");
  await waitForText(b.page, long);
  await assertSendVisible(b.page, "Bob's chat with the long message");

  // Bob names the contact who wrote first.
  assert.equal((await b.page.textContent("#rename")).trim(), "Name this contact");
  await b.page.tap("#rename");
  await b.page.fill("#rename-input", "Alice");
  await b.page.tap("#rename-form button[type=submit]");
  await waitFor("the new name in the title", async () => (await b.page.textContent("#chat-title")).startsWith("Alice ("));
  assert.equal((await b.page.textContent(`#contacts li[data-user="${a.userId}"] .name`)).trim(), "Alice");
  assert.equal((await b.page.textContent("#rename")).trim(), "Rename");
  await assertFits(b.page, "after naming");

  await b.page.fill("#compose-text", "Got it, on mine too ✅");
  await b.page.tap("#send");
  await waitForText(a.page, "Got it, on mine too ✅");
  assert.deepEqual(await texts(a.page), ["Hello Bob, from a phone 📱", long, "Got it, on mine too ✅"]);

  await assertSendVisible(a.page, "the end of the chat");
  await shot(a.page, "phone");
  await a.page.tap("#drawer-toggle");
  await waitDrawer(a.page, true);
  await shot(a.page, "phone-contacts");

  // Alice's own fingerprint does not fit the drawer's width: it wraps between groups, never
  // inside one (it is read out group by group).
  const groups = await fingerprintGroupsWhole(a.page, "#my-fp");
  assert.equal(groups.length, 8, JSON.stringify(groups));
  assert.ok(groups.every((g) => g.lines.length === 1), `a fingerprint group split over two lines: ${JSON.stringify(groups)}`);
  assert.ok(new Set(groups.map((g) => g.lines[0])).size >= 2, "the fingerprint did not wrap: this check would prove nothing");
  // Escape closes it too (a phone with a keyboard, or a desktop window made narrow).
  await a.page.keyboard.press("Escape");
  await waitDrawer(a.page, false);
  assert.equal(await a.page.evaluate(() => document.activeElement?.id), "drawer-toggle", "focus went back to the button");

  for (const p of [a.page, b.page]) {
    assert.deepEqual(p.errors, [], "no script error");
    assert.deepEqual(p.consoleErrors, [], "no console error (a missing favicon is one)");
  }
});

test("at desktop width the contacts are a sidebar, with no drawer button", async () => {
  const browser = await launchBrowser();
  const { page } = await newUser(browser.context, server.url);
  assert.equal(await page.isVisible("#drawer-toggle"), false);
  const aside = await page.$eval("#drawer", (el) => ({ width: el.getBoundingClientRect().width, inert: el.inert }));
  assert.ok(aside.width > 250 && !aside.inert, JSON.stringify(aside));
  const icon = await fetch(`${server.url}/assets/favicon.svg`);
  assert.equal(icon.status, 200);
  assert.match(icon.headers.get("content-type"), /^image\/svg\+xml/);
  assert.deepEqual(page.consoleErrors, [], "no console error (a missing favicon is one)");
});
