//! The health probes load balancers and orchestrators ask (the routes of
//! Patroni's REST API, so HAProxy and Kubernetes checks written for it
//! work unchanged, but for one bound: a standby knows its lag in records,
//! not bytes, so `?lag=SIZE` passes only a standby with nothing to catch
//! up; use `?lag_records=N`): each answers 200 or 503 from the node's `/health`,
//! the same for `GET`, `HEAD` (no body) and `OPTIONS` (HAProxy's usual
//! `option httpchk OPTIONS /primary`).
//!
//! | route | 200 when the node is | 503 also carries `Retry-After` when |
//! |---|---|---|
//! | `/primary`, `/read-write` | a primary that accepts writes | promoting, or a primary that cannot write for now (switchover, unconfirmed, `block`) |
//! | `/replica` | a standby receiving the WAL stream, within the lag bounds | a standby not streaming or over a bound, fenced, rejoining |
//! | `/read-only` | a writable primary, or what `/replica` accepts | as `/replica`, and as `/primary` |
//! | `/sync` | what `/replica` accepts, and the primary calls it in sync | as `/replica` |
//! | `/async` | what `/replica` accepts, and not in sync | as `/replica` |
//! | `/liveness` | anything but `failed` | never |
//! | `/readiness` | what `/read-only` accepts | as `/read-only` |
//! | `/health` | anything but `failed` (the body is the full report) | never |
//!
//! Lag bounds (query parameters of the routes that accept a standby):
//! `lag=SIZE` bounds the WAL bytes the standby lacks (`lag=0`,
//! `lag=16777216`, `lag=16MB`, `lag=512kB`, `lag=1GiB`: B, kB/KB, MB, GB
//! are powers of 1000, KiB, MiB, GiB of 1024), `lag_records=N` the
//! records. A standby whose byte lag is unknown (it knows only the record
//! count) is not within a byte bound unless it has no record to catch
//! up. Any other parameter, or a bad value, is a 400 saying what was
//! wrong.

use crate::api::HealthReport;
use axum::http::StatusCode;

/// The probes, by route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Primary,
    Replica,
    ReadOnly,
    Sync,
    Async,
    Liveness,
    Readiness,
    Health,
}

/// Seconds a client waits before asking again after a 503 that time can
/// fix: about a failover's or a reconnection's time at the defaults.
pub const RETRY_AFTER_SECS: u64 = 1;

impl Probe {
    /// The route's name, without the slash.
    pub fn route(self) -> &'static str {
        match self {
            Probe::Primary => "primary",
            Probe::Replica => "replica",
            Probe::ReadOnly => "read-only",
            Probe::Sync => "sync",
            Probe::Async => "async",
            Probe::Liveness => "liveness",
            Probe::Readiness => "readiness",
            Probe::Health => "health",
        }
    }

    /// Whether a standby can pass it (and so `lag` bounds apply).
    fn takes_standby(self) -> bool {
        matches!(
            self,
            Probe::Replica | Probe::ReadOnly | Probe::Sync | Probe::Async | Probe::Readiness
        )
    }
}

/// The bounds asked for in the query string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagBounds {
    /// `lag=`: bytes of WAL.
    pub bytes: Option<u64>,
    /// `lag_records=`: records.
    pub records: Option<u64>,
}

/// A probe's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: StatusCode,
    /// Why it is 503 (`None` for 200).
    pub reason: Option<String>,
    /// Seconds for `Retry-After`, on a 503 that waiting can fix.
    pub retry_after: Option<u64>,
}

impl Verdict {
    fn ok() -> Verdict {
        Verdict {
            status: StatusCode::OK,
            reason: None,
            retry_after: None,
        }
    }

    fn down(reason: String, retry: bool) -> Verdict {
        Verdict {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: Some(reason),
            retry_after: retry.then_some(RETRY_AFTER_SECS),
        }
    }
}

