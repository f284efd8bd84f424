//! Pinned contact keys: trust on first use, and a loud refusal when a contact's key changes.
//!
//! End-to-end encryption is only as good as the key a message is sealed to, and that key comes
//! from the server's directory: whoever can write there (a Redis operator, an attacker with
//! access to Redis, anyone on the path of plain HTTP) could otherwise swap a contact's key for
//! their own and read what is sent. So the first key seen for a user id on a server is
//! remembered here, and a later lookup that returns another key is refused with
//! [`Error::KeyChanged`], naming both fingerprints, until the user accepts the new one
//! ([`Pins::trust`], `enigma trust <userId>`) after checking it with the contact.
//!
//! Beside the pins, the file keeps the newest key-directory root this client verified per server
//! ([`Pins::root`], [`super::directory`]): a pin then stands on a proof, and a later root is taken
//! only through the directory's append-only proofs from this one.
//!
//! The file (`<key>.pins.json` for the CLI) is private and replaced atomically
//! ([`super::private_file`]); a file that cannot be read is an error, never an empty store (that
//! would silently re-trust every key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use enigma_verify::wire::SignedRoot;
use serde::{Deserialize, Serialize};

use super::crypto::PublicKey;
use super::error::Error;
use super::private_file::{read_private, write_private};

const VERSION: u32 = 1;

/// One remembered key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    /// The key, base64url (what the comparison uses: every bit of it).
    pub public_key: String,
    /// Its fingerprint, for people ([`PublicKey::fingerprint`]).
    pub fingerprint: String,
    /// When it was pinned (ms since the epoch).
    pub pinned_at: u64,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key matches the pinned one.
    Pinned,
    /// Nothing was pinned for this user: this key is now (trust on first use).
    FirstUse,
}

#[derive(Serialize, Deserialize, Default)]
struct PinFile {
    version: u32,
    /// Server URL → user id → pin (ids are per server).
    servers: BTreeMap<String, BTreeMap<String, Pin>>,
    /// Server URL → the newest directory root verified there (absent from older files).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    roots: BTreeMap<String, SignedRoot>,
}

/// The pinned keys of one file; shared by clones of a client.
pub struct Pins {
    path: PathBuf,
    /// Serialises this process's read-modify-write cycles.
    lock: Mutex<()>,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").field("path", &self.path).finish()
    }
}

