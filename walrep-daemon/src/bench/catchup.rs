//! `walrep bench-catchup`: how fast a standby that missed a WAL backlog
//! catches up, and how much memory both nodes need meanwhile.
//!
//! The standby is stopped cleanly, the primary writes `--backlog-mb` of WAL
//! (1 KiB values over a small set of keys, so the state stays small and
//! only the log grows, as PostgreSQL's rows do in the comparison), the
//! dirty pages are synced, then the standby starts again and is timed from
//! its start until it has received (flushed) and applied up to the
//! primary's last LSN. The pair runs in `async` mode: the backlog is
//! written with no standby to wait for, as PostgreSQL's is with
//! `synchronous_commit = local`; streaming itself is the same in every
//! mode. The WAL retention is raised above the backlog, so the standby
//! streams it rather than resyncing from a snapshot.

use super::load::{self, Keys, Load};
use super::{emit_json, r3};
use crate::client::HttpClient;
use crate::error::DaemonError;
use crate::pair::{Pair, PairOptions, temp_dir};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use walrep::CommitMode;

#[derive(Args, Debug, Clone)]
pub struct CatchupArgs {
    /// WAL backlog to write while the standby is down, MiB.
    #[arg(long, default_value_t = 1024)]
    pub backlog_mb: u64,
    /// Size of each written value.
    #[arg(long, default_value_t = 1024)]
    pub value_bytes: usize,
    /// Concurrent writers producing the backlog.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Longest wait for the standby to catch up, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
    /// Also print the result as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Folder for the nodes' data and logs, kept afterwards [default: a
    /// temporary folder, removed afterwards].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct CatchupResult {
    bench: &'static str,
    backlog_mb: f64,
    backlog_records: u64,
    write_seconds: f64,
    receive_seconds: f64,
    apply_seconds: f64,
    receive_mb_s: f64,
    apply_mb_s: f64,
    primary_rss_mb: f64,
    standby_rss_mb: f64,
}

pub async fn run(a: CatchupArgs) -> Result<(), DaemonError> {
    if a.backlog_mb == 0 || a.writers == 0 || a.value_bytes == 0 {
        return Err(DaemonError::Config(
            "--backlog-mb, --writers and --value-bytes must be at least 1".into(),
        ));
    }
    let backlog = a.backlog_mb << 20;
    let dir = a.dir.clone().unwrap_or_else(|| temp_dir("bench-catchup"));
    let mode = CommitMode::Async;
    let mut pair = Pair::new(
        &dir,
        &PairOptions {
            extra: vec![
                (
                    "wal_retention_bytes",
                    (backlog * 2 + (256 << 20)).to_string(),
                ),
                ("auto_failover", "false".into()),
            ],
            ..PairOptions::defaults(mode)
        },
    )?;
    eprintln!(
        "bench-catchup: {} MiB backlog of {} byte values, nodes in {}",
        a.backlog_mb,
        a.value_bytes,
        dir.display()
    );
    pair.start(mode).await?;
    pair.n2.terminate(Duration::from_secs(10));
    eprintln!("bench-catchup: standby stopped; writing the backlog");

    let writing = load::start(&Load {
        writers: a.writers,
        value_bytes: a.value_bytes,
        keys: Keys::Cycle(64),
        prefix: "backlog".into(),
        addrs: vec![pair.n1.http.clone()],
        keep_keys: false,
    });
    let mut primary = HttpClient::new(&pair.n1.http).with_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let mut next_note = 0u64;
    loop {
        let (_, h) = primary.health().await?;
        if h.peer.lag_bytes >= backlog || writing.is_finished() {
            break;
        }
        if h.peer.lag_bytes >= next_note {
            eprintln!(
                "bench-catchup:   {} MiB of WAL written",
                h.peer.lag_bytes >> 20
            );
            next_note += backlog / 8;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = writing.finish().await?;
    let write_seconds = started.elapsed().as_secs_f64();
    if report.acks.is_empty() {
        return Err(DaemonError::Failed(format!(
            "no backlog write was acknowledged; the last error: {}",
            report.last_error.unwrap_or_default()
        )));
    }
    // Asked again: the last writes may have landed after the loop looked.
    let (_, written) = primary.health().await?;
    let target = written.last_lsn;
    let backlog_bytes = written.peer.lag_bytes;
    let backlog_records = written.peer.lag_records;
    // The backlog's dirty pages are not the catch-up's to pay for.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    eprintln!(
        "bench-catchup: {:.1} MiB ({backlog_records} records) up to LSN {target} in {write_seconds:.1} s; starting the standby",
        backlog_bytes as f64 / 1048576.0
    );

    let t0 = Instant::now();
    pair.n2.spawn()?;
    let limit = Duration::from_secs(a.timeout_seconds);
    let received = pair
        .n2
        .wait_for("received the backlog", limit, |h| h.flushed_lsn >= target)
        .await?;
    let receive_seconds = t0.elapsed().as_secs_f64();
    let applied = if received.applied_lsn >= target {
        receive_seconds
    } else {
        pair.n2
            .wait_for("applied the backlog", limit, |h| h.applied_lsn >= target)
            .await?;
        t0.elapsed().as_secs_f64()
    };
    let mb = backlog_bytes as f64 / 1048576.0;
    let result = CatchupResult {
        bench: "catchup",
        backlog_mb: r3(mb),
        backlog_records,
        write_seconds: r3(write_seconds),
        receive_seconds: r3(receive_seconds),
        apply_seconds: r3(applied),
        receive_mb_s: r3(mb / receive_seconds.max(1e-3)),
        apply_mb_s: r3(mb / applied.max(1e-3)),
        primary_rss_mb: r3(pair.n1.peak_rss_mib().unwrap_or(f64::NAN)),
        standby_rss_mb: r3(pair.n2.peak_rss_mib().unwrap_or(f64::NAN)),
    };
    println!(
        "catch-up of {:.1} MiB ({} records): received in {:.2} s ({:.1} MB/s), applied in {:.2} s ({:.1} MB/s); peak RSS primary {:.1} MiB, standby {:.1} MiB",
        result.backlog_mb,
        result.backlog_records,
        result.receive_seconds,
        result.receive_mb_s,
        result.apply_seconds,
        result.apply_mb_s,
        result.primary_rss_mb,
        result.standby_rss_mb
    );
    emit_json(a.json, &result);
    pair.finish(a.dir.is_some());
    Ok(())
}
