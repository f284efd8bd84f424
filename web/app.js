// The page: create or load the identity, then contacts and chats. Everything shown comes
// from IndexedDB (store.js); the network side is relay.js; the sealing is payload.js. Below
// 700 px wide it is one column, the contacts in a drawer (drawer.js).
import * as store from "./store.js";
import { Refusal, Relay, lookup, register } from "./relay.js";
import { directoryEvents } from "./directory.js";
import { b64urlEncode, fingerprint } from "./payload.js";
import { generateKeyPair, rawPublic } from "./hpke.js";
import * as drawer from "./drawer.js";

const $ = (id) => document.getElementById(id);
let me = null;
let relay = null;
let current = null; // the open chat's user id

function show(id, on = true) {
  $(id).hidden = !on;
}

/** A fingerprint: groups of four hex digits, separated by single spaces. */
const FINGERPRINT = /[0-9a-f]{4}(?: [0-9a-f]{4}){7}/g;

/**
 * Sets `el`'s text with each fingerprint's groups kept whole (a line breaks between groups,
 * never inside one): a fingerprint read out over the phone is read group by group.
 */
function setText(el, text) {
  const parts = [];
  let at = 0;
  for (const match of text.matchAll(FINGERPRINT)) {
    parts.push(text.slice(at, match.index));
    match[0].split(" ").forEach((group, i) => {
      if (i) parts.push(" ");
      const span = document.createElement("span");
      span.className = "fp-group";
      span.textContent = group;
      parts.push(span);
    });
    at = match.index + match[0].length;
  }
  parts.push(text.slice(at));
  el.replaceChildren(...parts.filter((p) => p !== ""));
}

/** The connection banner: what is wrong now, with the one action that helps (if any). */
function banner(text, action) {
  setText($("banner-text"), text);
  show("banner", Boolean(text));
  show("banner-action", action === "takeover");
  show("start-again", action === "start-again");
  show("reload", action === "reload");
}

/** A lasting notice (the id changed): stays until dismissed. */
function notice(text) {
  setText($("notice-text"), text);
  show("notice", Boolean(text));
}

// The server rotated its key directory's signing key: followed (the new roots extend the kept
// one), and said, as the CLI says it.
directoryEvents.addEventListener("signer-changed", ({ detail }) => {
  notice(`${detail.message.charAt(0).toUpperCase()}${detail.message.slice(1)}.`);
});

async function createIdentity() {
  $("create").disabled = true;
  $("welcome-error").textContent = "";
  try {
    const pair = await generateKeyPair();
    const publicRaw = await rawPublic(pair.publicKey);
    const publicKey = b64urlEncode(publicRaw);
    const userId = await register(publicKey);
    const identity = { userId, publicKey, publicRaw, privateKey: pair.privateKey, created: Date.now() };
    await store.putIdentity(identity);
    await start(identity);
  } catch (e) {
    $("welcome-error").textContent = `Could not create the identity: ${e.message}`;
    $("create").disabled = false;
  }
}

async function start(identity) {
  me = identity;
  show("welcome", false);
  show("app");
  $("my-id").textContent = me.userId;
  setText($("my-fp"), await fingerprint(me.publicRaw));
  drawer.setup({ open: !current });
  relay = new Relay(me);
  relay.addEventListener("state", ({ detail }) => {
    $("status").textContent = detail.text;
    $("status").className = `status ${detail.state}`;
    if (detail.state === "replaced") banner(detail.text, "takeover");
    else if (detail.state === "started-again") banner(detail.reason, "reload");
    else if (detail.state === "lost") {
      banner(`${detail.reason} Start again makes a new identity here; this browser then forgets the old one and its conversations.`, "start-again");
    } else if (detail.state === "online") {
      banner("");
      // What arrived while this tab was not the live one (another tab stored it): show it now.
      refresh();
    }
  });
  relay.addEventListener("problem", ({ detail }) => banner(detail.text));
  relay.addEventListener("directory-refused", ({ detail }) => notice(detail.text));
  relay.addEventListener("reidentified", ({ detail }) => {
    me = relay.me;
    $("my-id").textContent = me.userId;
    notice(
      `The server lost its data: you have a new id, ${detail.now} — share it again. ` +
        `Your conversations are kept here as history; a contact who lost their id too has a new one: add it.`,
    );
  });
  relay.addEventListener("message", ({ detail }) => onMessage(detail));
  relay.addEventListener("update", ({ detail }) => current === detail.peer && renderMessages());
  await renderContacts();
  await relay.start();
}

/** Shows the contacts and the open chat as stored now. */
async function refresh() {
  await renderContacts();
  if (current) await renderMessages();
}

/** Start again: this browser forgets its identity for this server, and the page starts fresh. */
async function startAgain() {
  $("start-again").disabled = true;
  relay?.stop();
  await store.clearAll();
  location.reload();
}

/**
 * The contact's key as the directory gives it now, checked against the pinned fingerprint:
 * null if it is the pinned key (pinned now on first use), else `{ pinned, now }`.
 */
