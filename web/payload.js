// The Enigma payload format (docs/protocol.md, "Payload format (HPKE)"), version 2:
// base64url-nopad(0x02 || enc (32) || AES-256-GCM ciphertext), HPKE auth mode,
// info = "enigma-hpke-v1" 0x00 from 0x00 to. Version 1 (ChaCha20-Poly1305) has no WebCrypto
// primitive: such a message is refused with a clear reason (the CLI and SDK seal version 2).
import * as hpke from "./hpke.js";

export const VERSION_AESGCM = 2;
const te = new TextEncoder();
const td = new TextDecoder("utf-8", { fatal: true });

export function b64urlEncode(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

export function b64Decode(text) {
  const std = text.trim().replaceAll("-", "+").replaceAll("_", "/");
  const padded = std + "===".slice((std.length + 3) % 4);
  const bin = atob(padded);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

export function b64Encode(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** SHA-256 of the 32 key bytes, first 16 bytes, hex in groups of four (as the CLI prints it). */
export async function fingerprint(publicRaw) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", publicRaw)).slice(0, 16);
  const hex = [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
  return hex.match(/.{4}/g).join(" ");
}

/** The 32 bytes of a directory key, or an Error saying why it is not an Enigma key. */
export function parsePublicKey(registered) {
  let raw;
  try {
    raw = b64Decode(registered);
  } catch {
    throw new Error("this user's key is not an Enigma key (not base64url)");
  }
  if (raw.length !== 32) throw new Error(`this user's key is not an Enigma key (${raw.length} bytes, not 32)`);
  return raw;
}

function info(from, to) {
  return hpke.concat(te.encode("enigma-hpke-v1"), new Uint8Array([0]), te.encode(from), new Uint8Array([0]), te.encode(to));
}

/** Seals {id, ts, text} from `me` to `to`. */
export async function sealMessage(me, to, recipientRaw, content) {
  const { enc, ciphertext } = await hpke.seal({
    recipientRaw,
    info: info(me.userId, to),
    plaintext: te.encode(JSON.stringify(content)),
    sender: { privateKey: me.privateKey, publicRaw: me.publicRaw },
  });
  return b64urlEncode(hpke.concat(new Uint8Array([VERSION_AESGCM]), enc, ciphertext));
}

/** Opens a payload `from` sealed to `me`; throws an Error naming the reason. */
export async function openMessage(me, from, senderRaw, payload) {
  let wire;
  try {
    if (!/^[A-Za-z0-9_-]+$/.test(payload)) throw new Error();
    wire = b64Decode(payload);
  } catch {
    throw new Error("not an Enigma payload (not base64url)");
  }
  if (wire.length === 0) throw new Error("not an Enigma payload (empty)");
  if (wire[0] === 1) throw new Error("payload format version 1 (ChaCha20-Poly1305) cannot be opened in a browser");
  if (wire[0] !== VERSION_AESGCM) throw new Error(`payload format version ${wire[0]} is not supported`);
  if (wire.length < 1 + 32 + 16) throw new Error("not an Enigma payload (too short)");
  let plain;
  try {
    plain = await hpke.open({
      recipient: me,
      encBytes: wire.slice(1, 33),
      info: info(from, me.userId),
      ciphertext: wire.slice(33),
      senderRaw,
    });
  } catch {
    throw new Error("does not open: not sealed by this sender for you, or altered");
  }
  let content;
  try {
    content = JSON.parse(td.decode(plain));
  } catch {
    throw new Error("opened, but the content is not the expected JSON");
  }
  if (typeof content?.id !== "string" || typeof content?.text !== "string" || typeof content?.ts !== "number") {
    throw new Error("opened, but the content lacks id, ts or text");
  }
  return content;
}

/** Opens an authentication challenge sealed with `hpke-x25519-aes256gcm` (base mode). */
export async function openChallenge(me, sealedB64) {
  const sealed = b64Decode(sealedB64);
  const infoBytes = hpke.concat(te.encode("enigma-challenge-v1"), new Uint8Array([0]), te.encode(me.userId));
  return hpke.open({ recipient: me, encBytes: sealed.slice(0, 32), info: infoBytes, ciphertext: sealed.slice(32) });
}
