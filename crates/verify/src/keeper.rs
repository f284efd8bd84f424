//! The newest root a client verified, and the only way forward from it.
//!
//! A presented root (carried by a lookup or a history answer, or `GET /directory/root`) is
//! compared with the kept one: an older epoch is a rollback and another hash for the same epoch
//! a fork, both refused; a newer one is taken only once the append-only proofs from the kept root
//! to it verify, fetched through an [`AuditSource`] (the SDK's HTTP client, the page's fetch).
//! The first root a client ever sees is taken on its signature alone (trust on first use; `enigma
//! audit` checks the whole history from epoch 1).
//!
//! The chain, not the signer, is what binds a presented root to the kept one: with
//! [`Signers::FirstSeen`] a root signed by another key than the kept root's (the relay rotated its
//! key and re-signs every root with the new one) is taken exactly like one by the same key — the
//! kept root re-signed, or a newer one the proofs lead to — and the change is recorded for the
//! client to report ([`RootKeeper::take_signer_change`]). Any other root by a new key is refused
//! as it would be by the old one. With [`Signers::Pinned`] a key not pinned is refused outright.

use std::fmt;
use std::future::Future;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::audit::verify_audit;
use crate::error::{SeenIn, VerifyError};
use crate::root::{Signers, VerifiedRoot, verify_root};
use crate::wire::{AuditAnswer, SignedRoot};

/// Where the keeper fetches append-only proofs: `GET /directory/audit/{from}/{to}`.
pub trait AuditSource {
    type Error;
    fn audit(&mut self, from: u64, to: u64) -> impl Future<Output = Result<AuditAnswer, Self::Error>>;
}

/// What a presented root needs before the keeper takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// It is the kept root: nothing to do.
    Same,
    /// Nothing was kept: this one is now (its signature verified).
    First,
    /// Newer: the append-only proofs from the kept epoch to `to` must verify first.
    Audit { from: u64, to: u64 },
}

/// Why a root was not taken: the directory's answers were refused, or could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum KeepError<E> {
    #[error(transparent)]
    Refused(#[from] VerifyError),
    #[error("fetching the directory's append-only proof: {0}")]
    Fetch(E),
}

/// A root's signer as a person reads it: the key id the relay gives it (not signed) and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub key_id: String,
    pub key: [u8; 32],
}

impl Signer {
    pub fn of(root: &VerifiedRoot) -> Signer {
        Signer { key_id: root.signed.key_id.clone(), key: root.signing_key }
    }
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.key_id, STANDARD.encode(self.key))
    }
}

/// The kept root's signer changed, the way a key rotation changes it: roots signed by `to` were
/// proven to extend the root `from` signed (the same root re-signed, or append-only proofs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerChange {
    pub from: Signer,
    pub to: Signer,
}

impl fmt::Display for SignerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the key directory's signing key changed from {} to {}; its roots are proven to extend the root this \
             client kept",
            self.from, self.to
        )
    }
}

/// The newest verified root.
#[derive(Debug, Clone, Default)]
pub struct RootKeeper {
    signers: Signers,
    kept: Option<VerifiedRoot>,
    /// Set when a root by another signer replaced the kept one, until taken.
    signer_change: Option<SignerChange>,
}

impl RootKeeper {
    /// A keeper with nothing kept yet.
    pub fn new(signers: Signers) -> RootKeeper {
        RootKeeper { signers, kept: None, signer_change: None }
    }

    /// A keeper that kept `root` before (read back from where the client stores it: its
    /// signature is checked again).
    pub fn resume(signers: Signers, root: &SignedRoot) -> Result<RootKeeper, VerifyError> {
        let kept = verify_root(root, &signers)?;
        Ok(RootKeeper { signers, kept: Some(kept), signer_change: None })
    }

    pub fn kept(&self) -> Option<&VerifiedRoot> {
        self.kept.as_ref()
    }

    pub fn signers(&self) -> &Signers {
        &self.signers
    }

    /// The signer change since it was last taken (from the signer of the root kept then to the
    /// one kept now), if the kept root's signer changed.
    pub fn take_signer_change(&mut self) -> Option<SignerChange> {
        self.signer_change.take()
    }

    /// Keeps `root`, proven to be the kept root or to extend it; notes a change of signer.
    fn keep(&mut self, root: VerifiedRoot) {
        if let Some(old) = &self.kept
            && old.signing_key != root.signing_key
        {
            let from = self.signer_change.take().map_or_else(|| Signer::of(old), |change| change.from);
            let to = Signer::of(&root);
            self.signer_change = (from.key != to.key).then_some(SignerChange { from, to });
        }
        self.kept = Some(root);
    }

