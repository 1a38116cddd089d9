//! Manifests → compiler → engine → decide: any text must give errors or a config that survives the
//! trip through JSON (operator → ConfigMap → gateway) unchanged and builds an engine; no panic anywhere.
//! Input: YAML, optionally followed by a line `#args` and the JSON arguments of one call to every tool.
#![no_main]

#[path = "../../core/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::manifest_compile(data));
