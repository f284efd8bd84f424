//! The page's entry to the checks, as a WebAssembly module (`make wasm` builds
//! `web/verify/enigma_verify.wasm`; `web/directory.js` drives it).
//!
//! The interface is four C-ABI functions and JSON both ways, so that the module needs no
//! generated glue and no tool beyond rustc: the page asks [`enigma_input`] for a buffer of the
//! request's length, writes the request's UTF-8 JSON into it, calls [`enigma_call`] (1: done, 0:
//! refused) and reads the answer's JSON at [`enigma_output`], [`enigma_output_len`] bytes long.
//!
//! Requests carry an `op` and the page's kept root (the page keeps it, like its other state):
//! - `begin {kept, root}` → `{next: "same" | "first" | "audit", from, to, kept, signerChanged}`;
//! - `extend {kept, answer, target}` (an audit answer on the way to `target`) → `{done, kept,
//!   signerChanged}`;
//! - `lookup {kept, answer, userId, publicKey}` → `{version, epoch}`;
//! - `history {kept, answer, userId}` → `{versions: [{version, epoch, publicKey}]}`.
//!
//! `signerChanged` is `null`, or the notice to show when the kept root's signer changed (the relay
//! rotated its key; the new roots were proven to extend the kept one): `{from, to, message}`, each
//! signer `{keyId, key}`.
//!
//! A refusal is `{error, kind}` ([`VerifyError::kind`]). The checks never panic; should the
//! module trap all the same, the page treats it as a refusal and instantiates it afresh.

use std::cell::RefCell;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::VerifyError;
use crate::history::verify_history;
use crate::keeper::{Next, RootKeeper, Signer, SignerChange};
use crate::lookup::verify_lookup;
use crate::root::Signers;
use crate::wire::{AuditAnswer, HistoryAnswer, LookupAnswer, SignedRoot};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
enum Request {
    Begin { kept: Option<SignedRoot>, root: SignedRoot },
    Extend { kept: SignedRoot, answer: AuditAnswer, target: SignedRoot },
    Lookup { kept: SignedRoot, answer: LookupAnswer, user_id: String, public_key: String },
    History { kept: SignedRoot, answer: HistoryAnswer, user_id: String },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Version {
    version: u64,
    epoch: u64,
    public_key: String,
}

/// Runs one JSON request; `(true, answer)` or `(false, {error, kind})`.
pub fn handle(request: &str) -> (bool, String) {
    let answer = match serde_json::from_str::<Request>(request) {
        Ok(request) => run(request),
        Err(e) => Err(VerifyError::Malformed(format!("request: {e}"))),
    };
    match answer {
        Ok(value) => (true, value.to_string()),
        Err(e) => (false, json!({"error": e.to_string(), "kind": e.kind()}).to_string()),
    }
}

fn run(request: Request) -> Result<serde_json::Value, VerifyError> {
    match request {
        Request::Begin { kept, root } => {
            let mut keeper = match &kept {
                Some(kept) => RootKeeper::resume(Signers::FirstSeen, kept)?,
                None => RootKeeper::new(Signers::FirstSeen),
            };
            let (_, next) = keeper.begin(&root)?;
            let kept = keeper.kept().map(|k| k.signed.clone());
            let changed = keeper.take_signer_change().map(|change| signer_change(&change));
            Ok(match next {
                Next::Same => json!({"next": "same", "kept": kept, "signerChanged": changed}),
                Next::First => json!({"next": "first", "kept": kept, "signerChanged": changed}),
                Next::Audit { from, to } => {
                    json!({"next": "audit", "from": from, "to": to, "kept": kept, "signerChanged": changed})
                }
            })
        }
        Request::Extend { kept, answer, target } => {
            let mut keeper = RootKeeper::resume(Signers::FirstSeen, &kept)?;
            let target = crate::root::verify_root(&target, &Signers::FirstSeen)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| VerifyError::Malformed(format!("no runtime for the audit check: {e}")))?;
            let done = runtime.block_on(keeper.extend(&answer, &target))?;
            let changed = keeper.take_signer_change().map(|change| signer_change(&change));
            Ok(json!({"done": done, "kept": keeper.kept().map(|k| k.signed.clone()), "signerChanged": changed}))
        }
        Request::Lookup { kept, answer, user_id, public_key } => {
            let keeper = RootKeeper::resume(Signers::FirstSeen, &kept)?;
            let root = keeper.kept().ok_or_else(|| VerifyError::Malformed("no kept root".into()))?;
            let proven = verify_lookup(&answer, &user_id, root)?;
            proven.confirm(&public_key)?;
            Ok(json!({"version": proven.version, "epoch": proven.epoch}))
        }
        Request::History { kept, answer, user_id } => {
            let keeper = RootKeeper::resume(Signers::FirstSeen, &kept)?;
            let root = keeper.kept().ok_or_else(|| VerifyError::Malformed("no kept root".into()))?;
            let versions: Vec<Version> = verify_history(&answer, &user_id, root)?
                .into_iter()
                .map(|v| Version { version: v.version, epoch: v.epoch, public_key: v.public_key })
                .collect();
            Ok(json!({ "versions": versions }))
        }
    }
}

