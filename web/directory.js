// The server's key directory, in the page: a contact's key from /connect is used only once the
// directory proves it, with the same checks as the SDK and the CLI (crates/verify compiled to
// WebAssembly, /assets/enigma_verify.wasm, built by `make wasm`; no primitive is written here).
// The newest root the page verified is kept in IndexedDB (store.js); a newer one is taken only
// through the directory's append-only proofs from it, an older one is a rollback and another
// root for the same epoch a fork: both refused. A user not yet published (the directory
// publishes about every second) is asked for again for up to PUBLISH_WAIT_MS. A server without a
// directory (404 at /directory/root) is used with pins alone, and the page says so; a server
// the page keeps a root for is refused instead (it had a directory). The owner's
// page reads its own key history once it is online: any version that is not its key is refused.
// The roots' signer is evidence, not the root of trust: after the server rotates its signing key
// (every root re-signed by the new one) the page follows along the kept root's chain, like the
// CLI, and says so ("signer-changed" on `directoryEvents`).
import * as store from "./store.js";
import { parsePublicKey } from "./payload.js";

const MODULE = "/assets/enigma_verify.wasm";
/** How long a lookup waits for a user the directory has not published yet. */
export const PUBLISH_WAIT_MS = 5000;
const POLL_MS = 250;

/**
 * Tells the page what it should show: "signer-changed" (detail: `{ from, to, message }`, each
 * signer `{ keyId, key }`) when the kept root's signer changed and the roots by the new key were
 * proven to extend it.
 */
export const directoryEvents = new EventTarget();

function tellSignerChange(change) {
  if (change) directoryEvents.dispatchEvent(new CustomEvent("signer-changed", { detail: change }));
}

/** A directory answer the checks refused (`kind`: crates/verify's VerifyError::kind, or the page's own). */
export class DirectoryRefusal extends Error {
  constructor(message, kind) {
    super(message);
    this.kind = kind;
  }
}

let compiled;
let instance;

/**
 * Runs one request of the module's interface (crates/verify/src/wasm.rs): JSON in, JSON out.
 * Returns the answer, or throws a DirectoryRefusal.
 */
export async function check(request) {
  if (!instance) {
    compiled ??= WebAssembly.compileStreaming(fetch(MODULE));
    instance = await WebAssembly.instantiate(await compiled, {});
  }
  const { memory, enigma_input, enigma_call, enigma_output, enigma_output_len } = instance.exports;
  const bytes = new TextEncoder().encode(JSON.stringify(request));
  let done;
  let text;
  try {
    const at = enigma_input(bytes.length);
    new Uint8Array(memory.buffer, at, bytes.length).set(bytes);
    done = enigma_call();
    text = new TextDecoder().decode(new Uint8Array(memory.buffer, enigma_output(), enigma_output_len()));
  } catch (e) {
    // A trap leaves the instance unusable: the next check gets a fresh one.
    instance = undefined;
    throw new DirectoryRefusal(`the directory check stopped (${e.message})`, "trap");
  }
  const answer = JSON.parse(text);
  if (!done) throw new DirectoryRefusal(answer.error, answer.kind);
  return answer;
}

/** "present", "absent" (the server has no directory), or undefined (not asked yet). */
let presence;
/** One check at a time: they share the kept root. */
let queue = Promise.resolve();

function serialized(task) {
  const run = queue.then(task, task);
  queue = run.catch(() => {});
  return run;
}

/** Whether the server has a key directory, as found by the last lookup. */
export const directoryPresence = () => presence;

/**
 * Takes `root` if it is the kept one, the first one, or one the append-only proofs from the kept
 * one lead to (asked of the server as often as it answers a shorter range). Returns the root now kept.
 */
async function takeRoot(root, fetchJson) {
  const kept = (await store.getDirectoryRoot()) ?? null;
  const begun = await check({ op: "begin", kept, root });
  if (begun.next !== "audit") {
    await store.keepDirectoryRoot(begun.kept);
    tellSignerChange(begun.signerChanged);
    return begun.kept;
  }
  // Every verified answer moves the kept epoch forward, so this ends.
  for (let current = kept; ; ) {
    const r = await fetchJson("GET", `/directory/audit/${current.epoch}/${root.epoch}`);
    if (r.status !== 200) {
      throw new DirectoryRefusal(`no append-only proof from epoch ${current.epoch} to ${root.epoch} (HTTP ${r.status})`, "no_audit");
    }
    const extended = await check({ op: "extend", kept: current, answer: r.data, target: root });
    current = extended.kept;
    await store.keepDirectoryRoot(current);
    tellSignerChange(extended.signerChanged);
    if (extended.done) return current;
  }
}