    /// Verifies `root`'s signature and says what it needs; [`Next::First`] keeps it at once, and
    /// so does [`Next::Same`] when the kept root comes re-signed by another key.
    pub fn begin(&mut self, root: &SignedRoot) -> Result<(VerifiedRoot, Next), VerifyError> {
        let presented = verify_root(root, &self.signers)?;
        let Some(kept) = &self.kept else {
            self.kept = Some(presented.clone());
            return Ok((presented, Next::First));
        };
        if presented.vrf_public_key != kept.vrf_public_key {
            return Err(VerifyError::VrfKeyChanged { epoch: presented.epoch });
        }
        let next = match presented.epoch.cmp(&kept.epoch) {
            std::cmp::Ordering::Less => {
                return Err(VerifyError::Rollback {
                    seen: kept.epoch,
                    presented: presented.epoch,
                    seen_in: SeenIn::KeptRoot,
                });
            }
            std::cmp::Ordering::Equal if presented.root_hash != kept.root_hash => {
                return Err(VerifyError::Fork {
                    epoch: kept.epoch,
                    seen: kept.hash_hex(),
                    presented: presented.hash_hex(),
                    seen_in: SeenIn::KeptRoot,
                });
            }
            std::cmp::Ordering::Equal => {
                if presented.signing_key != kept.signing_key {
                    self.keep(presented.clone());
                }
                Next::Same
            }
            std::cmp::Ordering::Greater => Next::Audit { from: kept.epoch, to: presented.epoch },
        };
        Ok((presented, next))
    }

    /// Takes one audit answer on the way to `target` (from [`RootKeeper::begin`]): keeps the
    /// newest root it proves; returns whether `target` is now kept.
    pub async fn extend(&mut self, answer: &AuditAnswer, target: &VerifiedRoot) -> Result<bool, VerifyError> {
        let Some(kept) = &self.kept else {
            return Err(VerifyError::Malformed("an audit answer with no root kept to start from".into()));
        };
        let roots = verify_audit(answer, kept, target.epoch, &self.signers).await?;
        let newest = roots.last().cloned().ok_or_else(|| VerifyError::Malformed("an empty audit answer".into()))?;
        // Proven append-only from the kept root: kept, whatever the target turns out to be.
        self.keep(newest.clone());
        if newest.epoch != target.epoch {
            return Ok(false);
        }
        if newest.root_hash != target.root_hash {
            return Err(VerifyError::Fork {
                epoch: target.epoch,
                seen: newest.hash_hex(),
                presented: target.hash_hex(),
                seen_in: SeenIn::KeptRoot,
            });
        }
        Ok(true)
    }

    /// Takes `root` if it is the kept one, the first one, or a newer one the append-only proofs
    /// from the kept one lead to (asked of `source`, as many times as the relay answers short).
    /// Returns it verified. On an error the keeper keeps the newest root it could verify.
    pub async fn advance<S: AuditSource>(
        &mut self,
        root: &SignedRoot,
        source: &mut S,
    ) -> Result<VerifiedRoot, KeepError<S::Error>> {
        let (presented, next) = self.begin(root)?;
        if let Next::Audit { .. } = next {
            // Every answer moves the kept epoch forward (`verify_audit` refuses an empty one),
            // so this ends after at most `to - from` answers.
            loop {
                let from = self.kept.as_ref().map_or(0, |kept| kept.epoch);
                let answer = source.audit(from, presented.epoch).await.map_err(KeepError::Fetch)?;
                if self.extend(&answer, &presented).await? {
                    break;
                }
            }
        }
        Ok(presented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestDirectory, sign_root};

    /// Answers from a test directory, at most `step` epochs at a time, counting the calls.
    struct Source<'a> {
        directory: &'a TestDirectory,
        step: u64,
        calls: Vec<(u64, u64)>,
    }

