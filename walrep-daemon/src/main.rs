//! The `walrep` daemon and its client; the logic lives in the `walrep_daemon` library.

fn main() -> std::process::ExitCode {
    walrep_daemon::main(std::env::args_os())
}
