//! `toolwarden-worker`: see `toolwarden_worker::main_with_args`.
fn main() -> std::process::ExitCode {
    toolwarden_worker::main_with_args(std::env::args_os().skip(1).collect())
}
