// HPKE (RFC 9180) for the payload format of docs/protocol.md, built from WebCrypto's own
// primitives only: X25519 (deriveBits), HMAC-SHA-256 (HKDF's Extract and Expand) and
// AES-256-GCM. Nothing here is a cipher: this file is RFC 9180's key schedule, composed
// from those calls, and tests/browser/hpke.test.js checks it against RFC 9180's published
// test vectors for DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM (modes base and auth).

const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();

export const MODE_BASE = 0x00;
export const MODE_AUTH = 0x02;
const KEM_ID = 0x0020; // DHKEM(X25519, HKDF-SHA256)
const KDF_ID = 0x0001; // HKDF-SHA256
const AEAD_ID = 0x0002; // AES-256-GCM
const NK = 32; // AES-256 key
const NN = 12; // GCM nonce
const NH = 32; // SHA-256 output

const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
const i2osp2 = (n) => new Uint8Array([n >> 8, n & 0xff]);
const KEM_SUITE = concat(enc.encode("KEM"), i2osp2(KEM_ID));
const HPKE_SUITE = concat(enc.encode("HPKE"), i2osp2(KEM_ID), i2osp2(KDF_ID), i2osp2(AEAD_ID));
const V1 = enc.encode("HPKE-v1");

async function hmac(key, data) {
  // An empty salt is HashLen zero bytes (RFC 5869 §2.2); HMAC pads either to the same block.
  const raw = key.length ? key : new Uint8Array(NH);
  const k = await subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", k, data));
}

// HKDF-Extract (RFC 5869 §2.2) is one HMAC call.
const extract = (salt, ikm) => hmac(salt, ikm);

// HKDF-Expand (RFC 5869 §2.3) for L <= HashLen is the first block, T(1) = HMAC(PRK, info || 0x01):
// every length HPKE asks for here (32, 32, 12) fits one block, so longer ones are refused.
async function expand(prk, info, length) {
  if (length > NH) throw new Error("HKDF-Expand longer than one block is not needed here");
  return (await hmac(prk, concat(info, new Uint8Array([1])))).slice(0, length);
}

const labeledExtract = (suite, salt, label, ikm) => extract(salt, concat(V1, suite, enc.encode(label), ikm));
const labeledExpand = (suite, prk, label, info, length) =>
  expand(prk, concat(i2osp2(length), V1, suite, enc.encode(label), info), length);

async function dh(privateKey, publicRaw) {
  const pub = await subtle.importKey("raw", publicRaw, { name: "X25519" }, true, []);
  return new Uint8Array(await subtle.deriveBits({ name: "X25519", public: pub }, privateKey, 256));
}

async function extractAndExpand(dhBytes, kemContext) {
  const prk = await labeledExtract(KEM_SUITE, new Uint8Array(), "eae_prk", dhBytes);
  return labeledExpand(KEM_SUITE, prk, "shared_secret", kemContext, NH);
}

/** RFC 9180 §5.1 with empty psk and psk_id: the AEAD key and base nonce (raw bytes). */
export async function keySchedule(mode, sharedSecret, info) {
  const empty = new Uint8Array();
  const pskIdHash = await labeledExtract(HPKE_SUITE, empty, "psk_id_hash", empty);
  const infoHash = await labeledExtract(HPKE_SUITE, empty, "info_hash", info);
  const context = concat(new Uint8Array([mode]), pskIdHash, infoHash);
  const secret = await labeledExtract(HPKE_SUITE, sharedSecret, "secret", empty);
  const key = await labeledExpand(HPKE_SUITE, secret, "key", context, NK);
  const baseNonce = await labeledExpand(HPKE_SUITE, secret, "base_nonce", context, NN);
  return { key, baseNonce };
}

async function aesKey(raw) {
  return subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
}

/** Raw 32 bytes of an X25519 public key. */
export async function rawPublic(publicKey) {
  return new Uint8Array(await subtle.exportKey("raw", publicKey));
}

/** A fresh X25519 key pair; the private half cannot be exported. */
export function generateKeyPair() {
  return subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
}

/**
 * Single-shot seal (RFC 9180 §6.1), sequence number 0. `sender` ({privateKey, publicRaw})
 * gives auth mode; without it, base mode. `ephemeral` is for the test vectors only.
 * Returns {enc, ciphertext}.
 */
export async function seal({ recipientRaw, info, aad = new Uint8Array(), plaintext, sender, ephemeral }) {
  const eph = ephemeral ?? (await subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]));
  const encBytes = await rawPublic(eph.publicKey);
  let dhBytes = await dh(eph.privateKey, recipientRaw);
  let kemContext = concat(encBytes, recipientRaw);
  if (sender) {
    dhBytes = concat(dhBytes, await dh(sender.privateKey, recipientRaw));
    kemContext = concat(kemContext, sender.publicRaw);
  }
  const shared = await extractAndExpand(dhBytes, kemContext);
  const { key, baseNonce } = await keySchedule(sender ? MODE_AUTH : MODE_BASE, shared, info);
  const ct = await subtle.encrypt(
    { name: "AES-GCM", iv: baseNonce, additionalData: aad, tagLength: 128 },
    await aesKey(key),
    plaintext,
  );
  return { enc: encBytes, ciphertext: new Uint8Array(ct) };
}

/**
 * Single-shot open (RFC 9180 §6.1). `recipient` is {privateKey, publicRaw}; `senderRaw`
 * (the sender's public key) gives auth mode. Throws if anything does not verify.
 */
export async function open({ recipient, encBytes, info, aad = new Uint8Array(), ciphertext, senderRaw }) {
  let dhBytes = await dh(recipient.privateKey, encBytes);
  let kemContext = concat(encBytes, recipient.publicRaw);
  if (senderRaw) {
    dhBytes = concat(dhBytes, await dh(recipient.privateKey, senderRaw));
    kemContext = concat(kemContext, senderRaw);
  }
  const shared = await extractAndExpand(dhBytes, kemContext);
  const { key, baseNonce } = await keySchedule(senderRaw ? MODE_AUTH : MODE_BASE, shared, info);
  const pt = await subtle.decrypt(
    { name: "AES-GCM", iv: baseNonce, additionalData: aad, tagLength: 128 },
    await aesKey(key),
    ciphertext,
  );
  return new Uint8Array(pt);
}

export { concat };
