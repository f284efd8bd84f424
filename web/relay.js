// The page's connection to the relay: authenticate (prove possession of the key), open the
// `enigma.v1` socket with the token offered as a subprotocol entry, reconnect with backoff
// after a drop, a restart or a 1001, stop and say so when another tab takes over (4409).
// Every received message is stored before it is acknowledged; every outgoing one is stored
// before it is sent and re-sent (same id, same ref) until the server's receipt arrives.
// A message whose sender's key is not the pinned one is neither opened nor acknowledged: it
// is kept ("held", on the server too) until the user trusts the new key or discards it.
import * as store from "./store.js";
import { b64Encode, fingerprint, openChallenge, openMessage, parsePublicKey, sealMessage } from "./payload.js";

const SUBPROTOCOL = "enigma.v1";
const BEARER = "enigma.bearer.";
const CHALLENGE_ALG = "hpke-x25519-aes256gcm";
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 8000;

let order = 0;
/** A local sort key: arrival order on this page, stable across reloads. */
export const nextOrder = () => Date.now() * 1000 + (order++ % 1000);

/** An error the user should read, with the server's code when there is one. */
export class Refusal extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

async function json(method, path, body, token) {
  const headers = { Accept: "application/json" };
  if (body) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  let data = {};
  try {
    data = await res.json();
  } catch {
    /* an empty or non-JSON body: the status says enough */
  }
  return { status: res.status, data, retryAfter: res.headers.get("Retry-After") };
}

/** Explains an HTTP refusal in the user's words. */
function refusal({ status, data, retryAfter }, what) {
  if (status === 429) {
    return new Refusal(`${what}: rate limited, retry in ${retryAfter ?? "a few"} s`, "rate_limited");
  }
  return new Refusal(`${what}: ${data.error ?? `HTTP ${status}`}`, data.code);
}

/** Registers a public key (base64url) and returns the user id. */
export async function register(publicKey) {
  const r = await json("GET", `/login/${publicKey}`);
  if (r.status !== 200) throw refusal(r, "registration refused");
  return r.data.userId;
}

const keyCache = new Map();
/**
 * The directory key of `userId` (32 bytes); a Refusal if the user does not exist. `fresh` asks
 * the directory again instead of this page's cache (a key swapped since it was cached).
 */
export async function lookup(userId, { fresh = false } = {}) {
  if (!fresh && keyCache.has(userId)) return keyCache.get(userId);
  const r = await json("GET", `/connect/${encodeURIComponent(userId)}`);
  if (r.status === 404) throw new Refusal(`user not found: ${userId}`, "user_not_found");
  if (r.status !== 200) throw refusal(r, "looking up the user failed");
  const entry = { publicKey: r.data.publicKey, raw: parsePublicKey(r.data.publicKey) };
  keyCache.set(userId, entry);
  return entry;
}

export class Relay extends EventTarget {
  constructor(me) {
    super();
    this.me = me;
    this.ws = null;
    this.token = null;
    this.attempt = 0;
    this.stopped = false;
    this.inbound = Promise.resolve();
    this.timer = null;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state, text) {
    this.state = state;
    this.emit("state", { state, text });
  }

  start() {
    this.stopped = false;
    this.connect();
    globalThis.addEventListener?.("online", () => this.state === "offline" && this.reconnectNow());
  }

  reconnectNow() {
    clearTimeout(this.timer);
    this.attempt = 0;
    this.stopped = false;
    this.connect();
  }

  async bearer() {
    if (this.token && this.token.expiresAt > Date.now() + 60_000) return this.token.token;
    const c = await json("POST", "/auth/challenge", { userId: this.me.userId, alg: CHALLENGE_ALG });
    // A server without authentication answers the generic 404: connect as the specification says.
    if (c.status === 404 && c.data.code === "not_found") return null;
    if (c.status !== 200) throw refusal(c, "authentication refused");
    if (c.data.alg !== CHALLENGE_ALG) throw new Refusal(`the server sealed the challenge with ${c.data.alg}`);
    const secret = await openChallenge(this.me, c.data.sealed);
    const t = await json("POST", "/auth/token", { challenge: c.data.challenge, secret: b64Encode(secret) });
    if (t.status !== 200) throw refusal(t, "authentication refused");
    this.token = t.data;
    return t.data.token;
  }

