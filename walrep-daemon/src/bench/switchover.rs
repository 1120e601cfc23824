//! `walrep bench-switchover`: the write pause of a planned switchover under
//! a steady write load, and a check that it loses nothing: every write
//! acknowledged during the trial is read back from the new primary. The
//! pause is the longest gap between two consecutive acknowledgements from
//! the request on. `--via promote` (the default) asks the standby
//! (`POST /promote`); `--via sigterm` is a planned restart: SIGTERM to the
//! primary, which hands over to its standby before it stops, then the
//! old primary starts again (and rejoins as the standby).

use super::load::{self, Load, Percentiles};
use super::{emit_json, r3};
use crate::client::HttpClient;
use crate::error::DaemonError;
use crate::pair::{NodeProc, Pair, PairOptions, temp_dir, wait_streaming};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use walrep::CommitMode;

#[derive(Args, Debug, Clone)]
pub struct SwitchoverArgs {
    /// Switchovers to time (alternating direction).
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Concurrent writers during each switchover.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Commit mode of both nodes.
    #[arg(long, default_value = "remote-flush")]
    pub commit_mode: CommitMode,
    /// How the switchover is asked for: `promote` (`POST /promote` on
    /// the standby) or `sigterm` (SIGTERM to the primary, then start it
    /// again: a planned restart).
    #[arg(long, default_value = "promote", value_parser = ["promote", "sigterm"])]
    pub via: String,
    /// Also print the result as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Folder for the nodes' data and logs, kept afterwards [default: a
    /// temporary folder, removed afterwards].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct SwitchoverResult {
    bench: &'static str,
    commit_mode: &'static str,
    via: String,
    trials: usize,
    pause_p50_ms: f64,
    pause_max_ms: f64,
    promote_p50_ms: f64,
    acknowledged: usize,
    lost: usize,
}

pub async fn run(a: SwitchoverArgs) -> Result<(), DaemonError> {
    if a.trials == 0 || a.writers == 0 {
        return Err(DaemonError::Config(
            "--trials and --writers must be at least 1".into(),
        ));
    }
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| temp_dir("bench-switchover"));
    let mode = a.commit_mode;
    let mut pair = Pair::new(&dir, &PairOptions::defaults(mode))?;
    eprintln!(
        "bench-switchover: {} trials, {} writers, {mode}, nodes in {}",
        a.trials,
        a.writers,
        dir.display()
    );
    pair.start(mode).await?;
    let (mut primary, mut standby) = (&mut pair.n1, &mut pair.n2);
    let (mut pauses, mut promotes) = (Vec::new(), Vec::new());
    let (mut acknowledged, mut lost) = (0, 0);
    for trial in 1..=a.trials {
        let sigterm = a.via == "sigterm";
        let t = switch(primary, standby, mode, a.writers, trial, sigterm).await?;
        eprintln!(
            "bench-switchover: trial {trial}: write pause {:.1} ms, switchover answered in {:.1} ms, {} acknowledged, {} lost",
            t.pause.as_secs_f64() * 1e3,
            t.promote.as_secs_f64() * 1e3,
            t.acknowledged,
            t.lost
        );
        pauses.push(t.pause);
        promotes.push(t.promote);
        acknowledged += t.acknowledged;
        lost += t.lost;
        std::mem::swap(&mut primary, &mut standby);
    }
    let (pauses, promotes) = (Percentiles::new(pauses), Percentiles::new(promotes));
    let ms = |d: Duration| r3(d.as_secs_f64() * 1e3);
    let result = SwitchoverResult {
        bench: "switchover",
        commit_mode: mode.as_str(),
        via: a.via.clone(),
        trials: a.trials,
        pause_p50_ms: ms(pauses.at(0.5)),
        pause_max_ms: ms(pauses.max()),
        promote_p50_ms: ms(promotes.at(0.5)),
        acknowledged,
        lost,
    };
    println!(
        "planned switchover (via {}) under {} writers: write pause p50 {:.1} ms, max {:.1} ms; switchover answered in p50 {:.1} ms; {} acknowledged, {} lost",
        a.via,
        a.writers,
        result.pause_p50_ms,
        result.pause_max_ms,
        result.promote_p50_ms,
        result.acknowledged,
        result.lost
    );
    emit_json(a.json, &result);
    pair.finish(a.dir.is_some());
    if lost > 0 {
        return Err(DaemonError::Failed(format!(
            "{lost} acknowledged writes were lost in planned switchovers"
        )));
    }
    Ok(())
}

struct Trial {
    pause: Duration,
    promote: Duration,
    acknowledged: usize,
    lost: usize,
}

async fn switch(
    primary: &mut NodeProc,
    standby: &mut NodeProc,
    mode: CommitMode,
    writers: usize,
    trial: usize,
    sigterm: bool,
) -> Result<Trial, DaemonError> {
    wait_streaming(primary, standby, mode).await?;
    let writing = load::start(&Load::following(
        writers,
        format!("switch{trial}"),
        primary,
        standby,
    ));
    // Steady load first, and after: the pause is measured inside it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let promote = if sigterm {
        // The old primary returns once the standby took over (or gave up).
        primary
            .signal(libc::SIGTERM)
            .map_err(|e| DaemonError::io("sending SIGTERM to the primary", e))?;
        let stopped = loop {
            match primary.wait_exit(Duration::ZERO) {
                Ok(status) => break status,
                Err(e) if asked.elapsed() > Duration::from_secs(30) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        let took = asked.elapsed();
        if !stopped.success() {
            return Err(DaemonError::Failed(format!(
                "the primary exited with {stopped} on SIGTERM: {}",
                primary.log_tail(20)
            )));
        }
        took
    } else {
        HttpClient::new(&standby.http).promote(false).await?;
        asked.elapsed()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = writing.finish().await?;
    let pause = report
        .acks
        .windows(2)
        .filter(|w| w[1].at >= asked)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or_default();

    let lost = load::count_lost(&standby.http, &report).await?;
    if sigterm {
        // Started again with its original flags, it rejoins as the standby.
        primary.spawn()?;
    }
    Ok(Trial {
        pause,
        promote,
        acknowledged: report.acks.len(),
        lost,
    })
}
