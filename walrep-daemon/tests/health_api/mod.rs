//! The health probes (Patroni's routes) on each role and method, the
//! handover of `POST /promote` asked of the primary, `walrep switchover`
//! from either node, maintenance mode over HTTP and the CLI, and the
//! cluster view of `walrep status` with several nodes.

use super::{args, cli, health, json, req};
use crate::daemon_support::*;
use hyper::Method;
use walrep::Replicator;
use walrep_daemon::api::{ErrorReply, MaintenanceReply, ProbeReply};
use walrep_daemon::client::{HttpClient, Reply};

const PROBES: [&str; 10] = [
    "/health",
    "/primary",
    "/read-write",
    "/replica",
    "/read-only",
    "/sync",
    "/async",
    "/liveness",
    "/readiness",
    "/replica?lag=0&lag_records=0",
];

async fn ask(addr: &str, method: Method, path: &str) -> Reply {
    HttpClient::new(addr)
        .request(method.clone(), path, bytes::Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn retry_after(r: &Reply) -> Option<&str> {
    r.headers
        .get(hyper::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap())
}

/// Asks `path` with GET, HEAD and OPTIONS: the same status each time,
/// a body (the health report) only for GET, and `Retry-After` on all or
/// none. Returns the GET answer.
async fn probe(addr: &str, path: &str, want: u16) -> Reply {
    let get = ask(addr, Method::GET, path).await;
    assert_eq!(get.status, want, "GET {path} on {addr}: {:?}", get.body);
    let report: ProbeReply = json(&get.body);
    assert_eq!(
        report.reason.is_some(),
        want == 503,
        "a reason with each 503 only: {report:?}"
    );
    let head = ask(addr, Method::HEAD, path).await;
    assert_eq!(head.status, want, "HEAD {path} on {addr}");
    assert!(head.body.is_empty(), "HEAD {path} has no body");
    let options = ask(addr, Method::OPTIONS, path).await;
    assert_eq!(options.status, want, "OPTIONS {path} on {addr}");
    for other in [&head, &options] {
        assert_eq!(retry_after(other), retry_after(&get), "{path}");
    }
    get
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_answers_get_head_and_options_by_role() {
    let p = pair(&[]).await;
    let (a, b) = (p.a_http.as_str(), p.b_http.as_str());
    HttpClient::new(a).put("k", "v".into()).await.unwrap();
    // Caught up: the standby flushed the primary's last record.
    wait_health(b, "caught up", |h| {
        h.last_lsn == 1 && h.peer.lag_records == 0
    })
    .await;
    // In remote-flush the primary calls its standby in sync.
    let want: [(&str, u16, u16); 10] = [
        ("/health", 200, 200),
        ("/primary", 200, 503),
        ("/read-write", 200, 503),
        ("/replica", 503, 200),
        ("/read-only", 200, 200),
        ("/sync", 503, 200),
        ("/async", 503, 503),
        ("/liveness", 200, 200),
        ("/readiness", 200, 200),
        ("/replica?lag=0&lag_records=0", 503, 200),
    ];
    assert_eq!(want.map(|w| w.0), PROBES);
    for (path, on_primary, on_standby) in want {
        probe(a, path, on_primary).await;
        probe(b, path, on_standby).await;
    }
    // The standby is no primary, and waiting does not make it one.
    let r = probe(b, "/primary", 503).await;
    assert_eq!(retry_after(&r), None);
    let reason = json::<ProbeReply>(&r.body).reason.unwrap();
    assert!(reason.contains("standby"), "{reason}");
    // Bounds in bytes with a unit, in records, on the routes that take them.
    probe(b, "/read-only?lag=16MB", 200).await;
    probe(b, "/async?lag=1KiB", 503).await;
    probe(b, "/sync?lag_records=5", 200).await;
    probe(a, "/readiness?lag=0", 200).await;

    // Bad query strings are 400s saying what was wrong, whatever the method.
    for (path, says) in [
        ("/replica?lag=fast", "lag=\"fast\" is not a size"),
        ("/replica?lag=1TB", "lag=16MB"),
        ("/replica?max_lag=5", "unknown query parameter \"max_lag\""),
        ("/read-only?lag_records=-1", "lag_records=\"-1\""),
        ("/primary?lag=0", "/primary takes no lag bound"),
        ("/liveness?verbose", "/liveness takes none"),
    ] {
        for method in [Method::GET, Method::OPTIONS] {
            let r = ask(b, method.clone(), path).await;
            assert_eq!(r.status, 400, "{method} {path}");
            let e: ErrorReply = json(&r.body);
            assert!(e.error.contains(says), "{path}: {}", e.error);
        }
        assert_eq!(ask(b, Method::HEAD, path).await.status, 400, "HEAD {path}");
    }
}

/// `POST /promote` (and `walrep promote`) asked of the primary hands over
/// to its standby and names it; `walrep switchover` works asked of either
/// node and names the primary it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_on_the_primary_hands_over_and_switchover_works_from_either_node() {
    let p = pair(&[]).await;
    let (a, b) = (p.a_http.as_str(), p.b_http.as_str());
    HttpClient::new(a).put("before", "1".into()).await.unwrap();

    let (status, body) = req(a, Method::POST, "/promote", b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply = json::<walrep_daemon::api::PromoteReply>(&body);
    assert_eq!(reply.epoch, 2);
    // The primary asked handed over: the answer names the node that took
    // over, not the one asked.
    assert_eq!(
        (reply.node.as_str(), reply.primary.as_deref()),
        ("a", Some("b"))
    );
    wait_streaming(b, a).await;

    // `walrep promote` asked of the primary (b) says who took over (a).
    let out = cli(args(&["promote", "--addr", b])).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(b) handed over to its standby a") && stdout.contains("epoch 3"),
        "{stdout}"
    );
    wait_streaming(a, b).await;

    // --to naming a node the switchover would not promote: refused before
    // anything changes (exit 2), the primary (a) stays.
    for wrong in ["a", "z"] {
        let out = cli(args(&["switchover", "--addr", b, "--to", wrong])).await;
        assert_eq!(out.status.code(), Some(2), "--to {wrong}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is not the node this switchover would promote"),
            "{stderr}"
        );
    }
    // The node checks `to` itself on arrival (the CLI's check and the
    // request are two steps): 409, nothing changed.
    let (status, body) = req(b, Method::POST, "/promote?to=a", b"").await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let e: ErrorReply = json(&body);
    assert_eq!(e.kind.as_deref(), Some("promotion_refused"), "{e:?}");
    assert!(e.error.contains("the standby asked, b"), "{e:?}");
    let h = health(a).await;
    assert_eq!((h.role.as_str(), h.epoch), ("primary", 3), "{h:?}");

    // Asked of the standby (now b), --to naming it.
    let out = cli(args(&["switchover", "--addr", b, "--to", "b"])).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(b) is primary at epoch 4"), "{stdout}");
    wait_streaming(b, a).await;

    // `walrep switchover` asked of the primary (now b).
    let out = cli(args(&["switchover", "--addr", b])).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(b) handed over to its standby a") && stdout.contains("epoch 5"),
        "{stdout}"
    );
    wait_streaming(a, b).await;
    assert_eq!(
        HttpClient::new(b).get("before").await.unwrap().as_deref(),
        Some(&b"1"[..]),
        "nothing lost on the way"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_needs_the_token_and_shows_in_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "maintenance-token-0123456789abcdef";
    std::fs::write(&token_file, token).unwrap();
    let token_path = token_file.to_str().unwrap();
    let p = pair(&[("http_token_file", token_path)]).await;
    let b = p.b_http.as_str();

    for method in [Method::POST, Method::DELETE] {
        let r = ask(b, method.clone(), "/maintenance").await;
        assert_eq!(r.status, 401, "{method} /maintenance without the token");
    }
    let state: MaintenanceReply = json(&ask(b, Method::GET, "/maintenance").await.body);
    assert!(!state.failover_paused, "nothing changed");
    // The probes need no token, with OPTIONS too (HAProxy's check).
    assert_eq!(ask(b, Method::OPTIONS, "/replica").await.status, 200);

    let mut with_token = HttpClient::new(b).with_token(token);
    let r = with_token
        .request(Method::POST, "/maintenance?pause=yes", bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(json::<ErrorReply>(&r.body).error.contains("DELETE resumes"));

    let paused = with_token.set_maintenance(true).await.unwrap();
    assert_eq!(
        (
            paused.node_id.as_str(),
            paused.role.as_str(),
            paused.failover_paused
        ),
        ("b", "standby", true)
    );
    let h = wait_health(b, "paused", |h| h.failover_paused).await;
    assert_eq!(h.role, "standby");
    assert!(
        !p.a.replica.health().failover_paused,
        "the pause is per node"
    );
    let metric = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("walrep_failover_paused "))
            .map(|l| l.to_string())
    };
    let text = String::from_utf8(ask(b, Method::GET, "/metrics").await.body.to_vec()).unwrap();
    assert_eq!(metric(&text).as_deref(), Some("walrep_failover_paused 1"));

    // The CLI pauses every node named, with the token file.
    let a = p.a_http.as_str();
    let out = cli(args(&[
        "maintenance",
        "pause",
        "--addr",
        a,
        "--addr",
        b,
        "--http-token-file",
        token_path,
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("automatic failover paused")
            .count(),
        2
    );
    assert!(p.a.replica.health().failover_paused);
    let out = cli(args(&["maintenance", "resume", "--addr", b])).await;
    assert!(!out.status.success(), "no token: refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = cli(args(&[
        "maintenance",
        "resume",
        "--addr",
        b,
        "--http-token-file",
        token_path,
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let h = wait_health(b, "resumed", |h| !h.failover_paused).await;
    assert_eq!(h.role, "standby");
    let text = String::from_utf8(ask(b, Method::GET, "/metrics").await.body.to_vec()).unwrap();
    assert_eq!(metric(&text).as_deref(), Some("walrep_failover_paused 0"));
}

/// The real binary: a pause survives a restart; a standby paused for
/// maintenance whose primary is killed keeps following it, says why, and
/// takes over once resumed; the cluster view shows the dead node as
/// unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_standby_outlives_a_killed_primary_and_takes_over_when_resumed() {
    let mut p = proc_pair(&[]).await;
    let (n1, n2) = (p.n1.http.clone(), p.n2.http.clone());
    let out = cli(args(&[
        "maintenance",
        "pause",
        "--addr",
        &n1,
        "--addr",
        &n2,
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    // The pause is kept in the data directory: a restart keeps it.
    p.n2.kill();
    p.n2.spawn().unwrap();
    wait_streaming(&n1, &n2).await;
    assert!(health(&n2).await.failover_paused, "paused after a restart");
    HttpClient::new(&n1).put("k", "v".into()).await.unwrap();
    wait_health(&n2, "has the write", |h| h.flushed_lsn >= 1).await;

    p.n1.kill();
    let h = wait_health(&n2, "holding back for maintenance", |h| {
        h.note.as_deref().is_some_and(|n| n.contains("paused"))
    })
    .await;
    assert_eq!((h.role.as_str(), h.epoch), ("standby", 1), "{h:?}");
    assert!(h.eligible, "it could promote: only the pause holds it back");
    // Waiting can bring the stream back: Retry-After.
    let r = probe(&n2, "/replica", 503).await;
    assert_eq!(retry_after(&r), Some("1"));
    probe(&n2, "/liveness", 200).await;
    probe(&n2, "/readiness", 503).await;

    let out = cli(args(&["status", "--addr", &n1, "--addr", &n2])).await;
    assert!(out.status.success(), "one node answers: {out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].starts_with("NODE") && rows[0].contains("PAUSED"),
        "{table}"
    );
    assert!(
        rows[1].contains(&n1) && rows[1].contains("UNREACHABLE"),
        "{table}"
    );
    assert!(
        rows[2].starts_with("n2")
            && rows[2].contains("standby")
            && rows[2].contains(" sync ")
            && rows[2].contains("yes"),
        "{table}"
    );

    let out = cli(args(&["maintenance", "resume", "--addr", &n2])).await;
    assert!(out.status.success(), "{out:?}");
    let h = wait_health(&n2, "promoted", is_writable_primary).await;
    assert_eq!(h.epoch, 2);
    assert!(!h.failover_paused);
    assert!(
        !p.n2
            .data_dir
            .join(walrep_daemon::maintenance::FILE_NAME)
            .exists(),
        "resuming removes the file"
    );
    assert_eq!(
        HttpClient::new(&n2).get("k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_several_nodes_prints_one_table_of_the_pair() {
    let p = pair(&[]).await;
    let (a, b) = (p.a_http.as_str(), p.b_http.as_str());
    HttpClient::new(a).put("k", "v".into()).await.unwrap();
    wait_health(b, "caught up", |h| h.applied_lsn == 1).await;
    let out = cli(args(&["status", "--addr", a, "--addr", b])).await;
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0][..13],
        [
            "NODE", "ADDR", "ROLE", "EPOCH", "FIRST", "LAST", "COMMIT", "APPLIED", "LAG", "SYNC",
            "ELIGIBLE", "ARBITER", "PAUSED"
        ],
        "{table}"
    );
    assert_eq!(
        rows[1][..8],
        ["a", a, "primary", "1", "1", "1", "1", "1"],
        "{table}"
    );
    assert_eq!(
        rows[2][..8],
        ["b", b, "standby", "1", "1", "1", "1", "1"],
        "{table}"
    );
    assert!(table.lines().nth(2).unwrap().contains(" sync "), "{table}");

    let out = cli(args(&["status", "--json", "--addr", a, "--addr", b])).await;
    let list: Vec<serde_json::Value> = json(&out.stdout);
    assert_eq!(list[0]["health"]["role"], "primary");
    assert_eq!(list[1]["health"]["role"], "standby");

    let dead = [free_ports(1)[0], free_ports(1)[0]].map(|p| format!("127.0.0.1:{p}"));
    let out = cli(args(&["status", "--addr", &dead[0], "--addr", &dead[1]])).await;
    assert_eq!(out.status.code(), Some(1), "no node answers: {out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.matches("UNREACHABLE").count(), 2, "{table}");
    assert!(table.contains("cannot reach walrep"), "{table}");
}

mod grpc;