async function keyChange(id) {
  return store.checkPin(id, await fingerprint((await lookup(id)).raw));
}

/** Refuses to send to a contact whose key changed, until the user trusts the new key. */
function refuseChangedKey(id, change) {
  const error = $("compose-error");
  setText(
    error,
    `Not sent: the key of ${id} CHANGED. Pinned fingerprint ${change.pinned}, the directory now gives ${change.now}. ` +
      "Someone may be impersonating them: compare the new fingerprint with theirs, out of band. ",
  );
  const trust = document.createElement("button");
  trust.id = "trust-key";
  trust.type = "button";
  trust.textContent = "Trust the new key";
  trust.addEventListener("click", async () => {
    await store.checkPin(id, change.now, true);
    error.textContent = "";
    await openChat(id);
  });
  error.append(trust);
}

async function onMessage(m) {
  let contact = await store.getContact(m.peer);
  if (!contact) {
    // A first message from someone new: they become a contact, named by their id until renamed.
    let publicKey = "";
    try {
      publicKey = (await lookup(m.peer)).publicKey;
    } catch {
      /* shown without a fingerprint */
    }
    contact = { userId: m.peer, nickname: "", publicKey, unread: 0 };
  }
  // One transaction: several messages arriving together each count (and a pin is kept).
  await store.touchContact(m.peer, contact, m.dir === "in" && (current !== m.peer || document.hidden));
  await renderContacts();
  if (current === m.peer) await renderMessages();
}

async function addContact(event) {
  event.preventDefault();
  const id = $("add-id").value.trim().toLowerCase();
  const nickname = $("add-nick").value.trim();
  $("add-error").textContent = "";
  if (!id) return;
  try {
    const { publicKey } = await lookup(id);
    const existing = await store.getContact(id);
    await store.putContact({ ...(existing ?? { unread: 0 }), userId: id, nickname: nickname || existing?.nickname || "", publicKey });
    await keyChange(id); // pins the key on first use
    $("add-id").value = "";
    $("add-nick").value = "";
    await renderContacts();
    await openChat(id);
  } catch (e) {
    $("add-error").textContent = e instanceof Refusal ? e.message : `Could not add the contact: ${e.message}`;
  }
}

async function renderContacts() {
  const list = $("contacts");
  const all = (await store.contacts()).sort((a, b) => (a.nickname || a.userId).localeCompare(b.nickname || b.userId));
  list.replaceChildren(
    ...all.map((c) => {
      const li = document.createElement("li");
      li.dataset.user = c.userId;
      li.className = c.userId === current ? "active" : "";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "contact";
      if (c.userId === current) open.setAttribute("aria-current", "true");
      const names = document.createElement("span");
      names.className = "names";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = c.userId === me?.userId ? "Notes to self" : c.nickname || "(no nickname)";
      const id = document.createElement("span");
      id.className = "id";
      id.textContent = c.userId;
      names.append(name, id);
      open.append(names);
      if (c.unread) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(c.unread);
        badge.setAttribute("aria-label", `${c.unread} unread`);
        open.append(badge);
      }
      open.addEventListener("click", () => openChat(c.userId));
      li.append(open);
      return li;
    }),
  );
  drawer.unread(all.reduce((n, c) => n + (c.unread ?? 0), 0));
}

/** The chat's title: the contact's name and id, or the id alone; a button to (re)name them. */
function renderTitle(id, contact) {
  const self = id === me.userId;
  $("chat-title").textContent = self ? `Notes to self (${id})` : contact?.nickname ? `${contact.nickname} (${id})` : id;
  $("rename").textContent = contact?.nickname ? "Rename" : "Name this contact";
  show("rename", !self);
  show("rename-form", false);
}

async function startRename() {
  $("rename-input").value = (await store.getContact(current))?.nickname ?? "";
  show("rename", false);
  show("rename-form");
  $("rename-input").focus();
}

async function rename(event) {
  event.preventDefault();
  const id = current;
  const nickname = $("rename-input").value.trim();
  const existing = await store.getContact(id);
  await store.putContact({ ...(existing ?? { userId: id, unread: 0 }), nickname });
  renderTitle(id, await store.getContact(id));
  await renderContacts();
  $("rename").focus();
}

/** Opens the chat with `id` (and closes the drawer, unless `keepDrawer`: the page just came back into view). */
async function openChat(id, { keepDrawer = false } = {}) {
  current = id;
  if (!keepDrawer) drawer.close();
  const contact = await store.getContact(id);
  if (contact?.unread) {
    contact.unread = 0;
    await store.putContact(contact);
  }
  renderTitle(id, contact);
  let fp = "";
  try {
    const change = await keyChange(id);
    const found = await lookup(id);
    const directory = found.proof?.absent
      ? "this server has no key directory: checked against the pinned key only"
      : `proven by the server's key directory (epoch ${found.proof?.epoch})`;
    fp = change
      ? `KEY CHANGED: pinned ${change.pinned}, now ${change.now}`
      : `fingerprint ${await fingerprint(found.raw)} (compare it with theirs, out of band) · ${directory}`;
  } catch (e) {
    fp = e.message;
  }
  setText($("chat-fp"), fp);
  $("compose-text").disabled = false;
  $("send").disabled = false;
  $("compose-error").textContent = "";
  await renderContacts();
  await renderMessages();
}

