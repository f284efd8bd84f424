//! Files only their owner may read, replaced atomically: the CLI's state file and the pinned
//! contact keys.
//!
//! A replacement is written to a fresh temporary file in the same directory, created with
//! `O_CREAT|O_EXCL` (which refuses an existing name, a symbolic link included, so nothing an
//! attacker planted is followed or truncated) and mode 0600 from the start, synced, then renamed
//! over the target. The temporary name carries random bytes, so nobody can claim it in advance.
//! A crash leaves the old file or the new one, never half of either.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `contents` (mode 0600), atomically; missing parent directories are
/// created with mode 0700.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let temporary = temporary_sibling(path);
    let written = create_new_private(&temporary, contents).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Reads `path` unless it is a symbolic link (the state files are ours, never links; a link
/// there was planted to make us read or trust another file).
pub fn read_private(path: &Path) -> std::io::Result<String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut options.open(path)?, &mut text)?;
    Ok(text)
}

/// A name beside `path` no one can predict: hidden, with the process id and 64 random bits.
fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut random = [0u8; 8];
    // Without randomness the name is still refused if taken (O_EXCL): only less private.
    let _ = getrandom::fill(&mut random);
    path.with_file_name(format!(".{name}.{}.{:016x}.tmp", std::process::id(), u64::from_le_bytes(random)))
}

/// Creates `path` (which must not exist, not even as a link) with mode 0600, and syncs it.
pub(crate) fn create_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("enigma-private-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private_replaced_atomically_and_links_are_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("write");
        let path = dir.join("state.json");
        write_private(&path, b"one").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        write_private(&path, b"two").unwrap();
        assert_eq!(read_private(&path).unwrap(), "two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left behind");

        // A link planted where the file goes is replaced, never written through.
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let linked = dir.join("linked.json");
        std::os::unix::fs::symlink(&victim, &linked).unwrap();
        assert!(read_private(&linked).is_err(), "a link is not read");
        write_private(&linked, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&linked).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::metadata(&linked).unwrap().permissions().mode() & 0o777, 0o600);

        // Temporary names are not predictable.
        assert_ne!(temporary_sibling(&path), temporary_sibling(&path));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
