//! The private key file: a small JSON document readable by its owner only.
//!
//! ```json
//! {"version": 1, "suite": "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305",
//!  "privateKey": "<base64url>", "publicKey": "<base64url>"}
//! ```
//!
//! The file is created with mode 0600 in one step (never written first and restricted
//! afterwards), an existing file is never overwritten unless asked, and an overwrite goes
//! through a temporary file and a rename so that a crash leaves either the old key or the new
//! one, never half of each. Like ssh, loading refuses a key file others can read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::crypto::Identity;
use super::error::Error;
use super::private_file::{create_new_private, write_private};

const VERSION: u32 = 1;
const SUITE: &str = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyFile {
    version: u32,
    suite: String,
    private_key: String,
    public_key: String,
}

impl Identity {
    /// Reads a key file written by [`Identity::save`].
    pub fn load(path: &Path) -> Result<Identity, Error> {
        let fail = |reason: String| Error::KeyFile { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => fail("not found (create one with `enigma keygen`)".into()),
            _ => fail(e.to_string()),
        })?;
        check_private(path)?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| fail(format!("not an Enigma key file ({e})")))?;
        if file.version != VERSION {
            return Err(fail(format!("version {} is not supported by this client", file.version)));
        }
        let identity = Identity::from_secret_base64url(&file.private_key).map_err(|e| fail(e.to_string()))?;
        if identity.public_key().to_base64url() != file.public_key {
            return Err(fail("the public key does not match the private key (the file is damaged)".into()));
        }
        Ok(identity)
    }

    /// Writes the key file with mode 0600, creating missing directories (mode 0700). An
    /// existing file is an error unless `overwrite`.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), Error> {
        let fail = |e: std::io::Error| Error::KeyFile { path: path.to_owned(), reason: e.to_string() };
        if !overwrite && path.symlink_metadata().is_ok() {
            return Err(Error::KeyFileExists { path: path.to_owned() });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(fail)?;
        }
        let file = KeyFile {
            version: VERSION,
            suite: SUITE.into(),
            private_key: self.secret_base64url(),
            public_key: self.public_key().to_base64url(),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("plain struct");
        text.push('\n');
        if !overwrite {
            // create_new: if another process created the file meanwhile, fail rather than clobber.
            return create_new_private(path, text.as_bytes()).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::KeyFileExists { path: path.to_owned() },
                _ => fail(e),
            });
        }
        write_private(path, text.as_bytes()).map_err(fail)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Refuses a key file that other users can read or write.
fn check_private(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| Error::KeyFile { path: path.to_owned(), reason: e.to_string() })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::KeyFile {
                path: path.to_owned(),
                reason: format!(
                    "permissions {:04o} let other users read it; run `chmod 600 {}`",
                    mode & 0o7777,
                    path.display()
                ),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("enigma-keyfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saved_keys_are_private_and_never_clobbered() {
        let dir = temp_dir("save");
        let path = dir.join("nested").join("identity.key");
        let first = Identity::generate();
        first.save(&path, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        }
        assert_eq!(Identity::load(&path).unwrap().public_key(), first.public_key());

        let second = Identity::generate();
        assert!(matches!(second.save(&path, false), Err(Error::KeyFileExists { .. })));
        assert_eq!(Identity::load(&path).unwrap().public_key(), first.public_key(), "untouched");
        second.save(&path, true).unwrap();
        assert_eq!(Identity::load(&path).unwrap().public_key(), second.public_key());
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("perm");
        let path = dir.join("identity.key");
        Identity::generate().save(&path, false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Identity::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_files_are_explained() {
        let dir = temp_dir("damaged");
        std::fs::create_dir_all(&dir).unwrap();
        let missing = Identity::load(&dir.join("missing")).unwrap_err().to_string();
        assert!(missing.contains("enigma keygen"), "{missing}");
        let path = dir.join("garbage");
        create_new_private(&path, b"hello").unwrap();
        assert!(Identity::load(&path).unwrap_err().to_string().contains("not an Enigma key file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