/// Reads the query string of `probe`: the lag bounds, or why it is
/// refused.
pub fn parse_query(probe: Probe, query: Option<&str>) -> Result<LagBounds, String> {
    let mut bounds = LagBounds::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "lag" => &mut bounds.bytes,
            "lag_records" => &mut bounds.records,
            _ if probe.takes_standby() => {
                return Err(format!(
                    "unknown query parameter {key:?} for /{}: it takes lag=SIZE (bytes, e.g. 16MB) and lag_records=N",
                    probe.route()
                ));
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {key:?}: /{} takes none",
                    probe.route()
                ));
            }
        };
        if !probe.takes_standby() {
            return Err(format!(
                "/{} takes no lag bound: only routes a standby can pass do (/replica, /read-only, /sync, /async, /readiness)",
                probe.route()
            ));
        }
        if slot.is_some() {
            return Err(format!("{key} is given twice"));
        }
        *slot = Some(if key == "lag" {
            parse_size(value)?
        } else {
            value.parse::<u64>().map_err(|_| {
                format!("lag_records={value:?} is not a whole number of records >= 0")
            })?
        });
    }
    Ok(bounds)
}

/// `16MB`, `512kB`, `1GiB`, `100` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "lag={text:?} is not a size: give bytes (e.g. 1048576) or a number with a unit: B, kB, MB, GB (x1000) or KiB, MiB, GiB (x1024), e.g. lag=16MB"
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// The roles a retry can see change by itself into one a standby probe
/// accepts.
fn transient(role: &str) -> bool {
    matches!(role, "promoting" | "fenced" | "rejoining")
}

/// Whether the node passes `probe` under `bounds`, and if not, why.
pub fn judge(probe: Probe, h: &HealthReport, bounds: &LagBounds) -> Verdict {
    match probe {
        // A standby retrying its WAL after a full disk is failed for now,
        // but a restart would not help it: liveness passes.
        Probe::Liveness if h.retrying_wal => Verdict::ok(),
        Probe::Liveness | Probe::Health => {
            if h.role == "failed" {
                Verdict::down(
                    format!(
                        "the node failed: {}",
                        h.note.as_deref().unwrap_or("see its log")
                    ),
                    false,
                )
            } else {
                Verdict::ok()
            }
        }
        Probe::Primary => primary(h),
        Probe::Replica => standby(h, bounds),
        Probe::Sync | Probe::Async => {
            let verdict = standby(h, bounds);
            if verdict.status != StatusCode::OK {
                return verdict;
            }
            match (probe, h.is_sync_standby()) {
                (Probe::Sync, false) => Verdict::down(
                    format!(
                        "a standby the primary does not call in sync (sync_state {}, commit mode {})",
                        h.sync_state, h.commit_mode
                    ),
                    true,
                ),
                (Probe::Async, true) => {
                    Verdict::down("a standby in sync (ask /sync)".into(), false)
                }
                _ => Verdict::ok(),
            }
        }
        Probe::ReadOnly | Probe::Readiness => {
            if h.writable {
                return Verdict::ok();
            }
            if h.role == "primary" {
                return primary(h);
            }
            standby(h, bounds)
        }
    }
}

fn primary(h: &HealthReport) -> Verdict {
    if h.writable {
        return Verdict::ok();
    }
    match h.role.as_str() {
        // A primary refusing writes for now (a switchover in progress, an
        // unconfirmed start, `block` without its standby), or a standby
        // taking over: it may accept writes in a moment.
        "primary" | "promoting" => Verdict::down(
            format!(
                "a {} that does not accept writes now: {}",
                h.role,
                h.note.as_deref().unwrap_or("no reason given")
            ),
            true,
        ),
        role => Verdict::down(format!("not the primary: this node is {role}"), false),
    }
}

