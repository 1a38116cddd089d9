//! Confirm tokens: any string is refused with a reason or verified, never a panic; a token issued for
//! one binding verifies for it and for no other.
#![no_main]

#[path = "../../core/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::confirm_token(data));
