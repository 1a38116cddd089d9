//! Path arguments: the canonical form is a fixed point inside the base, names the place the spelling
//! names, and holds nothing a program could read another way; `pathWithin` on undeclared arguments never
//! accepts a value that some decoding takes out of its base.
#![no_main]

#[path = "../../core/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::path_rules(data));
