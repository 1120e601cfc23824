//! The `walrep` daemon and its client; the logic lives in `walrep::daemon`.

fn main() -> std::process::ExitCode {
    walrep::daemon::main(std::env::args_os())
}
