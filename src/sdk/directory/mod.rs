//! The key directory from the client's side: every key this client seals to is proven by the
//! server's verifiable directory (`GET /directory/*`, checked by `enigma_verify`), and the owner
//! checks their own entry on every connect.
//!
//! - A contact's key from `GET /connect/{userId}` is used only once the directory's lookup proof
//!   for that user verifies against the kept root and names the same key, byte for byte ("nothing
//!   is sealed to a key the directory does not prove"). A user not yet published (the directory
//!   publishes an epoch about every second) is asked for again until [`PUBLISH_WAIT`] has passed.
//! - The newest verified root is kept beside the pins ([`super::pins`]) across runs; a newer one
//!   is taken only through the append-only proofs from it (an older one is a rollback, another
//!   hash for the same epoch a fork: both refused).
//! - The owner's client reads its own key history on every [`Client::connect`]: any version that
//!   is not its key is [`Error::AnotherKeyForYou`].
//! - The root's signer is evidence, not the root of trust: the relay may rotate its signing key
//!   (every root then comes signed by the new one), and a root by another key is taken like any
//!   other — the kept one re-signed, or a newer one the append-only proofs lead to — while
//!   [`Client::directory_status`] reports the change for the user to see.
//! - A server without a directory (404 at `/directory/root`: one that only speaks the
//!   specification) is used with pins alone, and [`Client::directory_status`] says so; with
//!   [`DirectoryPolicy::Require`] it is refused instead. A server this client keeps a root for
//!   cannot become one: its 404 is refused ([`Error::DirectoryWithdrawn`]).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use enigma_verify::history::{KeyVersion, verify_history};
use enigma_verify::keeper::{AuditSource, KeepError, RootKeeper, Signer};
use enigma_verify::lookup::verify_lookup;
use enigma_verify::proof::decode_audit;
use enigma_verify::wire::{AuditAnswer, HistoryAnswer, LookupAnswer, SignedRoot};
use enigma_verify::{SeenIn, Signers, VerifiedRoot, VerifyError, verify_root};
use serde::de::DeserializeOwned;

pub use enigma_verify::keeper::SignerChange;

pub use self::state::{
    AuditSummary, BadEpochRoot, DirectoryPolicy, DirectoryStatus, EpochRoot, KeyProof, PUBLISH_WAIT,
};
use self::state::{DirectoryState, Presence};
use super::client::{Client, http_error};
use super::crypto::PublicKey;
use super::error::Error;

/// How often it asks again meanwhile.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// The largest directory answer read (a full audit is asked for in ranges the relay bounds).
const MAX_ANSWER_BYTES: usize = 32 << 20;

impl Client {
    /// What this client knows of its server's directory.
    pub async fn directory_status(&self) -> DirectoryStatus {
        let state = self.inner.directory.lock().await;
        match (state.presence, state.keeper.as_ref().and_then(RootKeeper::kept)) {
            (Presence::Absent, _) => DirectoryStatus::Absent,
            (Presence::Present, Some(kept)) => {
                DirectoryStatus::Verified { epoch: kept.epoch, signer_changed: state.signer_change.clone() }
            }
            _ => DirectoryStatus::Unknown,
        }
    }

    /// Proves that `key` (what `GET /connect` gave) is `user`'s key in the directory: waits up
    /// to [`PUBLISH_WAIT`] for a user not yet published; refuses a key the directory does not
    /// prove, or proves otherwise.
    pub async fn prove_key(&self, user: &str, key: &str) -> Result<KeyProof, Error> {
        let proven = self
            .published(
                user,
                "lookup",
                |answer: &LookupAnswer| &answer.root,
                |answer, root| {
                    let proven = verify_lookup(answer, user, root)?;
                    proven.confirm(key)?;
                    Ok(proven)
                },
            )
            .await?;
        Ok(proven.map_or(KeyProof::NoDirectory, KeyProof::Proven))
    }

    /// Reads `user`'s (this client's own) key history from the directory: every version must be
    /// this client's key. `None` from a server without a directory.
    pub async fn check_own_history(&self, user: &str) -> Result<Option<Vec<KeyVersion>>, Error> {
        let verified = self
            .published(
                user,
                "history",
                |answer: &HistoryAnswer| &answer.root,
                |answer, root| Ok(verify_history(answer, user, root)?),
            )
            .await?;
        let Some(versions) = verified else {
            return Ok(None);
        };
        let mine = self.identity().public_key();
        let others: Vec<String> = versions
            .iter()
            .filter(|v| PublicKey::from_base64url(&v.public_key).ok().as_ref() != Some(mine))
            .map(|v| match PublicKey::from_base64url(&v.public_key) {
                Ok(key) => format!("version {} (epoch {}): fingerprint {}", v.version, v.epoch, key.fingerprint()),
                Err(_) => format!("version {} (epoch {}): {:?}", v.version, v.epoch, v.public_key),
            })
            .collect();
        if versions.is_empty() || !others.is_empty() {
            return Err(Error::AnotherKeyForYou { user: user.to_owned(), keys: others });
        }
        Ok(Some(versions))
    }