    impl AuditSource for Source<'_> {
        type Error = String;
        async fn audit(&mut self, from: u64, to: u64) -> Result<AuditAnswer, String> {
            self.calls.push((from, to));
            Ok(self.directory.audit(from, to.min(from + self.step)).await)
        }
    }

    async fn directory(epochs: u64) -> TestDirectory {
        let mut directory = TestDirectory::new().await;
        for epoch in 1..=epochs {
            directory.publish(&[(&format!("user-{epoch}"), &format!("key-{epoch}"))]).await;
        }
        directory
    }

    #[tokio::test]
    async fn the_first_root_is_kept_then_newer_ones_through_audits() {
        let directory = directory(5).await;
        let mut source = Source { directory: &directory, step: 100, calls: Vec::new() };
        let mut keeper = RootKeeper::new(Signers::FirstSeen);
        keeper.advance(&directory.root(2), &mut source).await.unwrap();
        assert_eq!(keeper.kept().unwrap().epoch, 2);
        assert!(source.calls.is_empty(), "the first root needs no audit");
        keeper.advance(&directory.root(2), &mut source).await.unwrap();
        assert!(source.calls.is_empty(), "the same root needs no audit");
        keeper.advance(&directory.root(5), &mut source).await.unwrap();
        assert_eq!(source.calls, [(2, 5)]);
        assert_eq!(keeper.kept().unwrap().signed, directory.root(5));
    }

    #[tokio::test]
    async fn a_range_answered_short_is_asked_again_from_its_end() {
        let directory = directory(7).await;
        let mut source = Source { directory: &directory, step: 2, calls: Vec::new() };
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &directory.root(1)).unwrap();
        keeper.advance(&directory.root(7), &mut source).await.unwrap();
        assert_eq!(source.calls, [(1, 7), (3, 7), (5, 7)]);
        assert_eq!(keeper.kept().unwrap().epoch, 7);
    }

    #[tokio::test]
    async fn an_older_root_is_a_rollback_and_another_hash_a_fork() {
        let directory = directory(3).await;
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &directory.root(3)).unwrap();
        let error = keeper.begin(&directory.root(2)).unwrap_err();
        assert!(matches!(error, VerifyError::Rollback { seen: 3, presented: 2, .. }), "{error}");

        let mut other = TestDirectory::new().await;
        for epoch in 1..=3 {
            other.publish(&[(&format!("user-{epoch}"), "key-mallory")]).await;
        }
        let error = keeper.begin(&other.root(3)).unwrap_err();
        assert!(matches!(error, VerifyError::Fork { epoch: 3, .. }), "{error}");
        assert_eq!(keeper.kept().unwrap().signed, directory.root(3), "nothing changed");
    }

    #[tokio::test]
    async fn a_newer_root_off_the_kept_history_is_refused() {
        let honest = directory(2).await;
        let mut forked = TestDirectory::new().await;
        forked.publish(&[("user-1", "key-1")]).await;
        forked.publish(&[("user-2", "key-mallory")]).await;
        forked.publish(&[("user-3", "key-3")]).await;
        // Kept: the honest epoch 2. Presented: the fork's epoch 3, whose audit starts from the
        // fork's epoch 2.
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &honest.root(2)).unwrap();
        let mut source = Source { directory: &forked, step: 100, calls: Vec::new() };
        let error = keeper.advance(&forked.root(3), &mut source).await.unwrap_err();
        assert!(matches!(error, KeepError::Refused(VerifyError::Fork { epoch: 2, .. })), "{error}");
        assert_eq!(keeper.kept().unwrap().signed, honest.root(2));
    }

    #[tokio::test]
    async fn an_audit_that_ends_elsewhere_than_the_presented_root_is_a_fork() {
        let directory = directory(3).await;
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &directory.root(1)).unwrap();
        // A validly signed epoch 3 that the audit (the directory's real history) does not reach.
        let signing = ed25519_dalek::SigningKey::from_bytes(&crate::testing::SIGNING_SEED);
        let fake = sign_root(&signing, "test-1", 3, &[1u8; 32], &directory.vrf_public_key());
        let mut source = Source { directory: &directory, step: 100, calls: Vec::new() };
        let error = keeper.advance(&fake, &mut source).await.unwrap_err();
        assert!(matches!(error, KeepError::Refused(VerifyError::Fork { epoch: 3, .. })), "{error}");
        // The honest part of the way is kept: epoch 3 as the directory proved it.
        assert_eq!(keeper.kept().unwrap().signed, directory.root(3));
    }

    #[tokio::test]
    async fn a_root_by_another_vrf_key_is_refused_whoever_signs_it() {
        let directory = directory(2).await;
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &directory.root(1)).unwrap();
        let hash: [u8; 32] = hex::decode(directory.root(2).root_hash).unwrap().try_into().unwrap();
        let signing = ed25519_dalek::SigningKey::from_bytes(&crate::testing::SIGNING_SEED);
        let intruder = ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]);
        for key in [signing, intruder] {
            let other_vrf = sign_root(&key, "test-1", 2, &hash, &[9u8; 32]);
            assert!(matches!(keeper.begin(&other_vrf), Err(VerifyError::VrfKeyChanged { epoch: 2 })));
        }
    }

    /// The relay's key rotation: every root re-signed by the new key.
    async fn rotated(epochs: u64) -> (TestDirectory, Signer, Signer) {
        let mut directory = directory(epochs).await;
        let old = Signer { key_id: crate::testing::KEY_ID.into(), key: directory.signing_key() };
        directory.rotate(ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]), "k2");
        let new = Signer { key_id: "k2".into(), key: directory.signing_key() };
        (directory, old, new)
    }

    #[tokio::test]
    async fn the_kept_root_re_signed_by_a_new_key_is_taken_and_the_change_reported() {
        let before = directory(3).await;
        let (after, old, new) = rotated(3).await;
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &before.root(3)).unwrap();
        let (_, next) = keeper.begin(&after.root(3)).unwrap();
        assert_eq!(next, Next::Same);
        assert_eq!(keeper.kept().unwrap().signed, after.root(3), "the new signature is kept");
        let change = keeper.take_signer_change().expect("reported");
        assert_eq!(change, SignerChange { from: old, to: new });
        assert!(change.to_string().starts_with("the key directory's signing key changed from \"test-1\" ("));
        assert_eq!(keeper.take_signer_change(), None, "reported once");
        keeper.begin(&after.root(3)).unwrap();
        assert_eq!(keeper.take_signer_change(), None);
    }

    #[tokio::test]
    async fn a_newer_root_by_a_new_key_is_taken_only_through_the_audit() {
        let before = directory(2).await;
        let (after, old, new) = rotated(5).await;
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &before.root(2)).unwrap();
        // Nothing is taken on the new signature alone.
        assert_eq!(keeper.begin(&after.root(5)).unwrap().1, Next::Audit { from: 2, to: 5 });
        assert_eq!(keeper.kept().unwrap().signed, before.root(2));
        assert_eq!(keeper.take_signer_change(), None);
        let mut source = Source { directory: &after, step: 2, calls: Vec::new() };
        keeper.advance(&after.root(5), &mut source).await.unwrap();
        assert_eq!(keeper.kept().unwrap().signed, after.root(5));
        assert_eq!(keeper.take_signer_change(), Some(SignerChange { from: old, to: new }));
    }

    #[tokio::test]
    async fn a_new_key_buys_nothing_an_older_root_or_a_fork_would_not_have() {
        let honest = directory(3).await;
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &honest.root(3)).unwrap();
        // Older: a rollback.
        let (rotated_honest, _, _) = rotated(3).await;
        let error = keeper.begin(&rotated_honest.root(2)).unwrap_err();
        assert!(matches!(error, VerifyError::Rollback { seen: 3, presented: 2, .. }), "{error}");
        // Another history, signed by a new key: a fork at the kept epoch, and past it.
        let mut forked = TestDirectory::with_signing_key(ed25519_dalek::SigningKey::from_bytes(&[4u8; 32])).await;
        for epoch in 1..=5 {
            forked.publish(&[(&format!("user-{epoch}"), "key-mallory")]).await;
        }
        let error = keeper.begin(&forked.root(3)).unwrap_err();
        assert!(matches!(error, VerifyError::Fork { epoch: 3, .. }), "{error}");
        let mut source = Source { directory: &forked, step: 100, calls: Vec::new() };
        let error = keeper.advance(&forked.root(5), &mut source).await.unwrap_err();
        assert!(matches!(error, KeepError::Refused(VerifyError::Fork { epoch: 3, .. })), "{error}");
        assert_eq!(keeper.kept().unwrap().signed, honest.root(3), "nothing changed");
        assert_eq!(keeper.take_signer_change(), None);
    }

    #[tokio::test]
    async fn with_pinned_keys_a_new_signer_is_refused() {
        let before = directory(2).await;
        let (after, _, _) = rotated(4).await;
        let pinned = Signers::Pinned(vec![before.signing_key()]);
        let mut keeper = RootKeeper::resume(pinned.clone(), &before.root(2)).unwrap();
        for root in [after.root(2), after.root(4)] {
            assert!(matches!(keeper.begin(&root), Err(VerifyError::UntrustedSigner { .. })));
        }
        assert!(RootKeeper::resume(pinned, &after.root(2)).is_err());
        // Once the new key is pinned (given out of band), the rotated roots are taken.
        let both = Signers::Pinned(vec![before.signing_key(), after.signing_key()]);
        let mut keeper = RootKeeper::resume(both, &before.root(2)).unwrap();
        let mut source = Source { directory: &after, step: 100, calls: Vec::new() };
        keeper.advance(&after.root(4), &mut source).await.unwrap();
        assert!(keeper.take_signer_change().is_some());
    }

    #[tokio::test]
    async fn a_failing_transport_is_reported_as_such() {
        struct Down;
        impl AuditSource for Down {
            type Error = &'static str;
            async fn audit(&mut self, _: u64, _: u64) -> Result<AuditAnswer, &'static str> {
                Err("unreachable")
            }
        }
        let directory = directory(2).await;
        let mut keeper = RootKeeper::resume(Signers::FirstSeen, &directory.root(1)).unwrap();
        let error = keeper.advance(&directory.root(2), &mut Down).await.unwrap_err();
        assert!(matches!(error, KeepError::Fetch("unreachable")));
        assert_eq!(keeper.kept().unwrap().epoch, 1);
    }
}