/**
 * Whether the server has a key directory (asked once: its root is taken like any other). A 404
 * with Retry-After (no epoch yet) or a 503 (starting) is a directory whose first root is awaited
 * like a user not yet published; a plain 404 is a server without one, unless a root is kept for
 * it (refused: "withdrawn").
 */
async function present(fetchJson) {
  const deadline = Date.now() + PUBLISH_WAIT_MS;
  while (presence === undefined) {
    const r = await fetchJson("GET", "/directory/root");
    if (r.status === 200) {
      await takeRoot(r.data, fetchJson);
      presence = "present";
    } else if (r.status === 404 && !r.retryAfter) {
      // A server whose directory this page verified (a root is kept for it) cannot turn the
      // proofs off by saying it has none: presence stays unknown and every check refuses.
      const kept = await store.getDirectoryRoot();
      if (kept) {
        throw new DirectoryRefusal(
          `the server had a key directory (epoch ${kept.epoch}) and now says it has none: refusing; ` +
            "Start again only if its operator announced that it reset it",
          "withdrawn",
        );
      }
      presence = "absent";
    } else if ((r.status === 404 || r.status === 503) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    } else {
      throw new DirectoryRefusal(`the key directory could not be read (HTTP ${r.status})`, "unavailable");
    }
  }
  return presence === "present";
}

/**
 * Asks `path` for `userId`'s answer until the user is published (at most PUBLISH_WAIT_MS), takes
 * its root and returns `verify(answer, keptRoot)`.
 */
async function published(userId, path, verify, fetchJson) {
  const deadline = Date.now() + PUBLISH_WAIT_MS;
  for (;;) {
    const r = await fetchJson("GET", `/directory/${path}/${encodeURIComponent(userId)}`);
    if (r.status === 200) {
      try {
        return await verify(r.data, await takeRoot(r.data.root, fetchJson));
      } catch (e) {
        // An answer from a replica a moment behind the root already kept: ask again.
        if (e.kind !== "rollback" || Date.now() >= deadline) throw e;
      }
    } else if (r.status !== 404) {
      throw new DirectoryRefusal(`the key directory could not be read (HTTP ${r.status})`, "unavailable");
    }
    if (Date.now() >= deadline) {
      throw new DirectoryRefusal(`${userId} is not in the server's key directory (waited ${PUBLISH_WAIT_MS / 1000} s)`, "not_published");
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/**
 * Proves that `publicKey` (what /connect gave) is `userId`'s key in the directory: `{ version,
 * epoch }`, or `{ absent: true }` from a server without a directory. `fetchJson(method, path)`
 * is the page's request function ({status, data}). Throws a DirectoryRefusal.
 */
export function proveKey(userId, publicKey, fetchJson) {
  return serialized(async () => {
    if (!(await present(fetchJson))) return { absent: true };
    return published(userId, "lookup", (answer, kept) => check({ op: "lookup", kept, answer, userId, publicKey }), fetchJson);
  });
}

const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const isKey = (text, raw) => {
  try {
    return sameBytes(parsePublicKey(text), raw);
  } catch {
    return false;
  }
};

/**
 * Reads the owner's own key history (`me`: {userId, publicRaw}): every version must be this
 * page's key, else a DirectoryRefusal of kind "another_key_for_you". `{ absent: true }` from a
 * server without a directory.
 */
export function checkOwnHistory(me, fetchJson) {
  return serialized(async () => {
    if (!(await present(fetchJson))) return { absent: true };
    const { versions } = await published(
      me.userId, "history", (answer, kept) => check({ op: "history", kept, answer, userId: me.userId }), fetchJson,
    );
    const others = versions.filter((v) => !isKey(v.publicKey, me.publicRaw));
    if (versions.length === 0 || others.length > 0) {
      const which = others.map((v) => `version ${v.version} (epoch ${v.epoch})`).join(", ") || "no key at all";
      throw new DirectoryRefusal(`the directory shows another key for you: ${which}`, "another_key_for_you");
    }
    return { versions };
  });
}
