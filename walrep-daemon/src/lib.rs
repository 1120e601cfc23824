//! The `walrep` daemon: hosts a key-value engine (the demo KV engine or
//! SQLite) on top of the library so two processes form a primary/standby
//! pair with automatic failover.
//!
//! ```text
//! cli.rs      the command line (clap): node, witness, put/get/delete,
//!             status, promote, healthcheck, demo, certs, bench-*
//! config.rs   a node's settings: defaults < TOML file < WALREP_* env < flags
//! node.rs     running a node: data dir, listeners, snapshots, shutdown
//! http.rs     the client API (axum): /kv, the health probes, /metrics,
//!             /promote, /maintenance
//! maintenance.rs  DIR/failover-paused: maintenance mode kept across restarts
//! probes.rs   the health probes' rules (/health, /primary, /replica,
//!             /read-only, /sync, /async, /liveness, /readiness; ?lag=)
//! api.rs      the JSON shapes the HTTP API and the CLI share
//! metrics.rs  the Prometheus registry of one node
//! http_server.rs  serving the API within bounds (connections, timeouts),
//!             over HTTPS when given a certificate
//! https.rs    HTTPS: the node's certificate (reloaded on SIGHUP), the CLI's CA
//! client.rs   a small HTTP/1.1 client (HTTPS with a CA) for the CLI, the
//!             demo and tests
//! process.rs  one `walrep node` child process: spawn, signal, wait on
//! pair.rs     two of them on loopback ports, a fresh primary and standby
//! demo.rs     `walrep demo`: two child processes, a crash, a failover
//! bench/      `walrep bench-*`: the load generator and benchmarks
//! error.rs    what a command can fail with, and its exit status
//! engine.rs   the engine a node hosts: kv or sqlite (the `engine` setting)
//! kv/         the demo key-value engine (a `StateMachine` over a file snapshot)
//! sqlite/     the SQLite engine (one database file, streamed as the snapshot)
//! witness/    `walrep witness`: the built-in arbiter, its settings, /health
//!             and /metrics
//! ```
//!
//! The binary (`src/main.rs`) only calls [`main`].

pub mod api;
pub mod auth;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod engine;
pub mod error;
pub mod http;
pub mod http_server;
pub mod https;
pub mod idempotency;
pub mod identity;
pub mod kv;
pub mod maintenance;
pub mod metrics;
pub mod node;
pub mod pair;
pub mod probes;
pub mod process;
pub mod signals;
pub mod sqlite;
pub mod witness;

pub use error::DaemonError;

use std::process::ExitCode;

/// Runs the command line in `args` (the program name first) and returns
/// the process's exit status.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let cli = match cli::parse(args.clone()) {
        Ok(cli) => cli,
        // Docker reserves exit code 2, so a healthcheck's usage error
        // exits with 1 (said on stderr).
        Err(e) if e.use_stderr() && args.get(1).is_some_and(|a| a == "healthcheck") => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        // Usage errors exit with 2, --help and --version with 0.
        Err(e) => e.exit(),
    };
    let job = match cli::prepare(cli) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("walrep: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = job.worker_threads() {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().thread_name("walrep").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walrep: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(job)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrep: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to stderr, one line per event; the filter comes from `WALREP_LOG`,
/// then `RUST_LOG`, else `info`.
pub fn init_logging() {
    let filter = std::env::var("WALREP_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("walrep: ignoring log filter {filter:?}: {e}; logging at info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: walrep::testing::TrackingAllocator = walrep::testing::TrackingAllocator;
