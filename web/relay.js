// The page's connection to the relay: authenticate (prove possession of the key), open the
// `enigma.v1` socket with the token offered as a subprotocol entry, reconnect with backoff
// after a drop, a restart or a 1001, stop and say so when another tab takes over (4409).
// Every state is said in words (closeWords), never as a close code. A server that no longer
// knows this user (its data was lost) gets the same key registered again: it gives a new id,
// which the page adopts; if it refuses, the page stops and says so ("lost"). If another tab
// started again meanwhile (this browser forgot the identity), this one stops and says so.
// Every received message is stored before it is acknowledged; every outgoing one is stored
// before it is sent and re-sent (same id, same ref) until the server's receipt arrives, or
// marked failed (with its reason, and a Retry) when no receipt comes within SEND_DEADLINE_MS.
// A message whose sender's key is not the pinned one is neither opened nor acknowledged: it
// is kept ("held", on the server too) until the user trusts the new key or discards it.
import * as store from "./store.js";
import { DirectoryRefusal, checkOwnHistory, proveKey } from "./directory.js";
import { b64Encode, fingerprint, openChallenge, openMessage, parsePublicKey, sealMessage } from "./payload.js";

const SUBPROTOCOL = "enigma.v1";
const BEARER = "enigma.bearer.";
const CHALLENGE_ALG = "hpke-x25519-aes256gcm";
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 8000;
/** How many times the owner's own entry may go unshown (each after its wait) before the page says so. */
const SELF_CHECK_ATTEMPTS = 3;
const SELF_CHECK_AGAIN_MS = 1000;
/** An HTTP request or a socket opening that takes longer is given up (and retried). */
const ATTEMPT_TIMEOUT_MS = 10_000;
/** How long a message may wait for its receipt before it is shown as failed, with a Retry. */
export const SEND_DEADLINE_MS = 20_000;

/**
 * What a close code means to the user (docs/protocol.md lists the server's); `null` for the
 * codes the state machine handles itself (4401, 4404, 4409). Anything else is a lost connection.
 */
export function closeWords(code) {
  switch (code) {
    case 1000: return "The server closed the connection";
    case 1001: return "The server is restarting or moving this connection";
    case 1002: return "The connection broke (a protocol error)";
    case 1007: case 1009: return "The server refused what this page sent";
    case 1008: return "The server refused this connection (its policy)";
    case 1011: return "The server had an internal error";
    case 1012: return "The server is restarting";
    case 1013: return "The server is busy or its storage is unavailable";
    case 4408: return "The connection was idle too long";
    case 4429: return "This page read too slowly";
    case 4401: case 4404: case 4409: return null;
    default: return "Connection lost"; // 1006 (no close frame), 1005, 1015 and anything unknown
  }
}

let order = 0;
/** A local sort key: arrival order on this page, stable across reloads. */
export const nextOrder = () => Date.now() * 1000 + (order++ % 1000);

/** An error the user should read, with the server's code when there is one. */
export class Refusal extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }

  /** Whether asking again later may succeed (rate limited, storage unavailable, not yet in the directory). */
  get transient() {
    return this.code === "rate_limited" || this.code === "unavailable" || this.status >= 500 ||
      this.code === "directory_not_published" || this.code === "directory_unavailable";
  }
}

/** The server could not be reached (or did not answer in time): not a refusal, try again. */
export class Unreachable extends Error {}

async function json(method, path, body, token) {
  const headers = { Accept: "application/json" };
  if (body) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    const signal = AbortSignal.timeout(ATTEMPT_TIMEOUT_MS);
    res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined, signal });
  } catch (e) {
    throw new Unreachable(e.message);
  }
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
    return new Refusal(`${what}: rate limited, retry in ${retryAfter ?? "a few"} s`, "rate_limited", status);
  }
  return new Refusal(`${what}: ${data.error ?? `HTTP ${status}`}`, data.code, status);
}

/** Registers a public key (base64url) and returns the user id. */
export async function register(publicKey) {
  const r = await json("GET", `/login/${publicKey}`);
  if (r.status !== 200) throw refusal(r, "registration refused");
  return r.data.userId;
}

const keyCache = new Map();
/** Forgets every cached directory key (the server lost its data: the ids may name nobody now). */
export const forgetKeys = () => keyCache.clear();
/**
 * The directory key of `userId` (32 bytes), proven by the server's key directory
 * (web/directory.js) when it has one; a Refusal if the user does not exist or the directory does
 * not prove the key (nothing is sealed to it). `fresh` asks again instead of this page's cache (a
 * key swapped since it was cached). `proof` is `{ version, epoch }` or `{ absent: true }`.
 */
