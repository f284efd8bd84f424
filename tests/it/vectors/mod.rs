//! The test vectors of `docs/vectors/` (README there): the file is exactly what the generator
//! writes, so nobody edits it by hand and nobody forgets to regenerate it. `make vectors`
//! rewrites it (the ignored test below); the SDK (`src/sdk/crypto/vectors.rs`), the server's
//! auth code (`src/auth/vectors.rs`) and the web page (`tests/browser/vectors.test.js`) check
//! themselves against it, and `live` checks a real server's exchange with the vectors' keys.

mod fixed_rng;
mod generate;
mod live;

use std::path::PathBuf;

use serde_json::Value;

/// The file, relative to the repository.
const FILE: &str = "docs/vectors/v1.json";

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FILE)
}

/// The file, read as any implementation would read it.
fn load() -> Value {
    let text = std::fs::read_to_string(path()).unwrap_or_else(|e| panic!("{FILE}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{FILE}: {e}"))
}

fn generated() -> String {
    let mut text = serde_json::to_string_pretty(&generate::vectors()).expect("plain data");
    text.push('\n');
    text
}

#[test]
fn the_file_is_what_the_generator_writes() {
    let on_disk = std::fs::read_to_string(path()).unwrap_or_else(|e| panic!("{FILE}: {e} (run `make vectors`)"));
    let fresh = generated();
    assert!(generated() == fresh, "the generator is not deterministic");
    if on_disk != fresh {
        let line = on_disk.lines().zip(fresh.lines()).position(|(a, b)| a != b).map_or(0, |i| i + 1);
        panic!("{FILE} differs from what the generator writes (first at line {line}): run `make vectors`");
    }
}

/// `make vectors`: writes the file.
#[test]
#[ignore = "writes docs/vectors/v1.json: run by `make vectors`"]
fn write_vectors() {
    std::fs::write(path(), generated()).unwrap_or_else(|e| panic!("{FILE}: {e}"));
}