impl Pins {
    /// The store in `path` (created at the first pin). Fails if an existing file cannot be read.
    pub fn open(path: &Path) -> Result<Pins, Error> {
        let pins = Pins { path: path.to_owned(), lock: Mutex::new(()) };
        pins.load()?;
        Ok(pins)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin of `user` on `server`, if any.
    pub fn get(&self, server: &str, user: &str) -> Result<Option<Pin>, Error> {
        Ok(self.load()?.servers.get(server).and_then(|users| users.get(user)).cloned())
    }

    /// Compares `key` with the pin of `user` on `server`; pins it if there is none yet.
    pub fn check(&self, server: &str, user: &str, key: &PublicKey) -> Result<Verdict, Error> {
        let _guard = self.lock.lock().expect("not poisoned");
        // Re-read under the lock: another process (a `listen` beside a `send`) may have pinned.
        let mut file = self.load()?;
        let users = file.servers.entry(server.to_owned()).or_default();
        match users.get(user) {
            Some(pin) if pin.public_key == key.to_base64url() => Ok(Verdict::Pinned),
            Some(pin) => Err(Error::KeyChanged {
                user: user.to_owned(),
                pinned: pin.fingerprint.clone(),
                presented: key.fingerprint(),
            }),
            None => {
                users.insert(user.to_owned(), pin_of(key));
                self.save(&file)?;
                Ok(Verdict::FirstUse)
            }
        }
    }

    /// Accepts `key` for `user` on `server`, replacing any earlier pin; returns the earlier one.
    pub fn trust(&self, server: &str, user: &str, key: &PublicKey) -> Result<Option<Pin>, Error> {
        let _guard = self.lock.lock().expect("not poisoned");
        let mut file = self.load()?;
        let previous = file.servers.entry(server.to_owned()).or_default().insert(user.to_owned(), pin_of(key));
        self.save(&file)?;
        Ok(previous)
    }

    /// The newest directory root kept for `server`, as it was signed (check it again on reading).
    pub fn root(&self, server: &str) -> Result<Option<SignedRoot>, Error> {
        Ok(self.load()?.roots.get(server).cloned())
    }

    /// Keeps `root` for `server` unless the file already holds a newer one (another process of
    /// this key file, a `listen` beside a `send`, may have moved further).
    pub fn keep_root(&self, server: &str, root: &SignedRoot) -> Result<(), Error> {
        let _guard = self.lock.lock().expect("not poisoned");
        let mut file = self.load()?;
        // A newer epoch, or the kept root re-signed by another key (the directory's checks took
        // it as such: the same epoch and hash); never an older epoch (a concurrent process's
        // newer root is not moved back).
        let re_signed = |kept: &SignedRoot| {
            kept.epoch == root.epoch
                && kept.root_hash.eq_ignore_ascii_case(&root.root_hash)
                && kept.signing_key != root.signing_key
        };
        if file.roots.get(server).is_some_and(|kept| kept.epoch >= root.epoch && !re_signed(kept)) {
            return Ok(());
        }
        file.roots.insert(server.to_owned(), root.clone());
        self.save(&file)
    }

    /// Forgets the root kept for `server` (its operator reset the directory); returns it.
    pub fn forget_root(&self, server: &str) -> Result<Option<SignedRoot>, Error> {
        let _guard = self.lock.lock().expect("not poisoned");
        let mut file = self.load()?;
        let previous = file.roots.remove(server);
        if previous.is_some() {
            self.save(&file)?;
        }
        Ok(previous)
    }

    fn load(&self) -> Result<PinFile, Error> {
        let fail = |reason: String| Error::PinFile { path: self.path.clone(), reason };
        let text = match read_private(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PinFile { version: VERSION, ..PinFile::default() });
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let file: PinFile = serde_json::from_str(&text).map_err(|e| fail(format!("not a pin file ({e})")))?;
        if file.version != VERSION {
            return Err(fail(format!("version {} is not supported by this client", file.version)));
        }
        Ok(file)
    }

    fn save(&self, file: &PinFile) -> Result<(), Error> {
        let mut text = serde_json::to_string_pretty(file).expect("plain struct");
        text.push('\n');
        write_private(&self.path, text.as_bytes())
            .map_err(|e| Error::PinFile { path: self.path.clone(), reason: e.to_string() })
    }
}

fn pin_of(key: &PublicKey) -> Pin {
    let pinned_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    Pin { public_key: key.to_base64url(), fingerprint: key.fingerprint(), pinned_at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdk::Identity;

    #[test]
    fn first_use_pins_a_change_is_refused_until_trusted() {
        let dir = std::env::temp_dir().join(format!("enigma-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("id.key.pins.json");
        let pins = Pins::open(&path).unwrap();
        let (bob, mallory) = (Identity::generate(), Identity::generate());
        let server = "http://127.0.0.1:1/";
        assert_eq!(pins.check(server, "bob", bob.public_key()).unwrap(), Verdict::FirstUse);
        assert_eq!(pins.check(server, "bob", bob.public_key()).unwrap(), Verdict::Pinned);
        // Another server is another directory: its ids are pinned separately.
        assert_eq!(pins.check("http://other/", "bob", mallory.public_key()).unwrap(), Verdict::FirstUse);

        let again = Pins::open(&path).unwrap(); // what the next process sees
        let error = again.check(server, "bob", mallory.public_key()).unwrap_err().to_string();
        assert!(error.contains(&bob.public_key().fingerprint()), "{error}");
        assert!(error.contains(&mallory.public_key().fingerprint()), "{error}");
        assert!(again.check(server, "bob", mallory.public_key()).is_err(), "still refused: nothing was re-pinned");

        let previous = again.trust(server, "bob", mallory.public_key()).unwrap().unwrap();
        assert_eq!(previous.fingerprint, bob.public_key().fingerprint());
        assert_eq!(again.check(server, "bob", mallory.public_key()).unwrap(), Verdict::Pinned);
        assert!(again.check(server, "bob", bob.public_key()).is_err());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // A directory root beside the pins: kept per server, never moved back.
        let root = |epoch| SignedRoot {
            epoch,
            root_hash: format!("{epoch:064x}"),
            vrf_public_key: String::new(),
            key_id: String::new(),
            signing_key: String::new(),
            signature: String::new(),
        };
        assert_eq!(again.root(server).unwrap(), None);
        again.keep_root(server, &root(5)).unwrap();
        again.keep_root(server, &root(4)).unwrap();
        assert_eq!(Pins::open(&path).unwrap().root(server).unwrap(), Some(root(5)));
        assert_eq!(again.root("http://other/").unwrap(), None);
        assert_eq!(again.check(server, "bob", mallory.public_key()).unwrap(), Verdict::Pinned, "pins kept");
        assert_eq!(again.forget_root(server).unwrap(), Some(root(5)));
        assert_eq!(again.root(server).unwrap(), None);

        std::fs::write(&path, "garbage").unwrap();
        assert!(Pins::open(&path).is_err(), "a damaged pin file is an error, never an empty store");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