fn signer_change(change: &SignerChange) -> serde_json::Value {
    let signer = |s: &Signer| json!({"keyId": s.key_id, "key": STANDARD.encode(s.key)});
    json!({"from": signer(&change.from), "to": signer(&change.to), "message": change.to_string()})
}

thread_local! {
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` bytes for the next request; the page writes the request there.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn enigma_input(len: usize) -> *mut u8 {
    INPUT.with_borrow_mut(|input| {
        *input = vec![0; len];
        input.as_mut_ptr()
    })
}

/// Runs the request in the input buffer: 1 when done, 0 when refused (the output says why).
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn enigma_call() -> u32 {
    let request = INPUT.take();
    let (done, answer) = handle(&String::from_utf8_lossy(&request));
    OUTPUT.set(answer.into_bytes());
    u32::from(done)
}

/// Where the last answer's JSON starts.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn enigma_output() -> *const u8 {
    OUTPUT.with_borrow(|output| output.as_ptr())
}

/// The last answer's length in bytes.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn enigma_output_len() -> usize {
    OUTPUT.with_borrow(Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDirectory;

    fn call(request: serde_json::Value) -> (bool, serde_json::Value) {
        let (done, answer) = handle(&request.to_string());
        (done, serde_json::from_str(&answer).unwrap())
    }

    #[test]
    fn the_page_s_requests_keep_a_root_and_prove_a_lookup() {
        // `extend` builds its own runtime, as in the page: the answers are made outside it.
        let (first, answer, audit) = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
            let mut directory = TestDirectory::new().await;
            directory.publish(&[("alice", "key-a")]).await;
            let first = directory.latest();
            directory.publish(&[("bob", "key-b")]).await;
            (first, directory.lookup("bob").await.unwrap(), directory.audit(1, 2).await)
        });
        let (done, kept) = call(json!({"op": "begin", "kept": null, "root": first}));
        assert!(done, "{kept}");
        assert_eq!(kept["next"], "first");
        let kept = kept["kept"].clone();
        let (_, next) = call(json!({"op": "begin", "kept": kept, "root": answer.root}));
        assert_eq!(
            (next["next"].as_str(), next["from"].as_u64(), next["to"].as_u64()),
            (Some("audit"), Some(1), Some(2))
        );
        let request = json!({"op": "extend", "kept": kept, "answer": audit, "target": answer.root});
        let (done, extended) = call(request);
        assert!(done, "{extended}");
        assert_eq!(extended["done"], true);
        let kept = extended["kept"].clone();
        let lookup = json!({"op": "lookup", "kept": kept, "answer": answer, "userId": "bob", "publicKey": "key-b"});
        let (done, proven) = call(lookup.clone());
        assert!(done, "{proven}");
        assert_eq!((proven["version"].as_u64(), proven["epoch"].as_u64()), (Some(1), Some(2)));

        let mut swapped = lookup.clone();
        swapped["publicKey"] = json!("key-mallory");
        let (done, refused) = call(swapped);
        assert!(!done);
        assert_eq!(refused["kind"], "key_differs");
        let (done, refused) = call(json!({"op": "begin", "kept": kept, "root": first}));
        assert!(!done);
        assert_eq!(refused["kind"], "rollback", "{refused}");
        assert_eq!(extended["signerChanged"], serde_json::Value::Null);

        let (done, refused) = call(json!({"op": "nonsense"}));
        assert!(!done);
        assert_eq!(refused["kind"], "malformed");
        assert!(!handle("not json").0);
    }

    #[test]
    fn a_rotated_key_is_followed_through_the_audit_and_reported() {
        let (before, after, audit) = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
            let mut directory = TestDirectory::new().await;
            directory.publish(&[("alice", "key-a")]).await;
            let before = directory.latest();
            directory.publish(&[("bob", "key-b")]).await;
            directory.rotate(ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]), "k2");
            (before, directory.latest(), directory.audit(1, 2).await)
        });
        let (done, next) = call(json!({"op": "begin", "kept": before, "root": after}));
        assert!(done, "{next}");
        assert_eq!((next["next"].as_str(), next["signerChanged"].is_null()), (Some("audit"), true));
        let (done, extended) = call(json!({"op": "extend", "kept": before, "answer": audit, "target": after}));
        assert!(done, "{extended}");
        assert_eq!(extended["kept"], serde_json::to_value(&after).unwrap());
        let changed = &extended["signerChanged"];
        assert_eq!((changed["from"]["keyId"].as_str(), changed["to"]["keyId"].as_str()), (Some("test-1"), Some("k2")));
        assert!(changed["message"].as_str().unwrap().contains("signing key changed"), "{changed}");
    }
}