    /// Verifies the directory's whole history, epoch 1 to the newest root: every root signed
    /// (by whichever key: a rotated key is followed, see [`DirectoryStatus::Verified`]), every
    /// step append-only, and the kept root on the way. `given` are roots other clients verified (what their audit
    /// printed): the audited chain must have each at its epoch, else [`VerifyError::Fork`] (a
    /// given epoch beyond the newest is [`VerifyError::Rollback`]); both with
    /// [`SeenIn::GivenRoot`]. This is how two people find out whether they were shown the same
    /// directory. `progress(epoch, of)` is told after each answer. Keeps the newest root, and
    /// nothing when the audit fails.
    pub async fn audit_directory(
        &self,
        given: &[EpochRoot],
        mut progress: impl FnMut(u64, u64),
    ) -> Result<AuditSummary, Error> {
        let started = Instant::now();
        let mut state = self.inner.directory.lock().await;
        let latest: SignedRoot = match self.fetch(&["directory", "root"]).await? {
            Some(latest) => latest,
            None => match self.keeper(&mut state)?.kept() {
                Some(kept) => return Err(Error::DirectoryWithdrawn { url: self.url(), epoch: kept.epoch }),
                None => return Err(Error::NoDirectory { url: self.url() }),
            },
        };
        state.presence = Presence::Present;
        let kept = self.keeper(&mut state)?.kept().cloned();
        // The kept root binds the audited chain by its hash (`on_the_way`), not by its signer.
        let signers = Signers::FirstSeen;
        let target = verify_root(&latest, &signers)?;
        // The VRF key is not in the root hash: a kept root under another one is another view of
        // the directory (the keeper refuses it at a lookup; an audit must too).
        if kept.as_ref().is_some_and(|kept| kept.vrf_public_key != target.vrf_public_key) {
            return Err(VerifyError::VrfKeyChanged { epoch: target.epoch }.into());
        }
        // Every root seen before this audit, each to be found on the audited way.
        let mut seen: Vec<(EpochRoot, SeenIn)> = given.iter().map(|root| (*root, SeenIn::GivenRoot)).collect();
        seen.extend(kept.as_ref().map(|kept| (EpochRoot::from(kept), SeenIn::KeptRoot)));
        if let Some((ahead, seen_in)) =
            seen.iter().filter(|(root, _)| root.epoch() > target.epoch).max_by_key(|(root, _)| root.epoch())
        {
            return Err(
                VerifyError::Rollback { seen: ahead.epoch(), presented: target.epoch, seen_in: *seen_in }.into()
            );
        }
        let mut audited = RootKeeper::new(signers.clone());
        let (mut leaves, mut answers) = (0, 0);
        if target.epoch == 1 {
            audited.begin(&latest)?;
        }
        while audited.kept().is_none_or(|root| root.epoch < target.epoch) {
            let from = audited.kept().map_or(1, |root| root.epoch);
            let answer = Audits(self).audit(from, target.epoch).await?;
            answers += 1;
            if audited.kept().is_none() {
                let range =
                    VerifyError::AuditRange { asked_from: 1, asked_to: target.epoch, from: answer.from, to: answer.to };
                match answer.roots.first() {
                    Some(first) if first.epoch == 1 => audited.begin(first)?,
                    _ => return Err(range.into()),
                };
            }
            audited.extend(&answer, &target).await?;
            // Every root of the answer is now verified: signed, chained, append-only.
            on_the_way(&seen, &answer.roots)?;
            leaves += decode_audit(&answer.proof)
                .map_err(VerifyError::from)?
                .proofs
                .iter()
                .map(|step| step.inserted.len() as u64)
                .sum::<u64>();
            progress(audited.kept().map_or(1, |root| root.epoch), target.epoch);
        }
        on_the_way(&seen, std::slice::from_ref(&latest))?;
        let keeper = RootKeeper::resume(signers, &latest)?;
        self.keep(&keeper)?;
        state.keeper = Some(keeper);
        if let Some(kept) = kept.filter(|kept| kept.signing_key != target.signing_key) {
            state.signer_changed(Signer::of(&kept), Signer::of(&target));
        }
        let mut compared = given.to_vec();
        compared.sort();
        compared.dedup();
        Ok(AuditSummary {
            epochs: target.epoch,
            leaves,
            answers,
            root: latest,
            kept: EpochRoot::from(&target),
            compared,
            elapsed: started.elapsed(),
        })
    }