  async connect() {
    if (this.stopped) return;
    this.setState("connecting", "connecting…");
    let token;
    try {
      token = await this.bearer();
    } catch (e) {
      // A refusal the user must see (rate limited, key not accepted), then try again later.
      this.emit("problem", { text: e.message, code: e.code });
      return this.retry();
    }
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/${this.me.userId}`;
    const protocols = token ? [SUBPROTOCOL, BEARER + token] : [SUBPROTOCOL];
    const ws = new WebSocket(url, protocols);
    this.ws = ws;
    ws.onopen = () => {
      if (ws.protocol !== SUBPROTOCOL) {
        this.emit("problem", { text: "the server does not offer acknowledged delivery (enigma.v1)" });
        ws.close(1000);
        return;
      }
      this.attempt = 0;
      this.setState("online", "connected");
      this.resendPending();
    };
    ws.onmessage = (event) => this.onFrame(ws, event.data);
    ws.onclose = (event) => this.onClose(ws, event);
  }

  onClose(ws, { code, reason }) {
    if (this.ws !== ws) return;
    this.ws = null;
    if (code === 4409) {
      this.stopped = true;
      this.setState("replaced", "This account was opened in another tab or window; this one stopped. ");
      return;
    }
    if (code === 4401) this.token = null;
    if (code === 4404) {
      this.stopped = true;
      this.setState("gone", "The server does not know this user (its storage was reset).");
      return;
    }
    this.setState("offline", `disconnected (${code}${reason ? ` ${reason}` : ""}), reconnecting…`);
    this.retry();
  }

  retry() {
    if (this.stopped) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt++);
    const delay = base / 2 + Math.random() * (base / 2);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  sendFrame(frame) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  onFrame(ws, data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return this.emit("problem", { text: "the server sent a frame that is not JSON" });
    }
    if (typeof frame.id === "string" && typeof frame.from === "string" && "payload" in frame) {
      // One at a time, in order: a message is stored, then acknowledged, then the next.
      this.queue(() => this.receive(ws, frame));
    } else if (frame.status === "stored" && typeof frame.ref === "string") {
      this.queue(() => this.settle(frame.ref, { state: "stored" }));
    } else if (typeof frame.error === "string") {
      const text = frame.code === "rate_limited" && frame.retry_after_ms
        ? `rate limited: retry in ${Math.ceil(frame.retry_after_ms / 1000)} s`
        : frame.error;
      if (typeof frame.ref === "string") {
        this.queue(() => this.settle(frame.ref, { state: "failed", error: text, code: frame.code }));
      } else {
        this.emit("problem", { text, code: frame.code });
      }
    }
  }

  /**
   * Runs `step` after everything received before it; a step that fails is reported and does
   * not stop the ones after it (their messages stay unacknowledged and come again).
   */
  queue(step) {
    this.inbound = this.inbound.then(step).catch((e) => this.emit("problem", { text: `receiving failed: ${e.message}` }));
    return this.inbound;
  }

  async receive(ws, frame) {
    const from = frame.from;
    const heldKey = store.messageKey(from, `held-${frame.id}`);
    const earlier = await store.getMessage(heldKey);
    // The user decided about it already (discarded), but that acknowledgement was not sent.
    if (earlier && earlier.state !== "held") return this.ack(ws, frame.id);
    const message = await this.read(frame, heldKey);
    if (!message) return; // the sender's key could not be fetched: it comes again
    if (message.state === "held") {
      // Shown as refused, NOT acknowledged: the server keeps it until the user decides.
      if (!earlier) {
        if (await store.addReceived(message)) this.emit("message", message);
      } else if (earlier.pinned !== message.pinned || earlier.now !== message.now) {
        await store.putMessage({ ...message, order: earlier.order });
        this.emit("update", message);
      }
      return;
    }
    // A held message that now reads otherwise (its key trusted, or the pinned key is back)
    // takes its place.
    if (earlier) message.order = earlier.order;
    const isNew = earlier ? await store.replaceHeld(heldKey, message) : await store.addReceived(message);
    if (isNew) this.emit("message", message);
    else if (earlier) this.emit("update", message);
    // Acknowledged only now that it is stored; if this socket is gone, the next one gets it again.
    this.ack(ws, frame.id);
  }

  ack(ws, id) {
    if (ws && this.ws === ws) this.sendFrame({ ack: id });
  }

  /**
   * What a delivery is on this page: a received message; a refused one (it does not open);
   * a held one (its sender's key is not the pinned one: not opened); or null when the key
   * could not be fetched (server unreachable: not a refusal, it comes again).
   */
  async read(frame, heldKey) {
    const from = frame.from;
    try {
      let sender = await lookup(from);
      for (let fresh = false; ; fresh = true) {
        // Pinned on first use; any other key is refused before anything is opened with it.
        const change = await store.checkPin(from, await fingerprint(sender.raw));
        if (change) {
          return {
            key: heldKey, peer: from, dir: "in", ts: frame.ts ?? Date.now(), msgId: frame.id, state: "held",
            payload: frame.payload, pinned: change.pinned, now: change.now, order: nextOrder(),
            error: `Refused: message ${frame.id} from ${from} comes with a key that is NOT the pinned one. ` +
              `Pinned fingerprint ${change.pinned}, the directory now gives ${change.now}. ` +
              "Someone may be impersonating them: compare the new fingerprint with theirs, out of band. " +
              "It stays unread on the server until you decide.",
          };
        }
        try {
          const content = await openMessage(this.me, from, sender.raw, frame.payload);
          return {
            key: store.messageKey(from, content.id), peer: from, dir: "in", text: content.text,
            ts: content.ts, msgId: content.id, state: "received", order: nextOrder(),
          };
        } catch (e) {
          // This page's cached key may be older than the directory's (swapped since): ask again once.
          const now = fresh ? null : await lookup(from, { fresh: true });
          if (!now || now.publicKey === sender.publicKey) throw e;
          sender = now;
        }
      }
    } catch (e) {
      if (e instanceof TypeError) return null;
      return {
        key: store.messageKey(from, `refused-${frame.id}`), peer: from, dir: "in", ts: frame.ts ?? Date.now(),
        msgId: frame.id, state: "refused", error: `message ${frame.id} from ${from} refused: ${e.message}`,
        order: nextOrder(),
      };
    }
  }

  /**
   * The user accepts the new key of a held message's sender (after checking it with them): the
   * fingerprint they were shown is pinned, then the message is read again and acknowledged.
   */
  trustHeld(key) {
    return this.queue(async () => {
      const held = await store.getMessage(key);
      if (held?.state !== "held") return;
      await store.checkPin(held.peer, held.now, true);
      await this.receive(this.ws, { id: held.msgId, from: held.peer, payload: held.payload, ts: held.ts });
    });
  }

  /** The user discards a held message: kept here as discarded (never opened), acknowledged. */
  discardHeld(key) {
    return this.queue(async () => {
      const held = await store.getMessage(key);
      if (held?.state !== "held") return;
      const discarded = {
        ...held, state: "discarded", payload: undefined,
        error: `Discarded unread: a message from ${held.peer} with a key that was not the pinned one ` +
          `(pinned ${held.pinned}, presented ${held.now}).`,
      };
      await store.putMessage(discarded);
      this.emit("update", discarded);
      this.ack(this.ws, held.msgId);
    });
  }

  async settle(ref, change) {
    const all = await store.pending();
    const m = all.find((p) => p.msgId === ref);
    if (!m) return;
    Object.assign(m, change);
    await store.putMessage(m);
    this.emit("update", m);
  }

  /** Seals and sends `text` to `to`; the message is stored first and shown as "sending". */
  async send(to, text) {
    const recipient = await lookup(to);
    const content = { id: crypto.randomUUID(), ts: Date.now(), text };
    const payload = await sealMessage(this.me, to, recipient.raw, content);
    const message = {
      key: store.messageKey(this.me.userId + ">" + to, content.id), peer: to, dir: "out", text, ts: content.ts,
      msgId: content.id, state: "sending", payload, order: nextOrder(),
    };
    await store.putMessage(message);
    this.emit("message", message);
    this.sendFrame({ from: this.me.userId, to, payload, ref: content.id });
    return message;
  }

  async resendPending() {
    const all = (await store.pending()).sort((a, b) => a.order - b.order);
    for (const m of all) this.sendFrame({ from: this.me.userId, to: m.peer, payload: m.payload, ref: m.msgId });
  }
}