const STATES = {
  sending: "sending…", stored: "sent", received: "", failed: "NOT SENT", refused: "",
  held: "KEY CHANGED · not opened, kept until you decide", discarded: "discarded",
};

/** The choice a held message waits for: trust the sender's new key (and open it), or discard it. */
function decision(m) {
  const box = document.createElement("span");
  box.className = "decide";
  const choose = (label, cls, act) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = label;
    b.addEventListener("click", async () => {
      for (const other of box.children) other.disabled = true;
      await act(m.key);
      await openChat(m.peer);
    });
    return b;
  };
  box.append(
    choose("Trust the new key and open it", "trust-held", (key) => relay.trustHeld(key)),
    choose("Discard", "discard-held", (key) => relay.discardHeld(key)),
  );
  return box;
}

/** Retry on a message that failed: sealed again under this page's id and sent. */
function retryButton(m) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "retry";
  b.textContent = "Retry";
  b.addEventListener("click", () => {
    b.disabled = true;
    relay.retryMessage(m.key);
  });
  return b;
}

async function renderMessages() {
  if (!current) return;
  const list = $("messages");
  const messages = await store.messagesWith(current);
  list.replaceChildren(
    ...messages.map((m) => {
      const li = document.createElement("li");
      li.className = `${m.dir} ${m.state}`;
      li.dataset.state = m.state;
      const text = document.createElement("span");
      text.className = "text";
      const refused = m.state === "refused" || m.state === "held" || m.state === "discarded";
      if (refused) setText(text, m.error);
      else text.textContent = m.text;
      const meta = document.createElement("span");
      meta.className = "meta";
      const when = new Date(m.ts).toLocaleTimeString();
      setText(meta, [when, STATES[m.state], m.state === "failed" ? m.error : ""].filter(Boolean).join(" · "));
      li.append(text, meta);
      if (m.state === "held") li.append(decision(m));
      if (m.dir === "out" && m.state === "failed") li.append(retryButton(m));
      return li;
    }),
  );
  list.scrollTop = list.scrollHeight;
}

async function send(event) {
  event.preventDefault();
  const input = $("compose-text");
  const text = input.value;
  const to = current;
  if (!to || !text.trim()) return;
  $("compose-error").textContent = "";
  // Taken at once: the key check awaits, and a message typed meanwhile must not be wiped.
  input.value = "";
  const giveBack = () => input.value || (input.value = text);
  try {
    const change = await keyChange(to);
    if (change) {
      giveBack();
      return refuseChangedKey(to, change);
    }
    await relay.send(to, text);
  } catch (e) {
    giveBack();
    $("compose-error").textContent = `Not sent: ${e.message}`;
  }
}

async function copy(event) {
  const text = $(event.target.dataset.copy).textContent;
  try {
    await navigator.clipboard.writeText(text);
    event.target.textContent = "copied";
  } catch {
    event.target.textContent = "select it";
  }
  setTimeout(() => (event.target.textContent = "copy"), 1500);
}

/**
 * "Use this tab": this tab becomes the live one again. Another tab may have changed the identity
 * meanwhile (a new id after the server lost its data), so it is read again first; if another tab
 * started again (the key is gone or another), this tab stops and offers a reload instead.
 */
async function takeOver() {
  banner("");
  const identity = await store.getIdentity();
  if (identity?.publicKey !== me.publicKey) return relay.startedAgainElsewhere();
  if (identity.userId !== me.userId) {
    me = identity;
    relay.me = identity;
    relay.token = null;
    $("my-id").textContent = me.userId;
  }
  relay.reconnectNow();
}

async function main() {
  $("create").addEventListener("click", createIdentity);
  $("add-form").addEventListener("submit", addContact);
  $("compose").addEventListener("submit", send);
  $("compose-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("compose").requestSubmit();
    }
  });
  $("banner-action").addEventListener("click", takeOver);
  $("start-again").addEventListener("click", startAgain);
  $("reload").addEventListener("click", () => location.reload());
  $("notice-close").addEventListener("click", () => notice(""));
  $("rename").addEventListener("click", startRename);
  $("rename-form").addEventListener("submit", rename);
  $("rename-cancel").addEventListener("click", () => {
    show("rename-form", false);
    show("rename");
  });
  for (const b of document.querySelectorAll(".copy")) b.addEventListener("click", copy);
  document.addEventListener("visibilitychange", () => !document.hidden && current && openChat(current, { keepDrawer: true }));
  const identity = await store.getIdentity();
  if (identity) await start(identity);
  else {
    $("status").textContent = "No identity yet";
    show("welcome");
  }
}

main().catch((e) => banner(`The page failed to start: ${e.message}`));