    /// Asks `/directory/{path}/{user}` until the user is published (at most the publish wait),
    /// takes the answer's root and returns `verify(answer, root)`; `None` from a server without a
    /// directory. The directory is locked for each attempt and released while waiting, so that
    /// other lookups do not queue behind a user not yet published: each root is taken whole under
    /// the lock, and an answer older than a root another lookup took meanwhile is asked again.
    async fn published<T: DeserializeOwned, R>(
        &self,
        user: &str,
        path: &str,
        root_of: impl Fn(&T) -> &SignedRoot,
        verify: impl Fn(&T, &VerifiedRoot) -> Result<R, Error>,
    ) -> Result<Option<R>, Error> {
        let segments = ["directory", path, user];
        let deadline = Instant::now() + self.publish_wait();
        loop {
            let mut state = self.inner.directory.lock().await;
            if !self.directory_present(&mut state).await? {
                return Ok(None);
            }
            if let Some(answer) = self.fetch::<T>(&segments).await? {
                match self.take_root(&mut state, root_of(&answer)).await {
                    // An answer from a replica a moment behind the root already kept: ask again.
                    Err(Error::Directory(VerifyError::Rollback { .. })) if Instant::now() < deadline => {}
                    Err(e) => return Err(e),
                    Ok(root) => return verify(&answer, &root).map(Some),
                }
            }
            drop(state);
            if Instant::now() >= deadline {
                return Err(Error::NotPublished { user: user.to_owned(), waited: self.publish_wait() });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Forgets the directory root kept for this server (its operator reset the directory).
    pub async fn forget_root(&self) -> Result<Option<SignedRoot>, Error> {
        let mut state = self.inner.directory.lock().await;
        state.keeper = None;
        match self.pins() {
            Some(pins) => pins.forget_root(self.server().as_str()),
            None => Ok(None),
        }
    }

    /// Whether the server has a directory (asked once: `GET /directory/root`, whose root is
    /// taken like any other). A directory with no epoch yet (404 with `Retry-After`) or still
    /// starting (503) is one: its first root is awaited like a user not yet published. A 404
    /// from a server this client keeps a root for is [`Error::DirectoryWithdrawn`].
    async fn directory_present(&self, state: &mut DirectoryState) -> Result<bool, Error> {
        let deadline = Instant::now() + self.publish_wait();
        while state.presence == Presence::Unknown {
            match self.fetch_answer::<SignedRoot>(&["directory", "root"]).await? {
                Fetched::Found(root) => {
                    state.presence = Presence::Present;
                    self.take_root(state, &root).await?;
                }
                // A server whose directory was verified (a root is kept for it) cannot turn the
                // proofs off by saying it has none: presence stays unknown and every check refuses.
                Fetched::Absent => match self.keeper(state)?.kept() {
                    Some(kept) => return Err(Error::DirectoryWithdrawn { url: self.url(), epoch: kept.epoch }),
                    None => state.presence = Presence::Absent,
                },
                Fetched::NotYet { status } if Instant::now() >= deadline => {
                    return Err(Error::Http {
                        status,
                        message: format!("the key directory published no epoch within {:?}", self.publish_wait()),
                    });
                }
                Fetched::NotYet { .. } => tokio::time::sleep(POLL_EVERY).await,
            }
        }
        match (state.presence, self.inner.directory_policy) {
            (Presence::Absent, DirectoryPolicy::Require) => Err(Error::NoDirectory { url: self.url() }),
            (presence, _) => Ok(presence == Presence::Present),
        }
    }

    /// Takes `root` through the keeper (append-only proofs from the kept one) and keeps it.
    async fn take_root(&self, state: &mut DirectoryState, root: &SignedRoot) -> Result<VerifiedRoot, Error> {
        let keeper = self.keeper(state)?;
        let taken = keeper.advance(root, &mut Audits(self)).await;
        let change = keeper.take_signer_change();
        // Whatever was proven on the way is kept, even when the end of it was refused.
        let kept = keeper.clone();
        self.keep(&kept)?;
        if let Some(change) = change {
            state.signer_changed(change.from, change.to);
        }
        taken.map_err(|e| match e {
            KeepError::Refused(e) => Error::Directory(e),
            KeepError::Fetch(e) => e,
        })
    }

    fn keeper<'a>(&self, state: &'a mut DirectoryState) -> Result<&'a mut RootKeeper, Error> {
        let keeper = match state.keeper.take() {
            Some(keeper) => keeper,
            None => self.stored_keeper()?,
        };
        Ok(state.keeper.insert(keeper))
    }

    /// A keeper from the root kept in the pin file (its signature checked again), or an empty one.
    fn stored_keeper(&self) -> Result<RootKeeper, Error> {
        let Some(pins) = self.pins() else {
            return Ok(RootKeeper::new(Signers::FirstSeen));
        };
        match pins.root(self.server().as_str())? {
            Some(root) => RootKeeper::resume(Signers::FirstSeen, &root).map_err(|e| Error::PinFile {
                path: pins.path().to_owned(),
                reason: format!("the directory root kept there does not verify ({e})"),
            }),
            None => Ok(RootKeeper::new(Signers::FirstSeen)),
        }
    }

    fn keep(&self, keeper: &RootKeeper) -> Result<(), Error> {
        match (self.pins(), keeper.kept()) {
            (Some(pins), Some(kept)) => pins.keep_root(self.server().as_str(), &kept.signed),
            _ => Ok(()),
        }
    }

    fn url(&self) -> String {
        self.server().to_string()
    }

    /// A directory answer: `None` for 404 (not found, or not yet), the body read up to
    /// [`MAX_ANSWER_BYTES`].
    async fn fetch<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<Option<T>, Error> {
        match self.fetch_answer(segments).await? {
            Fetched::Found(answer) => Ok(Some(answer)),
            Fetched::Absent | Fetched::NotYet { .. } => Ok(None),
        }
    }

    async fn fetch_answer<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<Fetched<T>, Error> {
        let url = self.endpoint(segments);
        let mut response = self.inner.http.get(url).send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(&e))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Error::Protocol(format!("a directory answer over {MAX_ANSWER_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        match status {
            200 => serde_json::from_slice(&body)
                .map(Fetched::Found)
                .map_err(|e| Error::Directory(VerifyError::Malformed(format!("/{}: {e}", segments.join("/"))))),
            404 if retry_after => Ok(Fetched::NotYet { status }),
            503 => Ok(Fetched::NotYet { status }),
            404 => Ok(Fetched::Absent),
            _ => {
                let text = String::from_utf8_lossy(&body);
                let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.into_owned()));
                Err(http_error(status, &body))
            }
        }
    }
}

