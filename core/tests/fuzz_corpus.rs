//! Replays every input kept in `fuzz/seeds/<target>/` (the seed corpora, and every crash the fuzzers
//! found, saved there as a regression) through the properties the fuzz targets check, on the stable
//! toolchain: `scripts/fuzz.sh` explores, this test keeps what it found fixed.

#[path = "support/fuzz_checks.rs"]
mod fuzz_checks;

use std::path::PathBuf;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} holds no inputs", dir.display());
    for input in inputs {
        let data = std::fs::read(&input).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{}: {}", input.display(), why.unwrap_or_default());
        }
    }
}

#[test]
fn manifest_inputs_compile_or_fail_cleanly() {
    replay("manifest_compile", fuzz_checks::manifest_compile);
}

#[test]
fn path_inputs_keep_their_properties() {
    replay("path_rules", fuzz_checks::path_rules);
}

#[test]
fn url_inputs_read_one_way() {
    replay("url_rules", fuzz_checks::url_rules);
}

#[test]
fn cel_inputs_compile_or_fail_cleanly() {
    replay("cel_expression", fuzz_checks::cel_expression);
}

#[test]
fn token_inputs_never_verify_without_the_key() {
    replay("confirm_token", fuzz_checks::confirm_token);
}
