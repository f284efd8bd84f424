// What the page keeps, in IndexedDB: its identity (the X25519 private key as a
// non-extractable CryptoKey: the browser stores it, script can use it but never read it), the
// newest key-directory root it verified, contacts, and every message. A received message is written here BEFORE it is acknowledged,
// so a reload or a crash loses nothing; an outgoing one is written before it is sent, so it
// is sent again after a reload until the server confirms it was stored. One whose sender's key
// is not the pinned one is kept here "held", with its sealed payload, until the user decides.

const DB = "enigma";
const VERSION = 1;

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

let dbPromise;
function db() {
  dbPromise ??= new Promise((resolve, reject) => {
    const open = indexedDB.open(DB, VERSION);
    open.onupgradeneeded = () => {
      const d = open.result;
      d.createObjectStore("identity");
      d.createObjectStore("contacts", { keyPath: "userId" });
      const messages = d.createObjectStore("messages", { keyPath: "key" });
      messages.createIndex("peer", "peer");
      messages.createIndex("state", "state");
    };
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
  return dbPromise;
}

async function tx(store, mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(store, mode);
    let result;
    Promise.resolve(fn(t.objectStore(store))).then((r) => (result = r), reject);
    t.oncomplete = () => resolve(result);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error ?? new Error("transaction aborted"));
  });
}

export const getIdentity = () => tx("identity", "readonly", (s) => request(s.get("me")));

/** The newest key-directory root this page verified (web/directory.js), beside the identity. */
export const getDirectoryRoot = () => tx("identity", "readonly", (s) => request(s.get("directoryRoot")));
/** Keeps `root` unless a newer one is kept already (another tab moved further). One transaction. */
export function keepDirectoryRoot(root) {
  return tx("identity", "readwrite", async (s) => {
    const kept = await request(s.get("directoryRoot"));
    // A newer epoch, or the kept root re-signed by another key (the server rotated its key);
    // never an older epoch (another tab's, a moment behind).
    const reSigned = kept && kept.epoch === root.epoch &&
      kept.rootHash.toLowerCase() === root.rootHash.toLowerCase() && kept.signingKey !== root.signingKey;
    if (!kept || kept.epoch < root.epoch || reSigned) await request(s.put(root, "directoryRoot"));
  });
}
export const putIdentity = (me) => tx("identity", "readwrite", (s) => request(s.put(me, "me")));

/**
 * The same key (`publicKey`) under a new user id (the server lost the old one and gave this on
 * registering again); the ids it had before are kept in `formerIds`. Returns the identity as
 * stored, or null when what is stored is not this key any more: another tab started again (this
 * browser forgot the identity, perhaps made a new one). Nothing is written then: a new key is
 * never paired with the id registered for the old one. Check and write are one transaction.
 */
export function reidentify(publicKey, userId) {
  return tx("identity", "readwrite", async (s) => {
    const me = await request(s.get("me"));
    if (me?.publicKey !== publicKey) return null;
    // Another tab with this key registered it again first and got the same id: nothing to add.
    if (me.userId === userId) return me;
    const updated = { ...me, userId, formerIds: [...(me.formerIds ?? []), me.userId] };
    await request(s.put(updated, "me"));
    return updated;
  });
}

/** Forgets everything this page keeps for this server (Start again): identity, contacts, messages. */
export async function clearAll() {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(["identity", "contacts", "messages"], "readwrite");
    for (const name of ["identity", "contacts", "messages"]) t.objectStore(name).clear();
    t.oncomplete = () => resolve();
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error ?? new Error("transaction aborted"));
  });
}

export const contacts = () => tx("contacts", "readonly", (s) => request(s.getAll()));
export const getContact = (id) => tx("contacts", "readonly", (s) => request(s.get(id)));
export const putContact = (c) => tx("contacts", "readwrite", (s) => request(s.put(c)));

/**
 * Creates the contact from `fresh` if it is new and counts one unread message if `unread`;
 * read and write are one transaction, so messages arriving together each count.
 */
export function touchContact(userId, fresh, unread) {
  return tx("contacts", "readwrite", async (s) => {
    const c = (await request(s.get(userId))) ?? fresh;
    if (unread) c.unread = (c.unread ?? 0) + 1;
    await request(s.put(c));
  });
}

/**
 * Pins a contact's key fingerprint on first use (trust on first use) and compares later ones:
 * returns null when `fp` is the pinned one (or was just pinned), else `{ pinned, now }`.
 * `trust` replaces the pin (the user accepted the new key). Check and write are one transaction.
 */
export function checkPin(userId, fp, trust = false) {
  return tx("contacts", "readwrite", async (s) => {
    const c = (await request(s.get(userId))) ?? { userId, nickname: "", unread: 0 };
    if (c.pinnedFp && c.pinnedFp !== fp && !trust) return { pinned: c.pinnedFp, now: fp };
    if (c.pinnedFp !== fp) await request(s.put({ ...c, pinnedFp: fp }));
    return null;
  });
}

/** A message's key: "<peer>/<sender's message id>", so a redelivered one is recognised. */
export const messageKey = (peer, id) => `${peer}/${id}`;
export const getMessage = (key) => tx("messages", "readonly", (s) => request(s.get(key)));
export const putMessage = (m) => tx("messages", "readwrite", (s) => request(s.put(m)));
export const messagesWith = async (peer) =>
  (await tx("messages", "readonly", (s) => request(s.index("peer").getAll(peer)))).sort((a, b) => a.order - b.order);
export const pending = () => tx("messages", "readonly", (s) => request(s.index("state").getAll("sending")));

/** The outgoing message sent with `ref` (its message id), if it is in one of `states`. */
export const outgoing = (ref, states) =>
  tx("messages", "readonly", async (s) => {
    for (const state of states) {
      const found = (await request(s.index("state").getAll(state))).find((m) => m.dir === "out" && m.msgId === ref);
      if (found) return found;
    }
    return undefined;
  });

/**
 * Stores a received message unless one with the same sender and id is already stored;
 * returns true when it is new. Check and write are one transaction.
 */
export function addReceived(m) {
  return tx("messages", "readwrite", async (s) => {
    const existing = await request(s.get(m.key));
    if (existing) return false;
    await request(s.put(m));
    return true;
  });
}

/**
 * Replaces a held message (`heldKey`) by what it turned out to be (`m`, unless a message with
 * its key is already stored); returns true when `m` is new. One transaction.
 */
export function replaceHeld(heldKey, m) {
  return tx("messages", "readwrite", async (s) => {
    await request(s.delete(heldKey));
    if (await request(s.get(m.key))) return false;
    await request(s.put(m));
    return true;
  });
}