export async function lookup(userId, { fresh = false } = {}) {
  if (!fresh && keyCache.has(userId)) return keyCache.get(userId);
  const r = await json("GET", `/connect/${encodeURIComponent(userId)}`);
  if (r.status === 404) throw new Refusal(`user not found: ${userId}`, "user_not_found");
  if (r.status !== 200) throw refusal(r, "looking up the user failed");
  const raw = parsePublicKey(r.data.publicKey);
  let proof;
  try {
    proof = await proveKey(userId, r.data.publicKey, json);
  } catch (e) {
    if (!(e instanceof DirectoryRefusal)) throw e;
    throw new Refusal(
      `The server's key directory does not prove the key of ${userId}: ${e.message}. ` +
        "Nothing is sealed to a key the directory does not prove.",
      `directory_${e.kind}`,
    );
  }
  const entry = { publicKey: r.data.publicKey, raw, proof };
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
    this.ticker = null;
    this.tokenFresh = false; // the token was made by the last bearer(), not kept from before
    this.attempts = 0; // counts connect() calls: an older one still awaiting gives way
    this.deadlines = new Map(); // a waiting message's ref -> its deadline timer
    this.recovery = null; // the registration again under way, if any (recover)
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * States: connecting, online, offline (retrying), recovering, replaced (4409), lost,
   * started-again (another tab forgot this identity).
   */
  setState(state, text, reason) {
    this.state = state;
    this.emit("state", { state, text, reason });
  }

  async start() {
    this.stopped = false;
    // Messages left waiting by an earlier visit get their full time again from now.
    for (const m of await store.pending()) this.watch(m.msgId);
    this.connect();
    globalThis.addEventListener?.("online", () => this.state === "offline" && this.reconnectNow());
  }

  /** Stops for good: no reconnecting (the page is about to forget this identity). */
  stop() {
    this.stopped = true;
    this.stopTimers();
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000);
  }

  /**
   * Stops for good because another tab started again: this browser no longer holds the identity
   * this tab uses (forgotten, or replaced by a new key pair). Only a reload shows what it holds.
   */
  startedAgainElsewhere() {
    this.stop();
    this.setState("started-again", "Stopped: another tab started again",
      "Another tab started again: this browser forgot the identity this tab was using. " +
      "Reload this tab to use what this browser holds now.");
  }

  /**
   * Connects now, forgetting the backoff (the user asked, or this tab takes over again). During
   * a recovery it does nothing: the recovery connects when it is done, and a second connection
   * beside it would sign in with the id being replaced.
   */
  reconnectNow() {
    if (this.recovery) return;
    this.stopTimers();
    this.attempt = 0;
    this.stopped = false;
    this.connect();
  }

  stopTimers() {
    clearTimeout(this.timer);
    clearInterval(this.ticker);
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
    this.tokenFresh = true;
    return t.data.token;
  }

  async connect() {
    if (this.stopped) return;
    this.stopTimers();
    const attempt = ++this.attempts;
    this.setState("connecting", "Connecting…");
    let token;
    try {
      token = await this.bearer();
    } catch (e) {
      if (attempt !== this.attempts) return;
      if (e instanceof Unreachable) return this.retry("Server unreachable", "retrying");
      if (e.code === "user_not_found") return this.recover();
      // A refusal the user must see (rate limited, key not accepted), then try again later.
      this.emit("problem", { text: e.message, code: e.code });
      return this.retry("Not signed in", "retrying");
    }
    if (this.stopped || attempt !== this.attempts) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/${this.me.userId}`;
    const protocols = token ? [SUBPROTOCOL, BEARER + token] : [SUBPROTOCOL];
    const ws = new WebSocket(url, protocols);
    this.ws = ws;
    ws.opened = false;
    ws.freshToken = this.tokenFresh;
    this.tokenFresh = false;
    // A handshake that hangs (a black-holed server) is given up like a refused one.
    const opening = setTimeout(() => ws.readyState === WebSocket.CONNECTING && ws.close(), ATTEMPT_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(opening);
      if (ws.protocol !== SUBPROTOCOL) {
        this.emit("problem", { text: "the server does not offer acknowledged delivery (enigma.v1)" });
        ws.unsuitable = true;
        ws.close(1000);
        return;
      }
      this.online(ws);
    };
    ws.onmessage = (event) => this.onFrame(ws, event.data);
    ws.onclose = (event) => {
      clearTimeout(opening);
      this.onClose(ws, event);
    };
  }

  online(ws) {
    if (this.ws !== ws) return;
    ws.opened = true;
    this.attempt = 0;
    this.setState("online", "Connected");
    this.resendPending();
    this.checkSelf();
  }

  /**
   * The owner's check of its own entry in the key directory, once per id per page load: a key
   * that is not this page's, or an entry that cannot be proven, is said in a lasting notice
   * ("directory-refused"). An entry not shown (404, 503) is asked for again while the page is
   * online; once that failed SELF_CHECK_ATTEMPTS times on a server the page keeps a root for (it
   * has a directory), it is said too: a server that published another key under this id could
   * otherwise hide it by never showing the history. A failure to reach the server is tried again
   * at the next connection.
   */
  checkSelf() {
    const me = this.me;
    if (this.selfChecked === me.userId) return;
    this.selfChecked = me.userId;
    const attempt = (failures) => checkOwnHistory(me, json).catch(async (e) => {
      if (this.selfChecked !== me.userId) return;
      if (!(e instanceof DirectoryRefusal)) {
        this.selfChecked = undefined;
        return;
      }
      if (e.kind === "unavailable" || e.kind === "not_published") {
        if (failures + 1 < SELF_CHECK_ATTEMPTS || !(await store.getDirectoryRoot())) {
          if (this.stopped || !this.ws?.opened) this.selfChecked = undefined;
          else setTimeout(() => this.selfChecked === me.userId && attempt(failures + 1), SELF_CHECK_AGAIN_MS);
          return;
        }
        // Said, and asked again at the next connection.
        this.selfChecked = undefined;
        const text = `The server's key directory could not show your own key (${me.userId}) in ` +
          `${SELF_CHECK_ATTEMPTS} attempts: ${e.message}. It may be hiding another key published under your id.`;
        this.emit("directory-refused", { text, kind: e.kind });
        return;
      }
      const text = e.kind === "another_key_for_you"
        ? `The server's key directory shows another key for you (${me.userId}): ${e.message.replace(/^.*?: /, "")}. ` +
          "Whoever holds it may receive messages sealed for you: tell your contacts to check your fingerprint."
        : `The server's key directory could not prove your own key: ${e.message}.`;
      this.emit("directory-refused", { text, kind: e.kind });
    });
    attempt(0);
  }

  onClose(ws, { code }) {
    if (this.ws !== ws) return;
    this.ws = null;
    if (code === 4409) {
      this.stopped = true;
      this.setState("replaced", "This account was opened in another tab or window; this one stopped. ");
      return;
    }
    if (code === 4404) return this.recover();
    if (code === 4401) {
      // A token kept from before is no longer accepted (a restarted server with new signing
      // keys): sign in again at once. A token just made and refused: wait before the next.
      const again = this.token !== null && !ws.freshToken;
      this.token = null;
      if (again) return this.connect();
      return this.retry("The server did not accept this page's sign-in", "retrying");
    }
    if (ws.unsuitable) return this.retry("This server does not offer what the page needs", "retrying");
    if (!ws.opened) return this.retry("Server unreachable", "retrying");
    this.retry(closeWords(code) ?? "Connection lost", "reconnecting");
  }

  /** Tries again after a backoff, counting the seconds down in the status: "<why> — <what> in 4 s". */
  retry(why, what) {
    if (this.stopped) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt++);
    const at = Date.now() + base / 2 + Math.random() * (base / 2);
    this.stopTimers();
    const tick = () => this.setState("offline", `${why} — ${what} in ${Math.max(1, Math.ceil((at - Date.now()) / 1000))} s`);
    tick();
    this.ticker = setInterval(tick, 1000);
    this.timer = setTimeout(() => this.connect(), at - Date.now());
  }

  /**
   * The server does not know this user (its data was lost, or the id expired): the same key is
   * registered again. The server gives a new id (ids are random); the page adopts it, keeps its
   * conversations, and re-seals what was waiting to be sent. A registration refused for good
   * stops the page ("lost": the user may start again); a transient refusal is retried.
   * One at a time: a trigger while a recovery is under way joins it, so the id is adopted once
   * and what waits is sealed and sent once.
   */
  recover() {
    this.recovery ??= this.registerAgain().finally(() => (this.recovery = null));
    return this.recovery;
  }

  async registerAgain() {
    if (this.stopped) return;
    this.stopTimers();
    this.setState("recovering", "The server does not know this identity any more: registering it again…");
    let userId;
    try {
      userId = await register(this.me.publicKey);
    } catch (e) {
      if (this.stopped) return;
      if (e instanceof Unreachable) return this.retry("Server unreachable", "retrying");
      if (e instanceof Refusal && e.transient) {
        this.emit("problem", { text: `The server lost this identity; registering it again: ${e.message}` });
        return this.retry("Registration refused for now", "retrying");
      }
      this.stopped = true;
      this.setState("lost", "Stopped: the server lost this identity",
        `The server lost this identity and refuses to register its key again (${e.message}).`);
      return;
    }
    if (this.stopped) return; // "Start again" in this tab meanwhile: it forgets this identity
    const old = this.me.userId;
    // The same id: the server knows the key after all (it said otherwise a moment ago, e.g. one
    // replica behind another). Connecting again at once could go round for ever: back off.
    if (userId === old) return this.retry("The server did not recognise this identity", "retrying");
    const me = await store.reidentify(this.me.publicKey, userId);
    if (this.stopped) return;
    if (!me) return this.startedAgainElsewhere();
    this.me = me;
    this.token = null;
    forgetKeys();
    this.emit("reidentified", { old, now: userId });
    for (const m of await store.pending()) await this.reseal(m, false);
    this.attempt = 0;
    this.connect();
  }

  /** Marks `ref` failed if no receipt has come SEND_DEADLINE_MS from now. */
  watch(ref) {
    clearTimeout(this.deadlines.get(ref));
    this.deadlines.set(ref, setTimeout(() => {
      this.deadlines.delete(ref);
      const why = this.state === "online"
        ? `no receipt from the server within ${SEND_DEADLINE_MS / 1000} s`
        : `the server could not be reached for ${SEND_DEADLINE_MS / 1000} s`;
      this.queue(() => this.settle(ref, { state: "failed", error: why }, ["sending"]));
    }, SEND_DEADLINE_MS));
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
    // A note to self comes back from the server: this page shows it already, as sent.
    const ownCopy = store.messageKey(`${from}>${from}`, message.msgId);
    if (from === this.me.userId && message.state === "received" && (await store.getMessage(ownCopy))) {
      return this.ack(ws, frame.id);
    }
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
      if (e instanceof Unreachable || (e instanceof Refusal && e.transient)) return null;
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

  /**
   * Records what became of the outgoing message `ref` if it is in one of `states`: a receipt
   * also settles one already shown failed (its receipt came late), a failure only a waiting one.
   */
  async settle(ref, change, states = ["sending", "failed"]) {
    const m = await store.outgoing(ref, states);
    if (!m) return;
    clearTimeout(this.deadlines.get(ref));
    this.deadlines.delete(ref);
    Object.assign(m, change);
    if (change.state === "stored") delete m.error;
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
      msgId: content.id, state: "sending", payload, order: nextOrder(), from: this.me.userId,
    };
    await store.putMessage(message);
    this.emit("message", message);
    this.watch(message.msgId);
    this.sendFrame({ from: this.me.userId, to, payload, ref: content.id });
    return message;
  }

  async resendPending() {
    const all = (await store.pending()).sort((a, b) => a.order - b.order);
    for (const m of all) {
      // Sealed under an id this page no longer has (the server lost its data meanwhile).
      if (m.from && m.from !== this.me.userId) {
        await this.reseal(m, true);
        continue;
      }
      this.watch(m.msgId);
      this.sendFrame({ from: this.me.userId, to: m.peer, payload: m.payload, ref: m.msgId });
    }
  }

  /** The user's Retry on a failed message: sealed again (under this page's id now) and sent. */
  retryMessage(key) {
    return this.queue(async () => {
      const m = await store.getMessage(key);
      if (m?.dir !== "out" || m.state !== "failed") return;
      await this.reseal(m, true);
    });
  }

  /**
   * Seals `m` again from this page's current id (the same message id, so a recipient who had it
   * recognises it) after checking the recipient's key against the pin, and sends it when `now`
   * (else the next connection does). A recipient the server does not know, or whose key
   * changed, fails it at once with the reason.
   */
  async reseal(m, now) {
    const fail = async (error) => {
      Object.assign(m, { state: "failed", error });
      await store.putMessage(m);
      this.emit("update", m);
    };
    let recipient;
    try {
      recipient = await lookup(m.peer, { fresh: true });
    } catch (e) {
      if (e.code === "user_not_found") {
        return fail(`the server does not know ${m.peer} (any more): ask them for their id and add it as a contact`);
      }
      return fail(e instanceof Unreachable ? "the server could not be reached" : e.message);
    }
    const change = await store.checkPin(m.peer, await fingerprint(recipient.raw));
    if (change) return fail(`the key of ${m.peer} CHANGED (pinned ${change.pinned}, now ${change.now}); open the chat to decide`);
    const content = { id: m.msgId, ts: m.ts, text: m.text };
    Object.assign(m, {
      payload: await sealMessage(this.me, m.peer, recipient.raw, content), from: this.me.userId,
      state: "sending", error: undefined,
    });
    await store.putMessage(m);
    this.emit("update", m);
    this.watch(m.msgId);
    if (now) this.sendFrame({ from: this.me.userId, to: m.peer, payload: m.payload, ref: m.msgId });
  }
}
