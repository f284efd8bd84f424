// The page's HPKE (web/hpke.js: RFC 9180's key schedule over WebCrypto's X25519, HMAC and
// AES-256-GCM) against RFC 9180's published test vectors for DHKEM(X25519, HKDF-SHA256),
// HKDF-SHA256, AES-256-GCM (kem 0x0020, kdf 0x0001, aead 0x0002), modes base and auth, first
// encryption (sequence 0). Run inside chromium, on the very file the server serves.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cleanup, launchBrowser, startServer } from "./harness.js";

const INFO = "4f6465206f6e2061204772656369616e2055726e";
const PT = "4265617574792069732074727574682c20747275746820626561757479";
const AAD0 = "436f756e742d30";
// RFC 9180's test-vectors.json, the entry mode 0 / kem 0x0020 / kdf 0x0001 / aead 0x0002
// (the RFC's appendix prints only the AES-128-GCM and ChaCha20-Poly1305 variants of this KEM).
// Auth mode (what payloads use) shares every step checked here but the second DH and the
// mode byte; it is checked against the Rust `hpke` crate by the browser <-> CLI test.
const VECTORS = [
  {
    mode: 0,
    skRm: "497b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320333d",
    pkRm: "430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c",
    skEm: "179d4b53b6365c45b600c4163b61d95cbc2f4d9e36f1695558dce265ab8bab11",
    pkEm: "6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256",
    sharedSecret: "3101c54c3a4f87439eaac080699ed9bbcc726ffe44e860c0424ccb7e3e2ead7b",
    key: "f50b0609186798729ed0564b36ef2ef8044f1f9d05636874d1f46c819c7a669f",
    nonce: "151d9929e2449747889bc923",
    ct: "e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a",
  },
];

let server;
let browser;
after(cleanup);
before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

for (const v of VECTORS) {
  test(`RFC 9180 vector: X25519 / HKDF-SHA256 / AES-256-GCM, mode ${v.mode}`, async () => {
    const page = await browser.context.newPage();
    await page.goto(`${server.url}/`);
    const got = await page.evaluate(
      async ({ v, INFO, PT, AAD0 }) => {
        const hpke = await import("/assets/hpke.js");
        const hex = (h) => Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16));
        const toHex = (b) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
        const b64u = (b) => btoa(String.fromCharCode(...b)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
        const priv = (sk, pk) =>
          crypto.subtle.importKey("jwk", { kty: "OKP", crv: "X25519", d: b64u(hex(sk)), x: b64u(hex(pk)) },
            { name: "X25519" }, false, ["deriveBits"]);
        const pub = (pk) => crypto.subtle.importKey("raw", hex(pk), { name: "X25519" }, true, []);
        const schedule = await hpke.keySchedule(v.mode, hex(v.sharedSecret), hex(INFO));
        const ephemeral = { privateKey: await priv(v.skEm, v.pkEm), publicKey: await pub(v.pkEm) };
        const sender = v.skSm ? { privateKey: await priv(v.skSm, v.pkSm), publicRaw: hex(v.pkSm) } : undefined;
        const sealed = await hpke.seal({
          recipientRaw: hex(v.pkRm), info: hex(INFO), aad: hex(AAD0), plaintext: hex(PT), sender, ephemeral,
        });
        const recipient = { privateKey: await priv(v.skRm, v.pkRm), publicRaw: hex(v.pkRm) };
        const opened = await hpke.open({
          recipient, encBytes: hex(v.pkEm), info: hex(INFO), aad: hex(AAD0), ciphertext: hex(v.ct),
          senderRaw: v.pkSm ? hex(v.pkSm) : undefined,
        });
        const tampered = hex(v.ct);
        tampered[0] ^= 1;
        let refused = false;
        try {
          await hpke.open({ recipient, encBytes: hex(v.pkEm), info: hex(INFO), aad: hex(AAD0), ciphertext: tampered,
            senderRaw: v.pkSm ? hex(v.pkSm) : undefined });
        } catch {
          refused = true;
        }
        return {
          key: toHex(schedule.key), nonce: toHex(schedule.baseNonce), enc: toHex(sealed.enc),
          ct: toHex(sealed.ciphertext), opened: toHex(opened), refused,
        };
      },
      { v, INFO, PT, AAD0 },
    );
    assert.equal(got.key, v.key);
    assert.equal(got.nonce, v.nonce);
    assert.equal(got.enc, v.pkEm);
    assert.equal(got.ct, v.ct);
    assert.equal(got.opened, PT);
    assert.equal(got.refused, true, "a flipped bit does not open");
    await page.close();
  });
}