/// A streaming standby within `bounds`.
fn standby(h: &HealthReport, bounds: &LagBounds) -> Verdict {
    if h.role != "standby" {
        return Verdict::down(
            format!("not a standby: this node is {}", h.role),
            transient(&h.role),
        );
    }
    if !h.peer.connected {
        return Verdict::down(
            "a standby not receiving the WAL stream from its primary".into(),
            true,
        );
    }
    let lag = h.standby_lag().expect("a standby has a lag");
    if let Some(max) = bounds.records
        && lag.records > max
    {
        return Verdict::down(
            format!(
                "a standby {} records behind its primary, over lag_records={max}",
                lag.records
            ),
            true,
        );
    }
    if let Some(max) = bounds.bytes {
        match lag.bytes {
            Some(bytes) if bytes > max => {
                return Verdict::down(
                    format!("a standby {bytes} bytes behind its primary, over lag={max}"),
                    true,
                );
            }
            Some(_) => {}
            None => {
                return Verdict::down(
                    format!(
                        "a standby {} records behind its primary whose lag in bytes is unknown, so not within lag={max}; bound it in records with lag_records=N",
                        lag.records
                    ),
                    true,
                );
            }
        }
    }
    Verdict::ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PeerReport;

    fn node(role: &str, connected: bool, lag_records: u64, lag_bytes: u64) -> HealthReport {
        HealthReport {
            role: role.into(),
            writable: role == "primary",
            commit_mode: "remote-flush".into(),
            sync_state: "not_sync".into(),
            peer: PeerReport {
                connected,
                lag_records,
                lag_bytes,
                ..PeerReport::default()
            },
            ..HealthReport::default()
        }
    }

    fn status(probe: Probe, h: &HealthReport, query: &str) -> u16 {
        let bounds = parse_query(probe, Some(query)).unwrap();
        judge(probe, h, &bounds).status.as_u16()
    }

    #[test]
    fn sizes_read_as_bytes_with_decimal_and_binary_units() {
        for (text, bytes) in [
            ("0", 0),
            ("100", 100),
            ("100B", 100),
            ("16kB", 16_000),
            ("16KB", 16_000),
            ("1MB", 1_000_000),
            ("2GB", 2_000_000_000),
            ("1KiB", 1024),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "MB",
            "-1",
            "1.5MB",
            "1 MB",
            "16mb",
            "1TB",
            "99999999999999999999",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("lag=16MB"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_or_repeated_parameters_and_bounds_on_routes_without_standbys_are_refused() {
        let e = parse_query(Probe::Replica, Some("lag=1MB&foo=1")).unwrap_err();
        assert!(e.contains("\"foo\"") && e.contains("lag_records"), "{e}");
        let e = parse_query(Probe::Replica, Some("lag=1&lag=2")).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = parse_query(Probe::Replica, Some("lag_records=x")).unwrap_err();
        assert!(e.contains("lag_records=\"x\""), "{e}");
        let e = parse_query(Probe::Primary, Some("lag=0")).unwrap_err();
        assert!(e.contains("/primary takes no lag bound"), "{e}");
        let e = parse_query(Probe::Liveness, Some("x")).unwrap_err();
        assert!(e.contains("/liveness takes none"), "{e}");
        assert_eq!(
            parse_query(Probe::ReadOnly, Some("lag=16MB&lag_records=5")),
            Ok(LagBounds {
                bytes: Some(16_000_000),
                records: Some(5)
            })
        );
        assert_eq!(parse_query(Probe::Primary, None), Ok(LagBounds::default()));
    }

    #[test]
    fn a_standby_over_a_lag_bound_is_503_with_retry_after() {
        let behind = node("standby", true, 976, 100_000);
        assert_eq!(status(Probe::Replica, &behind, ""), 200);
        assert_eq!(status(Probe::Replica, &behind, "lag=0"), 503);
        assert_eq!(status(Probe::Replica, &behind, "lag=99999"), 503);
        assert_eq!(status(Probe::Replica, &behind, "lag=100000"), 200);
        assert_eq!(status(Probe::Replica, &behind, "lag=1MB"), 200);
        assert_eq!(status(Probe::Replica, &behind, "lag_records=975"), 503);
        assert_eq!(status(Probe::Replica, &behind, "lag_records=976"), 200);
        assert_eq!(status(Probe::ReadOnly, &behind, "lag=0"), 503);
        assert_eq!(status(Probe::Readiness, &behind, "lag=0"), 503);
        let v = judge(
            Probe::Replica,
            &behind,
            &parse_query(Probe::Replica, Some("lag=0")).unwrap(),
        );
        assert_eq!(v.retry_after, Some(RETRY_AFTER_SECS));
        assert!(v.reason.unwrap().contains("100000 bytes behind"));
        // Known only in records: a byte bound is not met.
        let unknown = node("standby", true, 3, 0);
        let v = judge(
            Probe::Replica,
            &unknown,
            &parse_query(Probe::Replica, Some("lag=1GB")).unwrap(),
        );
        assert_eq!(v.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(v.reason.unwrap().contains("lag_records"));
        // Caught up: 0 bytes behind whatever the node measures.
        let caught_up = node("standby", true, 0, 0);
        assert_eq!(status(Probe::Replica, &caught_up, "lag=0"), 200);
        // Flushed everything but applied less (an engine slow to apply):
        // reads here miss those records, so they count.
        let slow_apply = HealthReport {
            flushed_lsn: 500,
            applied_lsn: 490,
            ..caught_up.clone()
        };
        assert_eq!(status(Probe::Replica, &slow_apply, "lag_records=9"), 503);
        assert_eq!(status(Probe::Replica, &slow_apply, "lag_records=10"), 200);
        assert_eq!(status(Probe::Replica, &slow_apply, "lag=0"), 503);
    }

    #[test]
    fn each_probe_on_each_role() {
        let primary = node("primary", true, 0, 0);
        let standby = node("standby", true, 0, 0);
        let mut sync_standby = standby.clone();
        sync_standby.sync_state = "sync".into();
        let cut_off = node("standby", false, 0, 0);
        let mut blocked = node("primary", false, 0, 0);
        blocked.writable = false;
        let failed = node("failed", false, 0, 0);
        let retrying_wal = HealthReport {
            retrying_wal: true,
            ..failed.clone()
        };
        let rejoining = node("rejoining", false, 0, 0);
        use Probe::*;
        let table: [(&str, &HealthReport, [u16; 8]); 8] = [
            // Primary Replica ReadOnly Sync Async Liveness Readiness Health
            (
                "primary",
                &primary,
                [200, 503, 200, 503, 503, 200, 200, 200],
            ),
            (
                "standby",
                &standby,
                [503, 200, 200, 503, 200, 200, 200, 200],
            ),
            (
                "sync standby",
                &sync_standby,
                [503, 200, 200, 200, 503, 200, 200, 200],
            ),
            (
                "cut off",
                &cut_off,
                [503, 503, 503, 503, 503, 200, 503, 200],
            ),
            (
                "blocked",
                &blocked,
                [503, 503, 503, 503, 503, 200, 503, 200],
            ),
            ("failed", &failed, [503, 503, 503, 503, 503, 503, 503, 503]),
            (
                "failed, retrying its WAL",
                &retrying_wal,
                [503, 503, 503, 503, 503, 200, 503, 503],
            ),
            (
                "rejoining",
                &rejoining,
                [503, 503, 503, 503, 503, 200, 503, 200],
            ),
        ];
        let probes = [
            Primary, Replica, ReadOnly, Sync, Async, Liveness, Readiness, Health,
        ];
        for (name, h, want) in table {
            for (probe, want) in probes.iter().zip(want) {
                assert_eq!(status(*probe, h, ""), want, "{probe:?} on {name}");
            }
        }
        let retry = |probe, h| judge(probe, h, &LagBounds::default()).retry_after;
        assert_eq!(retry(Primary, &blocked), Some(RETRY_AFTER_SECS));
        assert_eq!(retry(Primary, &standby), None, "waiting makes no primary");
        assert_eq!(retry(Replica, &rejoining), Some(RETRY_AFTER_SECS));
        assert_eq!(retry(Replica, &cut_off), Some(RETRY_AFTER_SECS));
        assert_eq!(retry(Liveness, &failed), None);
        assert_eq!(retry(Health, &failed), None);
        assert_eq!(retry(Replica, &primary), None);
    }

    #[test]
    fn in_async_commit_mode_no_standby_is_sync() {
        let mut standby = node("standby", true, 0, 0);
        standby.commit_mode = "async".into();
        standby.sync_state = "async".into();
        standby.eligible = true;
        assert_eq!(status(Probe::Sync, &standby, ""), 503);
        assert_eq!(status(Probe::Async, &standby, ""), 200);
    }
}
