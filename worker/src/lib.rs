//! The sandboxed executor (being built: see issue 3).
pub mod protocol;

/// Entry point shared by the `toolwarden-worker` binary and `toolwarden worker ...`; `args` excludes the
/// program name.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    let _ = args;
    eprintln!("toolwarden-worker: not built yet");
    std::process::ExitCode::FAILURE
}