/// What a directory endpoint answered.
enum Fetched<T> {
    Found(T),
    /// 404: no such thing (at `/directory/root`: no directory on this server).
    Absent,
    /// 404 with `Retry-After` (no epoch yet) or 503 (the directory is starting): ask again.
    NotYet {
        status: u16,
    },
}

/// Every root seen before (kept by this client, or given) must be on the audited way: the root of
/// its epoch among `roots` (verified) is it, else the directory forked.
fn on_the_way(seen: &[(EpochRoot, SeenIn)], roots: &[SignedRoot]) -> Result<(), VerifyError> {
    for (root, seen_in) in seen {
        match roots.iter().find(|audited| audited.epoch == root.epoch()) {
            Some(audited) if !STANDARD.decode(&audited.vrf_public_key).is_ok_and(|vrf| vrf == root.vrf()) => {
                return Err(VerifyError::VrfKeyChanged { epoch: root.epoch() });
            }
            Some(audited) if !hex::decode(&audited.root_hash).is_ok_and(|hash| hash == root.hash()) => {
                return Err(VerifyError::Fork {
                    epoch: root.epoch(),
                    seen: root.hash_hex(),
                    presented: audited.root_hash.to_ascii_lowercase(),
                    seen_in: *seen_in,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// `GET /directory/audit/{from}/{to}` through a client.
struct Audits<'a>(&'a Client);

impl AuditSource for Audits<'_> {
    type Error = Error;

    async fn audit(&mut self, from: u64, to: u64) -> Result<AuditAnswer, Error> {
        let (from_text, to_text) = (from.to_string(), to.to_string());
        self.0.fetch(&["directory", "audit", &from_text, &to_text]).await?.ok_or_else(|| Error::Http {
            status: 404,
            message: format!("no append-only proof from epoch {from} to {to}"),
        })
    }
}

pub(super) mod state;
#[cfg(test)]
mod tests;
