//! CEL `expression` rules: any source either fails to compile with a message or evaluates over any
//! arguments to a verdict; never a panic. Input: the expression, then optionally `\n#args\n` and JSON.
#![no_main]

#[path = "../../core/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::cel_expression(data));
