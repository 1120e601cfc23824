//! The `walrep` daemon and its client; the logic lives in the `walrep_daemon` library.

/// mimalloc instead of the system allocator: the same pair of nodes used
/// a few per cent less CPU per replicated write with it (2-10 % in
/// alternated runs) and held less memory under large values (docs/PERFORMANCE.md, "The allocator"). The library
/// leaves the choice to the program that embeds it; this is the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    walrep_daemon::main(std::env::args_os())
}
