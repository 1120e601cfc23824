//! The `walrep` daemon: its HTTP API on nodes in this process, and the
//! real binary as processes for configuration errors, crashes, pauses,
//! signals, the CLI and the demo.

mod daemon_support;
#[path = "health_api/mod.rs"]
mod health_api;
#[path = "operations/mod.rs"]
mod operations;
#[path = "trust/mod.rs"]
mod trust;
#[path = "witness/mod.rs"]
mod witness;

use daemon_support::*;
use hyper::Method;
use std::time::{Duration, Instant};
use walrep_daemon::api::{ErrorReply, HealthReport, WriteReply};
use walrep_daemon::client::HttpClient;
use walrep_daemon::pair::{Flags, NodeSpec, Pair as ProcessPair, node_flags};

async fn req(addr: &str, method: Method, path: &str, body: &[u8]) -> (u16, bytes::Bytes) {
    let r = HttpClient::new(addr)
        .request(method.clone(), path, bytes::Bytes::copy_from_slice(body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, r.body)
}

/// The status line and headers of `request_line` (e.g. `PUT /kv/k`, with a
/// one-byte body) sent to `addr` over a fresh connection.
async fn raw_head(addr: &str, request_line: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{request_line} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nv"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.find("\r\n\r\n") {
        Some(end) => text[..end + 2].to_string(),
        None => text,
    }
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> T {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

async fn health(addr: &str) -> HealthReport {
    HttpClient::new(addr).health().await.unwrap().1
}

// ------------------------------------------------------------- HTTP API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_is_200_with_lsn_and_epoch_and_get_reads_on_both_roles() {
    let p = pair(&[]).await;
    let (status, body) = req(&p.a_http, Method::PUT, "/kv/greeting", b"hello").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let w: WriteReply = json(&body);
    assert_eq!((w.lsn, w.epoch), (1, 1));

    let (status, body) = req(&p.a_http, Method::GET, "/kv/greeting", b"").await;
    assert_eq!((status, &body[..]), (200, &b"hello"[..]));
    wait_health(&p.b_http, "applied 1", |h| h.applied_lsn >= 1).await;
    let (status, body) = req(&p.b_http, Method::GET, "/kv/greeting", b"").await;
    assert_eq!(
        (status, &body[..]),
        (200, &b"hello"[..]),
        "read on the standby"
    );

    for addr in [&p.a_http, &p.b_http] {
        let (status, body) = req(addr, Method::GET, "/kv/absent", b"").await;
        assert_eq!(status, 404);
        assert!(json::<ErrorReply>(&body).error.contains("not found"));
    }

    let (status, body) = req(&p.a_http, Method::DELETE, "/kv/greeting", b"").await;
    assert_eq!(status, 200);
    assert_eq!(json::<WriteReply>(&body).lsn, 2);
    let (status, _) = req(&p.a_http, Method::GET, "/kv/greeting", b"").await;
    assert_eq!(status, 404);

    // Keys travel percent-encoded.
    let mut c = HttpClient::new(&p.a_http);
    c.put("a key/with ünicode?", "v".into()).await.unwrap();
    assert_eq!(
        c.get("a key/with ünicode?").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_the_standby_are_503_naming_the_primarys_http_address() {
    let p = pair(&[]).await;
    for method in [Method::PUT, Method::DELETE] {
        let (status, body) = req(&p.b_http, method.clone(), "/kv/k", b"v").await;
        assert_eq!(status, 503, "{method}");
        let e: ErrorReply = json(&body);
        assert_eq!(e.leader.as_deref(), Some(p.a_http.as_str()), "{e:?}");
        assert!(e.error.contains("not the primary"), "{e:?}");
        assert_eq!(e.kind.as_deref(), Some("not_primary"), "{e:?}");
    }
    // Nothing was written, so a load balancer may resend it: 503 with
    // Retry-After (what HAProxy's `retry-on 503` resends).
    let head = raw_head(&p.b_http, "PUT /kv/k").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{head}"
    );
    assert_eq!(health(&p.b_http).await.last_lsn, 0, "nothing written");
    let err = HttpClient::new(&p.b_http)
        .put("k", "v".into())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&p.a_http), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_retried_with_its_idempotency_key_is_applied_once() {
    let p = pair(&[]).await;
    let mut c = HttpClient::new(&p.a_http);
    let first = c.put_once("k", "first".into(), "order-1").await.unwrap();
    assert_eq!((first.lsn, first.deduplicated), (1, false));
    // The retry (even with another value) returns the first write's place
    // and writes nothing.
    let retry = c.put_once("k", "second".into(), "order-1").await.unwrap();
    assert_eq!((retry.lsn, retry.epoch, retry.deduplicated), (1, 1, true));
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"first"[..]));
    let other = c.delete_once("k", "order-2").await.unwrap();
    assert_eq!((other.lsn, other.deduplicated), (2, false));
    // A key that cannot be one is refused, naming why.
    let err = c.put_once("k", "v".into(), "a b").await.unwrap_err();
    assert!(err.to_string().contains("Idempotency-Key"), "{err}");
    assert_eq!(health(&p.a_http).await.last_lsn, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_and_writes_nothing() {
    let p = pair(&[("max_record_bytes", "4096")]).await;
    let long_key = "k".repeat(walrep_daemon::http::MAX_KEY_BYTES + 1);
    let cases: Vec<(Method, String, Vec<u8>)> = vec![
        (Method::PUT, "/kv/".into(), b"v".to_vec()),
        (Method::PUT, "/kv".into(), b"v".to_vec()),
        (Method::DELETE, "/kv/".into(), vec![]),
        (Method::GET, "/kv/".into(), vec![]),
        (Method::PUT, format!("/kv/{long_key}"), b"v".to_vec()),
        // Over the record limit as a body...
        (Method::PUT, "/kv/big".into(), vec![b'x'; 5000]),
        // ...and as a record (key + value + framing) though the body fits.
        (Method::PUT, "/kv/bigger-key".into(), vec![b'x'; 4096]),
        (Method::PUT, "/kv/%FF".into(), b"not utf-8 key".to_vec()),
    ];
    for (method, path, body) in cases {
        let (status, reply) = req(&p.a_http, method.clone(), &path, &body).await;
        assert_eq!(status, 400, "{method} {path}");
        let e: ErrorReply = json(&reply);
        assert!(e.error.contains("nothing was written"), "{e:?}");
    }
    let h = health(&p.a_http).await;
    assert_eq!(h.last_lsn, 0, "bad input wrote something: {h:?}");
    // The largest value that fits is accepted.
    let (status, _) = req(&p.a_http, Method::PUT, "/kv/k", &vec![b'x'; 4096 - 6]).await;
    assert_eq!(status, 200);
}

/// With an HTTP token, writes and promotions without it are 401 and change
/// nothing; with it they work; reads and probes stay open; the CLI sends
/// it from --http-token-file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_promotions_need_the_http_token_and_reads_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "s3cret-token-of-32-characters-xx";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let path = token_file.to_str().unwrap();
    let p = pair(&[("http_token_file", path)]).await;

    let refused: Vec<(Method, &str)> = vec![
        (Method::PUT, "/kv/k"),
        (Method::DELETE, "/kv/k"),
        (Method::POST, "/promote?force=true"),
    ];
    for (method, path) in &refused {
        for addr in [&p.a_http, &p.b_http] {
            let (status, reply) = req(addr, method.clone(), path, b"v").await;
            assert_eq!(status, 401, "{method} {path} on {addr}");
            let e: ErrorReply = json(&reply);
            assert!(e.error.contains("Authorization: Bearer"), "{e:?}");
        }
    }
    let wrong = HttpClient::new(&p.a_http)
        .with_token("s3cret-token-of-32-characters-xy")
        .request(Method::PUT, "/kv/k", bytes::Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(wrong.status, 401, "a wrong token was accepted");
    let right = HttpClient::new(&p.b_http)
        .with_token(token)
        .request(Method::PUT, "/kv/k", bytes::Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(
        right.status, 503,
        "with the token, the standby answers as a standby"
    );
    let (a, b) = (health(&p.a_http).await, health(&p.b_http).await);
    assert_eq!((a.last_lsn, a.role.as_str(), a.epoch), (0, "primary", 1));
    assert_eq!((b.role.as_str(), b.epoch), ("standby", 1));
    for path in ["/health", "/primary", "/replica", "/metrics", "/kv/k"] {
        let (status, _) = req(&p.b_http, Method::GET, path, b"").await;
        assert_ne!(status, 401, "GET {path} needs no token");
    }
    let (metrics, _) = scrape(&p.a_http).await;
    assert!(
        metrics.contains("reason=\"unauthorized\""),
        "401s are counted"
    );

    let out = cli(args(&[
        "put",
        "k",
        "v",
        "--addr",
        &p.a_http,
        "--http-token-file",
        path,
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(args(&["put", "k2", "v", "--addr", &p.a_http])).await;
    assert!(!out.status.success(), "a put without the token succeeded");
    assert_eq!(health(&p.a_http).await.last_lsn, 1);
}

/// The HTTP port's bounds: beyond `http_max_connections` a connection is
/// closed on arrival while the open ones go on writing and replication
/// goes on; idle connections are closed after `http_idle_timeout_ms`; a
/// request whose body stalls gets 408 after `http_request_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_capped_and_idle_or_slow_ones_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pair(&[
        ("http_max_connections", "4"),
        ("http_idle_timeout_ms", "2000"),
        ("http_request_timeout_ms", "3000"),
    ])
    .await;
    let connect = || tokio::net::TcpStream::connect(p.a_http.clone());
    // Reads until the server closes the connection; what it sent first.
    async fn until_closed(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .expect("the server closed the connection");
        String::from_utf8_lossy(&buf).into_owned()
    }

    // A writer with its connection open, then three idle connections: the
    // cap is reached.
    let mut writer = HttpClient::new(&p.a_http);
    writer.put("w0", "v".into()).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect().await.unwrap());
    }
    let mut beyond = connect().await.unwrap();
    // A request on it gets no answer: the node closed it on arrival.
    let _ = beyond
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert_eq!(until_closed(&mut beyond).await, "", "served beyond the cap");
    // The writer's connection goes on, and so does replication.
    for i in 1..=5 {
        writer.put(&format!("w{i}"), "v".into()).await.unwrap();
    }
    wait_health(&p.b_http, "replicated during the cap", |h| h.last_lsn >= 6).await;

    // Idle connections are closed by the node, which frees their slots.
    for s in &mut idle {
        assert_eq!(until_closed(s).await, "");
    }
    let (metrics, m) = scrape(&p.a_http).await;
    assert!(
        http_refusals(&m, "connection_limit") >= 1.0,
        "refusal counted:\n{metrics}"
    );
    // A body that stalls: 408, and nothing written.
    let mut slow = connect().await.unwrap();
    slow.write_all(b"PUT /kv/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let answer = until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(health(&p.a_http).await.last_lsn, 6);

    // Headers above 64 KiB are refused, not buffered.
    let mut large = connect().await.unwrap();
    let padding = "x".repeat(100 << 10);
    let _ = large
        .write_all(
            format!("GET /health HTTP/1.1\r\nhost: x\r\nx-pad: {padding}\r\n\r\n").as_bytes(),
        )
        .await;
    let answer = until_closed(&mut large).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A client that sends requests and never reads the answers: once the
    // answers fill the socket's buffers the node's writes make no
    // progress, and after http_request_timeout_ms it closes the
    // connection (counted), instead of holding its slot for ever.
    let (mut from_node, mut to_node) = connect().await.unwrap().into_split();
    let flood = tokio::spawn(async move {
        let request = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
        for _ in 0..1000 {
            if to_node.write_all(&request).await.is_err() {
                return;
            }
        }
    });
    wait_for_refusal(&p.a_http, "response_unread").await;
    // Closed (or reset): what the buffers held, then the end.
    let mut taken = Vec::new();
    let read = tokio::time::timeout(WAIT, from_node.read_to_end(&mut taken)).await;
    assert!(read.is_ok(), "the connection stayed open");
    flood.abort();
}

/// How many HTTP refusals `scrape` counts for `reason` (every reason is
/// exported from 0).
fn http_refusals(scrape: &prometheus_parse::Scrape, reason: &str) -> f64 {
    let labels = [("api", "http"), ("reason", reason)];
    sample(scrape, "walrep_rejected_requests_total", &labels)
        .or_else(|| sample(scrape, "walrep_rejected_requests", &labels))
        .unwrap_or(0.0)
}

/// Scrapes `addr`'s metrics until an HTTP refusal for `reason` is counted.
async fn wait_for_refusal(addr: &str, reason: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, m) = scrape(addr).await;
        if http_refusals(&m, reason) >= 1.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTP refusal counted as {reason} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_above_the_write_budget_is_refused_and_smaller_ones_wait_their_turn() {
    let p = pair(&[("http_write_budget_bytes", "65536")]).await;
    let (status, reply) = req(&p.a_http, Method::PUT, "/kv/big", &vec![b'x'; 70_000]).await;
    assert_eq!(status, 400);
    let e: ErrorReply = json(&reply);
    assert!(
        e.error
            .contains("more than http_write_budget_bytes (65536)")
            && e.error.contains("nothing was written"),
        "{e:?}"
    );
    assert_eq!(
        health(&p.a_http).await.last_lsn,
        0,
        "the refused write was written"
    );
    assert_eq!(req(&p.a_http, Method::GET, "/kv/big", b"").await.0, 404);
    // Writes that fit the budget one at a time but not together wait for
    // each other's room instead of being refused.
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let addr = p.a_http.clone();
            tokio::spawn(async move {
                req(
                    &addr,
                    Method::PUT,
                    &format!("/kv/w{i}"),
                    &vec![b'x'; 60_000],
                )
                .await
            })
        })
        .collect();
    for w in writers {
        let (status, reply) = w.await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    }
    assert_eq!(health(&p.a_http).await.last_lsn, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_replica_endpoints_follow_the_roles() {
    let p = pair(&[]).await;
    assert_eq!(req(&p.a_http, Method::GET, "/primary", b"").await.0, 200);
    assert_eq!(req(&p.a_http, Method::GET, "/replica", b"").await.0, 503);
    assert_eq!(req(&p.b_http, Method::GET, "/primary", b"").await.0, 503);
    assert_eq!(req(&p.b_http, Method::GET, "/replica", b"").await.0, 200);

    // A planned switchover over HTTP swaps them.
    let epoch = HttpClient::new(&p.b_http).promote(false).await.unwrap();
    assert_eq!(epoch, 2);
    wait_health(&p.a_http, "a standby receiving the stream", |h| {
        h.role == "standby" && h.peer.connected
    })
    .await;
    assert_eq!(req(&p.b_http, Method::GET, "/primary", b"").await.0, 200);
    assert_eq!(req(&p.a_http, Method::GET, "/primary", b"").await.0, 503);
    assert_eq!(req(&p.a_http, Method::GET, "/replica", b"").await.0, 200);
    let (status, body) = req(&p.a_http, Method::PUT, "/kv/k", b"v").await;
    assert_eq!(status, 503);
    assert_eq!(
        json::<ErrorReply>(&body).leader.as_deref(),
        Some(p.b_http.as_str())
    );
    assert_eq!(req(&p.b_http, Method::PUT, "/kv/k", b"v").await.0, 200);
    wait_health(&p.a_http, "a in sync again", is_streaming_standby).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_every_documented_field() {
    let p = pair(&[]).await;
    HttpClient::new(&p.a_http)
        .put("k", "v".into())
        .await
        .unwrap();
    wait_health(&p.b_http, "applied", |h| h.applied_lsn == 1).await;
    for (addr, role) in [(&p.a_http, "primary"), (&p.b_http, "standby")] {
        let (status, body) = req(addr, Method::GET, "/health", b"").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = json(&body);
        for field in [
            "node_id",
            "role",
            "epoch",
            "last_lsn",
            "commit_lsn",
            "applied_lsn",
            "state_hash",
            "writable",
            "solo",
            "commit_mode",
            "leader",
            "peer",
        ] {
            assert!(v.get(field).is_some(), "{role}: no {field} in {v}");
        }
        for field in ["connected", "lag_records", "lag_seconds", "last_contact_ms"] {
            assert!(
                v["peer"].get(field).is_some(),
                "{role}: no peer.{field} in {v}"
            );
        }
        assert_eq!(v["role"], role);
        assert_eq!(v["epoch"], 1);
        assert_eq!(v["commit_mode"], "remote-flush");
        assert_eq!(v["leader"], p.a_http.as_str());
        assert_eq!(v["writable"], role == "primary");
        assert_eq!(v["solo"], false);
        assert_eq!(v["peer"]["connected"], true);
        let hash = v["state_hash"].as_str().unwrap();
        assert!(
            hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{hash}"
        );
    }
    let (a, b) = (health(&p.a_http).await, health(&p.b_http).await);
    assert_eq!(a.state_hash, b.state_hash);
    assert_eq!((a.node_id.as_str(), b.node_id.as_str()), ("a", "b"));
}

/// Value of the sample `name` with labels `labels`, from a parsed scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

async fn scrape(addr: &str) -> (String, prometheus_parse::Scrape) {
    let (status, body) = req(addr, Method::GET, "/metrics", b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    (text, parsed)
}

/// The strict OpenMetrics parser of Python's `prometheus_client`, when
/// python3 is there. The package is installed with pip into the target
/// directory if python cannot import it. Returns false, saying why, when
/// it cannot run.
fn strict_openmetrics_parse(text: &str) -> bool {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let pylib = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pylib");
    let python = || {
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", &pylib);
        cmd
    };
    let ok = |mut cmd: Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let import = ["-c", "import prometheus_client.openmetrics.parser"];
    let mut version = python();
    version.arg("--version");
    if !ok(version) {
        eprintln!("SKIPPED the strict OpenMetrics check: python3 is not installed");
        return false;
    }
    let mut check = python();
    check.args(import);
    if !ok(check) {
        let mut pip = python();
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&pylib)
        .arg("prometheus-client");
        let _ = ok(pip);
        let mut check = python();
        check.args(import);
        if !ok(check) {
            eprintln!(
                "SKIPPED the strict OpenMetrics check: python's prometheus-client is not installed and pip could not install it"
            );
            return false;
        }
    }
    let script = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
families = list(text_string_to_metric_families(sys.stdin.read()))\n\
print(len(families))\n";
    let mut child = python()
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_tell_the_roles_apart() {
    let p = pair(&[]).await;
    write_all(&p.a_http, "k", 5).await;
    // A refused write on the standby is counted there.
    assert_eq!(req(&p.b_http, Method::PUT, "/kv/x", b"v").await.0, 503);
    wait_health(&p.b_http, "applied", |h| h.applied_lsn == 5).await;
    wait_health(&p.a_http, "heartbeat rtt known", |h| {
        h.peer.heartbeat_rtt_ms.is_some()
    })
    .await;

    let (text, a) = scrape(&p.a_http).await;
    for name in [
        "walrep_is_primary",
        "walrep_epoch",
        "walrep_heartbeat_errors_total",
        "walrep_heartbeat_rtt_seconds",
        "walrep_replication_lag_records",
        "walrep_replication_lag_bytes",
        "walrep_replication_lag_seconds",
        "walrep_wal_last_lsn",
        "walrep_commit_latency_seconds",
        "walrep_rewound_records_total",
        "walrep_solo_episodes_total",
        "walrep_step_gap_max_seconds",
    ] {
        assert!(sample(&a, name, &[]).is_some(), "no {name} in\n{text}");
    }
    assert!(text.contains("# TYPE walrep_commit_latency_seconds histogram"));
    // The classic text format (no Accept header): counters are announced
    // by their samples' names. No role change yet on a fresh pair: every
    // pair of roles is there, at 0.
    assert!(text.contains("# TYPE walrep_state_transitions_total counter"));
    assert!(text.contains("# TYPE walrep_rejected_requests_total counter"));
    assert_eq!(
        sample(
            &a,
            "walrep_state_transitions_total",
            &[("from", "promoting"), ("to", "primary")]
        ),
        Some(0.0)
    );
    assert_eq!(sample(&a, "walrep_solo_episodes_total", &[]), Some(0.0));
    assert_eq!(sample(&a, "walrep_is_primary", &[]), Some(1.0));
    assert_eq!(sample(&a, "walrep_epoch", &[]), Some(1.0));
    assert_eq!(sample(&a, "walrep_wal_last_lsn", &[]), Some(5.0));
    assert_eq!(sample(&a, "walrep_commit_latency_seconds", &[]), Some(5.0));
    assert!(sample(&a, "walrep_heartbeat_rtt_seconds", &[]).unwrap() > 0.0);
    // The node has stepped more than once: its longest gap is measured.
    assert!(sample(&a, "walrep_step_gap_max_seconds", &[]).unwrap() > 0.0);
    assert_eq!(sample(&a, "walrep_role", &[("role", "primary")]), Some(1.0));
    assert_eq!(sample(&a, "walrep_role", &[("role", "standby")]), Some(0.0));

    let (text_b, b) = scrape(&p.b_http).await;
    assert_eq!(sample(&b, "walrep_is_primary", &[]), Some(0.0));
    assert_eq!(sample(&b, "walrep_wal_last_lsn", &[]), Some(5.0));
    assert_eq!(
        sample(
            &b,
            "walrep_rejected_requests_total",
            &[("api", "http"), ("reason", "not_primary")]
        ),
        Some(1.0),
        "{text_b}"
    );
    assert_eq!(sample(&b, "walrep_commit_latency_seconds", &[]), Some(0.0));

    let openmetrics = "application/openmetrics-text; version=1.0.0";
    let (_, om_a) = operations::scrape_as(&p.a_http, Some(openmetrics)).await;
    let (_, om_b) = operations::scrape_as(&p.b_http, Some(openmetrics)).await;
    if strict_openmetrics_parse(&om_a) {
        strict_openmetrics_parse(&om_b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_write_the_lost_standby_never_confirms_is_504_in_block_mode() {
    let p = pair(&[("on_standby_loss", "block")]).await;
    write_all(&p.a_http, "k", 3).await;
    let Pair { a, b, a_http, .. } = p;
    b.shutdown().await;
    let started = Instant::now();
    let (status, body) = req(&a_http, Method::PUT, "/kv/alone", b"v").await;
    let e: ErrorReply = json(&body);
    // Appended and durable here but never confirmed: its outcome is
    // unknown, so 504, which no load balancer resends on its own (or, if
    // the loss was noticed first, refused on arrival: 503, nothing written).
    assert!(
        matches!(
            (status, e.kind.as_deref()),
            (504, Some("sync_timeout")) | (503, Some("unavailable"))
        ),
        "{status} {e:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(SYNC_TIMEOUT_MS / 2));
    // The write timed out on its own clock; the primary stops accepting
    // writes once its heartbeats have failed for sync_timeout too.
    wait_health(&a_http, "writes refused", |h| !h.writable).await;
    assert_eq!(req(&a_http, Method::GET, "/primary", b"").await.0, 503);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_persists_a_kv_snapshot_every_snapshot_records() {
    let p = pair(&[("snapshot_records", "10")]).await;
    let snapshot = |node: &str| p.dir.path().join(node).join("kv").join("kv.snapshot");
    assert!(!snapshot("a").exists());
    write_all(&p.a_http, "k", 25).await;
    wait_health(&p.b_http, "applied", |h| h.applied_lsn == 25).await;
    let deadline = Instant::now() + WAIT;
    while !(snapshot("a").exists() && snapshot("b").exists()) {
        assert!(Instant::now() < deadline, "no snapshot after 25 records");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Written by the node while it runs: it says which LSN it covers.
    let lsn = |node: &str| {
        let bytes = std::fs::read(snapshot(node)).unwrap();
        u64::from_le_bytes(bytes[..8].try_into().unwrap())
    };
    assert!(
        lsn("a") >= 10 && lsn("b") >= 10,
        "{} {}",
        lsn("a"),
        lsn("b")
    );
}

// ------------------------------------------------------ the real binary

/// Runs the binary to completion, killing it if it outlives `WAIT * 3`.
fn run_bin(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_ref())).collect();
    run_bin_os(args, &env)
}

/// `run_bin` with values that need not be UTF-8.
fn run_bin_os(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("walrep runs");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + WAIT * 3;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "walrep {args:?} did not finish within {:?}; stderr: {}",
                WAIT * 3,
                String::from_utf8_lossy(&err_reader.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

#[test]
fn a_bad_setting_is_refused_by_name_with_exit_2_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = free_ports(4);
    // Without the timing flags and the commit mode: the environment (or
    // the file) gives them.
    let spec = NodeSpec {
        id: "n1",
        peer_id: "n2",
        role: "primary",
        grpc: p[0],
        http: p[1],
        peer: format!("127.0.0.1:{}", p[2]),
    };
    let flags: Flags = node_flags(&test_options(&[]), &data, &spec)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("_ms") && *k != "commit_mode")
        .collect();
    let args = walrep_daemon::process::node_args(&flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let out = run_bin(&args, &[("WALREP_HEARTBEAT_MS", "soon")]);
    let stderr = refused_as_bad_input(&out);
    assert!(
        stderr.contains("invalid value for heartbeat_ms (from WALREP_HEARTBEAT_MS)"),
        "{stderr}"
    );
    assert!(!data.exists(), "the data dir was created");

    // A variable that is not UTF-8: another program's is skipped (it made
    // the process panic), one of walrep's is refused by name; a
    // misspelled one is warned of with the setting it may mean.
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"\xff");
    let soon = std::ffi::OsStr::new("soon");
    let out = run_bin_os(
        &args,
        &[
            ("SOME_OTHER_PROGRAMS", not_utf8),
            ("WALREP_FAILOVER_TIMEOUT", std::ffi::OsStr::new("3000")),
            ("WALREP_HEARTBEAT_MS", soon),
        ],
    );
    let stderr = refused_as_bad_input(&out);
    assert!(
        stderr.contains("invalid value for heartbeat_ms"),
        "{stderr}"
    );
    assert!(
        stderr.contains("WALREP_FAILOVER_TIMEOUT names no setting")
            && stderr.contains("did you mean WALREP_FAILOVER_TIMEOUT_MS"),
        "{stderr}"
    );
    let out = run_bin_os(&args, &[("WALREP_HEARTBEAT_MS", not_utf8)]);
    let stderr = refused_as_bad_input(&out);
    assert!(
        stderr.contains("WALREP_HEARTBEAT_MS is not valid UTF-8"),
        "{stderr}"
    );
    assert!(!data.exists(), "the data dir was created");

    // A flag wins over the environment, and the library's own check names
    // the setting.
    let mut bad = args.clone();
    bad.extend(["--failover-timeout-ms", "60"]);
    let out = run_bin(&bad, &[("WALREP_FAILOVER_TIMEOUT_MS", "5000")]);
    let stderr = refused_as_bad_input(&out);
    assert!(
        stderr.contains("failover_timeout_ms from --failover-timeout-ms"),
        "{stderr}"
    );
    assert!(!data.exists());

    // The environment wins over the file.
    let file = dir.path().join("walrep.toml");
    std::fs::write(&file, "commit_mode = \"remote-apply\"\n").unwrap();
    let mut with_file = args.clone();
    with_file.extend(["--config", file.to_str().unwrap()]);
    let out = run_bin(&with_file, &[("WALREP_COMMIT_MODE", "eventually")]);
    let stderr = refused_as_bad_input(&out);
    assert!(
        stderr.contains("invalid value for commit_mode (from WALREP_COMMIT_MODE)"),
        "{stderr}"
    );
    assert!(!data.exists());
}

/// A data dir remembers whose it is, and a node never takes itself for
/// its peer: both refuse to start with exit 2 and touch nothing.
#[test]
fn a_data_dir_of_another_cluster_or_a_peer_that_is_the_node_itself_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = free_ports(3);
    let spec = |peer: u16| NodeSpec {
        id: "n1",
        peer_id: "n2",
        role: "primary",
        grpc: p[0],
        http: p[1],
        peer: format!("127.0.0.1:{peer}"),
    };
    let start = |spec: &NodeSpec, cluster_id: &str| {
        let flags: Flags = node_flags(&test_options(&[]), &data, spec)
            .into_iter()
            .map(|(k, v)| match k {
                "cluster_id" => (k, cluster_id.to_string()),
                _ => (k, v),
            })
            .collect();
        let args = walrep_daemon::process::node_args(&flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_bin(&args, &[])
    };

    let out = start(&spec(p[0]), "walrep");
    let stderr = refused_as_bad_input(&out);
    assert!(stderr.contains("own replication listener"), "{stderr}");
    assert!(!data.exists(), "the data dir was created");

    let n1_dir = data.join("n1");
    std::fs::create_dir_all(&n1_dir).unwrap();
    let ours = walrep_daemon::identity::Identity {
        cluster_id: "walrep".into(),
        node_id: "n1".into(),
    };
    walrep_daemon::identity::check_or_write(&n1_dir, &ours).unwrap();
    let out = start(&spec(p[2]), "beta");
    let stderr = refused_as_bad_input(&out);
    assert!(
        stderr.contains("belongs to cluster \"walrep\"") && stderr.contains("\"beta\""),
        "{stderr}"
    );
    assert!(!n1_dir.join("wal").exists(), "the WAL was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_primary_fails_over_and_the_old_primary_rejoins() {
    let mut p = proc_pair(&[]).await;
    let mut acked = write_all(&p.n1.http, "k", 200).await;

    let killed = Instant::now();
    p.n1.kill();
    wait_health(&p.n2.http, "writable primary", is_writable_primary).await;
    let took = killed.elapsed();
    let limit = Duration::from_millis(FAILOVER_MS) + Duration::from_secs(3);
    assert!(took < limit, "failover took {took:?}");
    let h = health(&p.n2.http).await;
    assert_eq!(h.epoch, 2);
    assert_eq!(req(&p.n2.http, Method::GET, "/primary", b"").await.0, 200);
    assert_eq!(req(&p.n2.http, Method::GET, "/replica", b"").await.0, 503);
    let (text, m) = scrape(&p.n2.http).await;
    assert_eq!(sample(&m, "walrep_is_primary", &[]), Some(1.0));
    assert_eq!(sample(&m, "walrep_epoch", &[]), Some(2.0));
    // One series per pair of roles, each from 0: the promotion counts in
    // one of those into primary.
    let into_primary: f64 = m
        .samples
        .iter()
        .filter(|s| {
            s.metric == "walrep_state_transitions_total" && s.labels.get("to") == Some("primary")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(into_primary, 1.0, "one transition to primary:\n{text}");
    acked.extend(write_all(&p.n2.http, "after", 100).await);

    // The old primary, restarted with its original flags (--role primary
    // included), rejoins as a standby.
    p.n1.spawn().expect("n1 restarts");
    let target = health(&p.n2.http).await.last_lsn;
    let h1 = wait_health(&p.n1.http, "caught-up standby", |h| {
        h.role == "standby" && h.peer.connected && h.applied_lsn >= target
    })
    .await;
    assert_eq!(h1.epoch, 2);
    assert_eq!(req(&p.n1.http, Method::GET, "/replica", b"").await.0, 200);
    assert_eq!(req(&p.n1.http, Method::GET, "/primary", b"").await.0, 503);
    assert_all_readable(&p.n2.http, &acked).await;
    let h2 = health(&p.n2.http).await;
    assert_eq!(h1.state_hash, h2.state_hash);
    assert_eq!(h2.applied_lsn, target);
}

/// `walrep put --idempotency-key` run again after a failover, at the new
/// primary: the record the old primary replicated carries the key's id,
/// so the second run is recognised and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_retried_with_its_idempotency_key_after_a_failover_applies_once() {
    let mut p = proc_pair(&[]).await;
    let (n1, n2) = (p.n1.http.clone(), p.n2.http.clone());
    let put = |addr: &str, value: &str| {
        args(&[
            "put",
            "k",
            value,
            "--addr",
            addr,
            "--idempotency-key",
            "order-7",
            "--retry-for",
            "10",
        ])
    };
    let out = cli(put(&n1, "v1")).await;
    assert!(out.status.success(), "{out:?}");
    wait_health(&n2, "applied 1", |h| h.applied_lsn >= 1).await;
    p.n1.kill();
    wait_health(&n2, "writable primary", is_writable_primary).await;

    let out = cli(put(&n2, "v2")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("lsn 1 epoch 1") && stdout.contains("already written"),
        "{stdout}"
    );
    let value = HttpClient::new(&n2).get("k").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"v1"[..]));

    // A key with a control character (a CRLF file's \r) cannot go in a
    // header: said so, exit 1, no panic.
    let out = cli(args(&[
        "put",
        "k2",
        "v",
        "--addr",
        &n2,
        "--idempotency-key",
        "order-8\r",
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("control characters"), "{stderr}");
}

/// `--retry-for` bounds the whole write, each attempt included: against a
/// node that accepts connections and never answers, no attempt waits the
/// client's usual 30 s. A span that is not a number of seconds from 0 to
/// a day is bad input (exit 2), not a failure or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_retrying_for_a_while_bounds_each_attempt_by_it() {
    // The kernel completes connections into the backlog; nobody answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = cli(args(&[
        "put",
        "k",
        "v",
        "--addr",
        &addr,
        "--retry-for",
        "1",
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("no answer within"), "{stderr}");
    assert!(
        !stderr.contains("30s"),
        "an attempt outlasted --retry-for: {stderr}"
    );
    for span in ["1e19", "-1", "NaN"] {
        let out = cli(args(&[
            "put",
            "k",
            "v",
            "--addr",
            &addr,
            &format!("--retry-for={span}"),
        ]))
        .await;
        let stderr = refused_as_bad_input(&out);
        assert!(stderr.contains("--retry-for"), "{span}: {stderr}");
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_refuses_writes_once_it_learns_the_new_epoch() {
    let p = proc_pair(&[]).await;
    let mut acked = write_all(&p.n1.http, "k", 100).await;

    p.n1.signal(libc::SIGSTOP).unwrap();
    // Paused past the failover timeout: the standby takes over.
    wait_health(&p.n2.http, "writable primary", is_writable_primary).await;
    acked.extend(write_all(&p.n2.http, "new", 20).await);
    p.n1.signal(libc::SIGCONT).unwrap();

    // The old primary must not acknowledge anything: its first write asks
    // the standby, which answers with the newer epoch.
    let mut old = p.n1.client();
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    loop {
        let r = old
            .request(Method::PUT, &format!("/kv/stale{i}"), "v".into())
            .await
            .unwrap();
        // 503 refused on arrival, or 504 appended before it learned of
        // epoch 2 (outcome unknown; it is rewound below): never 200.
        assert!(
            matches!(r.status, 503 | 504),
            "the paused primary acknowledged a write: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let h = health(&p.n1.http).await;
        if h.epoch == 2 && h.role != "primary" {
            break;
        }
        assert!(Instant::now() < deadline, "n1 never learned epoch 2: {h:?}");
        i += 1;
    }
    let r = old
        .request(Method::PUT, "/kv/late", "v".into())
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    let e: ErrorReply = json(&r.body);
    assert_eq!(e.leader.as_deref(), Some(p.n2.http.as_str()), "{e:?}");

    let target = health(&p.n2.http).await.last_lsn;
    let h1 = wait_health(&p.n1.http, "caught-up standby", |h| {
        h.role == "standby" && h.applied_lsn >= target
    })
    .await;
    assert_all_readable(&p.n2.http, &acked).await;
    assert_eq!(h1.state_hash, health(&p.n2.http).await.state_hash);
    let mut c = HttpClient::new(&p.n2.http);
    for j in 0..=i {
        assert!(c.get(&format!("stale{j}")).await.unwrap().is_none());
    }
}

/// A write refused on arrival while the node changes roles is held (up to
/// `http_refusal_hold_ms`, here far longer than the test) and applied once
/// the node can write; a standby that never was the primary refuses at
/// once, with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_while_the_node_cannot_write_yet_is_applied_once_it_can() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HOLD_MS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let hold = HOLD_MS.to_string();
    let pair = ProcessPair::new(
        dir.path(),
        &test_options(&[("http_refusal_hold_ms", &hold)]),
    )
    .unwrap();
    let (mut n1, mut n2) = (pair.n1, pair.n2);
    // A fresh primary takes writes only once its peer confirmed it.
    n1.spawn().expect("n1 starts");
    let h = wait_health(&n1.http, "started as primary", |h| h.role == "primary").await;
    assert!(!h.writable, "{h:?}");
    let mut held = tokio::net::TcpStream::connect(&n1.http).await.unwrap();
    let put = format!(
        "PUT /kv/held HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nvalue",
        n1.http
    );
    held.write_all(put.as_bytes()).await.unwrap();
    // The write is at n1, refused and held; the peer confirms n1.
    n2.spawn().expect("n2 starts");
    let mut answer = Vec::new();
    held.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the held write was not applied once n1 could write: {answer}"
    );
    wait_streaming(&n1.http, &n2.http).await;
    assert_eq!(
        HttpClient::new(&n1.http)
            .get("held")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"value"[..])
    );
    // n2 has only ever been a standby: no hold, a 503 at once.
    let asked = Instant::now();
    let (status, body) = req(&n2.http, Method::PUT, "/kv/elsewhere", b"v").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        asked.elapsed() < Duration::from_millis(HOLD_MS),
        "a standby that never was the primary held its refusal"
    );
    let e: ErrorReply = json(&body);
    assert_eq!(e.kind.as_deref(), Some("not_primary"), "{e:?}");
    // A switchover demotes n1. A client that comes straight to n1 (no
    // X-Forwarded-For: not through a load balancer) is not held for the
    // hold: n1 knows n2 is the primary, and the 503 names it.
    let (status, body) = req(&n2.http, Method::POST, "/promote", b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let asked = Instant::now();
    let (status, body) = req(&n1.http, Method::PUT, "/kv/direct", b"v").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        asked.elapsed() < Duration::from_millis(HOLD_MS),
        "a direct client was held by a demoted node that knows the new primary"
    );
    let e: ErrorReply = json(&body);
    assert_eq!(e.leader.as_deref(), Some(&n2.http[..]), "{e:?}");
    n1.terminate(Duration::from_secs(5));
    n2.terminate(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_its_snapshot_survives() {
    let dir = tempfile::tempdir().unwrap();
    // A lone async primary: it acknowledges without its (absent) standby,
    // once the operator forced it (a fresh primary waits for its peer's
    // confirmation, which an absent peer never gives, and says so).
    let pair = ProcessPair::new(dir.path(), &test_options(&[("commit_mode", "async")])).unwrap();
    let mut n1 = pair.n1;
    n1.spawn().expect("n1 starts");
    wait_health(&n1.http, "started as primary", |h| h.role == "primary").await;
    let (status, body) = req(&n1.http, Method::PUT, "/kv/early", b"v").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("promote --force"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, body) = req(&n1.http, Method::POST, "/promote?force=true", b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    wait_health(&n1.http, "writable", is_writable_primary).await;
    let acked = write_all(&n1.http, "k", 50).await;
    n1.signal(libc::SIGTERM).unwrap();
    let status = n1.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}: {}", n1.log_tail(20));
    assert!(n1.log_tail(5).contains("stopped"), "{}", n1.log_tail(20));
    assert!(dir.path().join("n1/kv/kv.snapshot").exists());
    assert!(dir.path().join("n1/wal/meta").exists());

    n1.spawn().expect("n1 restarts");
    let h = wait_health(&n1.http, "writable again", is_writable_primary).await;
    assert_eq!(h.last_lsn, 50);
    assert_all_readable(&n1.http, &acked).await;
}

/// SIGTERM (`docker stop`) of a primary with a healthy standby hands over
/// first: the standby is the primary of the next epoch by the time the old
/// primary has exited (too soon for a failover, which needs the primary
/// silent for `failover_timeout` while the old one heartbeated until it
/// handed over), the old primary's log says so, nothing acknowledged is
/// lost, and the old primary starts again as the standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_primary_hands_over_to_its_standby_and_loses_nothing() {
    let mut p = proc_pair(&[]).await;
    let mut acked = write_all(&p.n1.http, "k", 100).await;
    wait_health(&p.n2.http, "eligible standby", |h| h.eligible).await;

    p.n1.signal(libc::SIGTERM).unwrap();
    let status = p.n1.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}: {}", p.n1.log_tail(20));
    let h2 = health(&p.n2.http).await;
    assert_eq!(h2.role, "primary", "{h2:?}");
    assert_eq!(h2.epoch, 2);
    let log = p.n1.log_tail(40);
    assert!(log.contains("handing over to the standby first"), "{log}");
    assert!(
        log.contains("handed over: the standby is the primary"),
        "{log}"
    );
    let log2 = p.n2.log_tail(80);
    assert!(log2.contains("planned switchover"), "{log2}");
    assert_all_readable(&p.n2.http, &acked).await;
    acked.extend(write_all(&p.n2.http, "after", 20).await);

    p.n1.spawn().expect("n1 restarts");
    let target = health(&p.n2.http).await.last_lsn;
    let h1 = wait_health(&p.n1.http, "caught-up standby", |h| {
        h.role == "standby" && h.applied_lsn >= target
    })
    .await;
    assert_eq!(h1.epoch, 2);
    assert_all_readable(&p.n2.http, &acked).await;
}

/// A second SIGTERM while the primary is still handing over (its standby
/// stopped answering mid-way) stops it at once, as a crash would, instead
/// of being ignored until the handover gives up; the standby then takes
/// over by failover with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_handover_stops_the_primary_at_once() {
    // Calls to the stopped standby hang for their whole deadline, so the
    // handover is still under way when the second signal comes.
    let mut p = proc_pair(&[("rpc_timeout_ms", "3000")]).await;
    let acked = write_all(&p.n1.http, "k", 20).await;
    wait_health(&p.n2.http, "eligible standby", |h| h.eligible).await;
    p.n2.signal(libc::SIGSTOP).unwrap();
    p.n1.signal(libc::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p
        .n1
        .log_tail(40)
        .contains("handing over to the standby first")
    {
        assert!(
            std::time::Instant::now() < deadline && p.n1.exited().is_none(),
            "no handover started: {}",
            p.n1.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.n1.signal(libc::SIGTERM).unwrap();
    let status = p.n1.wait_exit(Duration::from_secs(2)).unwrap();
    assert!(
        !status.success(),
        "a forced stop is not a clean one: {status}"
    );
    assert!(
        p.n1.log_tail(40).contains("received again"),
        "{}",
        p.n1.log_tail(40)
    );
    p.n2.signal(libc::SIGCONT).unwrap();
    wait_health(&p.n2.http, "the standby took over", is_writable_primary).await;
    assert_all_readable(&p.n2.http, &acked).await;
}

/// SIGHUP (a `systemctl reload`, a terminal closing) never stops a node,
/// one without TLS included: it says it got it and goes on taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_a_node_without_tls() {
    let mut p = proc_pair(&[]).await;
    p.n1.signal(libc::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.n1.log_tail(40).contains("SIGHUP received") {
        assert!(
            std::time::Instant::now() < deadline && p.n1.exited().is_none(),
            "the node did not take SIGHUP: {}",
            p.n1.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.n1.exited().is_none(), "{}", p.n1.log_tail(40));
    write_all(&p.n1.http, "after-hup", 3).await;
}

/// The stderr of a process that refused its input: exit code 2 (what
/// the daemon gives bad configuration), or the assertion names its stderr.
#[track_caller]
fn refused_as_bad_input(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_bin(&args, &[])
    })
    .await
    .unwrap()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_talk_to_a_node_and_say_when_it_is_unreachable() {
    let p = pair(&[]).await;
    let (a, b) = (p.a_http.as_str(), p.b_http.as_str());

    let out = cli(args(&["put", "city", "Lisbon", "--addr", a])).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("lsn 1"));
    wait_health(b, "applied", |h| h.applied_lsn == 1).await;
    let out = cli(args(&["get", "city", "--addr", b])).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Lisbon\n");
    let out = cli(args(&["get", "nowhere", "--addr", b])).await;
    assert_eq!(out.status.code(), Some(1));

    let out = cli(args(&["put", "city", "Porto", "--addr", b])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("503") && stderr.contains(a), "{stderr}");

    let out = cli(args(&["status", "--addr", a])).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for row in [
        "role",
        "primary",
        "epoch",
        "lsn",
        "lag",
        "peer",
        "b connected",
    ] {
        assert!(table.contains(row), "no {row:?} in\n{table}");
    }

    let out = cli(args(&["healthcheck", "--addr", a])).await;
    assert!(out.status.success(), "{out:?}");

    let dead = format!("127.0.0.1:{}", free_ports(1)[0]);
    for cmd in ["healthcheck", "status"] {
        let out = cli(args(&[cmd, "--addr", &dead])).await;
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot reach walrep at {dead}")),
            "{cmd}: {stderr}"
        );
    }
    // Docker reserves exit code 2: a healthcheck given a bad address
    // exits 1 too, saying why.
    for bad in [&["--addr", "no-port"][..], &["--addr", a, "--bogus"]] {
        let mut all = vec!["healthcheck"];
        all.extend_from_slice(bad);
        let out = cli(args(&all)).await;
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{bad:?}");
    }

    let out = cli(args(&["promote", "--addr", b])).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("epoch 2"));
    wait_health(a, "standby", |h| h.role == "standby").await;
}

#[test]
fn the_demo_fails_over_and_loses_nothing() {
    for nodes in ["2", "3"] {
        let dir = tempfile::tempdir().unwrap();
        let out = run_bin(
            &[
                "demo",
                "--nodes",
                nodes,
                "--keys",
                "300",
                "--heartbeat-ms",
                "50",
                "--failover-timeout-ms",
                "500",
                "--dir",
                dir.path().to_str().unwrap(),
            ],
            &[],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{nodes} nodes: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("acknowledged writes lost  0"), "{stdout}");
        assert!(stdout.contains("state hashes equal        yes"), "{stdout}");
        assert!(stdout.contains("RESULT: PASS"), "{stdout}");
        if nodes == "3" {
            // The standby that did not promote follows the one that did.
            assert!(stdout.contains("every standby following"), "{stdout}");
            assert!(stdout.contains(" follows n"), "{stdout}");
        }
        // Again in the same folder: refused at once (its nodes would start
        // from this run's data), the folder as it was.
        let before = std::fs::read_dir(dir.path()).unwrap().count();
        let out = run_bin(&["demo", "--dir", dir.path().to_str().unwrap()], &[]);
        let stderr = refused_as_bad_input(&out);
        assert!(stderr.contains("is not empty"), "{stderr}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before);
    }
}

/// Runs a `walrep bench-*` command and returns its JSON result lines.
fn bench_json(args: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut all = args.to_vec();
    all.extend(["--json", "--dir", dir.path().to_str().unwrap()]);
    let out = run_bin(&all, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn bench_pair_reports_latency_percentiles_for_each_writer_count() {
    let results = bench_json(&[
        "bench-pair",
        "--clients",
        "1,4",
        "--seconds",
        "1",
        "--warmup-seconds",
        "0",
    ]);
    assert_eq!(results.len(), 2, "{results:?}");
    for (r, clients) in results.iter().zip([1, 4]) {
        assert_eq!(r["clients"], clients, "{r}");
        assert_eq!(r["mode"], "remote-flush", "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
        let (p50, p99, p999) = (
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["p999_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{r}");
    }
}

#[test]
fn bench_switchover_loses_no_acknowledged_write() {
    for via in ["promote", "sigterm"] {
        let results = bench_json(&[
            "bench-switchover",
            "--trials",
            "2",
            "--writers",
            "2",
            "--via",
            via,
        ]);
        let [r] = &results[..] else {
            panic!("one result expected: {results:?}")
        };
        assert_eq!(r["via"], via, "{r}");
        assert_eq!(r["trials"], 2, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert!(r["acknowledged"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn bench_big_values_reports_step_gaps_solo_and_peak_rss_of_both_nodes() {
    let results = bench_json(&[
        "bench-big-values",
        "--writers",
        "2",
        "--value-mib",
        "1",
        "--keys-per-writer",
        "2",
        "--seconds",
        "1",
    ]);
    let [r] = &results[..] else {
        panic!("one result expected: {results:?}")
    };
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["went_solo"], false, "{r}");
    for field in [
        "primary_step_gap_max_ms",
        "standby_step_gap_max_ms",
        "primary_rss_mib",
        "standby_rss_mib",
    ] {
        assert!(r[field].as_f64().unwrap() > 0.0, "{field}: {r}");
    }
}

#[test]
fn bench_commands_refuse_bad_values_by_name() {
    let out = run_bin(&["bench-pair", "--mode", "fast"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--mode") && stderr.contains("unknown commit mode"),
        "{stderr}"
    );
}

// ------------------------------------------------------ the SQLite engine

/// What `walrep_state` of node `name`'s SQLite store holds.
fn sqlite_state(dir: &std::path::Path) -> walrep_daemon::sqlite::StoredState {
    let path = dir.join("sqlite").join(walrep_daemon::sqlite::STORE_FILE);
    walrep_daemon::sqlite::SqliteStore::inspect(&path)
        .unwrap_or_else(|e| panic!("reading {}: {}", path.display(), e.chain()))
}

/// Writes `key` until the node acknowledges it (the first writes after
/// the standby is lost wait `sync_timeout_ms`, then the primary goes on
/// alone).
async fn put_until_acked(client: &mut HttpClient, key: &str, value: bytes::Bytes) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        match client.put(key, value.clone()).await {
            Ok(reply) => return reply.lsn,
            Err(e) => assert!(Instant::now() < deadline, "writing {key}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A standby SIGKILLed while writes stream to it has records in its WAL
/// that SQLite has, or has not, committed; restarted, it replays only
/// those after the LSN its database holds. `records_applied`, counted in
/// the same transactions, would exceed `applied_lsn` after a double apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_a_sqlite_node_applies_nothing_twice() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut p = proc_pair(&[("engine", "sqlite"), ("snapshot_records", "50")]).await;
    let (acks, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = {
        let (addr, acks, stop) = (p.n1.http.clone(), acks.clone(), stop.clone());
        tokio::spawn(async move {
            let mut client = HttpClient::new(&addr);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                put_until_acked(&mut client, &format!("k{i}"), "v".into()).await;
                acks.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    let acked_at_least = |n: u64| {
        let acks = acks.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while acks.load(Ordering::SeqCst) < n {
                assert!(
                    Instant::now() < deadline,
                    "fewer than {n} writes acknowledged"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    acked_at_least(150).await;
    p.n2.kill();
    p.n2.spawn().expect("n2 restarts");
    wait_health(&p.n2.http, "streaming standby again", is_streaming_standby).await;
    let after = acks.load(Ordering::SeqCst);
    acked_at_least(after + 100).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let last = health(&p.n1.http).await.last_lsn;
    let h2 = wait_health(&p.n2.http, "caught up", |h| h.applied_lsn == last).await;
    assert_eq!(h2.state_hash, health(&p.n1.http).await.state_hash);
    for node in [&p.n1, &p.n2] {
        let state = sqlite_state(&node.data_dir);
        assert_eq!(state.applied.0, last, "{}", node.name);
        assert_eq!(
            state.records_applied, last,
            "{}: {} applies for {last} records",
            node.name, state.records_applied
        );
    }
}

/// A standby wiped while the primary went on alone past its WAL bound
/// resyncs from the primary's SQLite snapshot (many chunks), then takes
/// over when the primary is SIGKILLed, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_sqlite_standby_resyncs_from_a_streamed_snapshot_and_takes_over() {
    let mut p = proc_pair(&[
        ("engine", "sqlite"),
        ("snapshot_records", "10"),
        ("snapshot_interval_ms", "100"),
        ("wal_retention_bytes", "1048576"),
        ("snapshot_chunk_bytes", "262144"),
    ])
    .await;
    p.n2.kill();
    // More than one 64 MiB WAL segment, so the first one goes.
    let value = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    let mut client = p.n1.client();
    let mut i = 0;
    while health(&p.n1.http).await.first_lsn <= 1 {
        assert!(
            i < 200,
            "the primary's WAL kept its first record after {i} MiB"
        );
        put_until_acked(&mut client, &format!("big{i}"), value.clone()).await;
        i += 1;
    }
    let small = write_all(&p.n1.http, "small", 20).await;
    std::fs::remove_dir_all(&p.n2.data_dir).unwrap();

    p.n2.spawn().expect("n2 starts on an empty data dir");
    let last = health(&p.n1.http).await.last_lsn;
    let h2 = wait_health(&p.n2.http, "resynced standby", |h| {
        h.role == "standby" && h.applied_lsn >= last
    })
    .await;
    let log = std::fs::read_to_string(&p.n2.log).unwrap();
    assert!(log.contains("restored from snapshot"), "{log}");
    assert_eq!(h2.state_hash, health(&p.n1.http).await.state_hash);
    let restored = sqlite_state(&p.n2.data_dir);
    assert_eq!((restored.applied.0, restored.records_applied), (last, last));

    wait_health(&p.n2.http, "streaming standby", is_streaming_standby).await;
    let more = write_all(&p.n1.http, "more", 10).await;
    p.n1.kill();
    wait_health(&p.n2.http, "writable primary", is_writable_primary).await;
    let after = write_all(&p.n2.http, "after", 10).await;
    for acked in [&small, &more, &after] {
        assert_all_readable(&p.n2.http, acked).await;
    }
    let mut c = HttpClient::new(&p.n2.http);
    assert_eq!(c.get("big0").await.unwrap(), Some(value));
}

/// A primary restarted on a wiped data directory, as primary again (so at
/// epoch 1, unconfirmed, like a new cluster), while its standby's failover
/// is paused: the standby, whose log holds records a confirmed primary
/// wrote, refuses to follow it instead of rewinding them, and the wiped
/// node, never confirmed, takes no write. Once failover resumes the
/// standby takes over and the wiped node rejoins it with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarted_on_a_wiped_directory_does_not_rewind_its_standby() {
    let mut p = proc_pair(&[]).await;
    let acked = write_all(&p.n1.http, "before", 20).await;
    let mut n2 = HttpClient::new(&p.n2.http);
    n2.set_maintenance(true).await.expect("n2 paused");
    p.n1.kill();
    std::fs::remove_dir_all(&p.n1.data_dir).unwrap();
    p.n1.spawn().expect("n1 starts on an empty data dir");

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(&p.n2.log).unwrap();
        if log.contains("refusing to follow n1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "n2 never refused the wiped primary:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (h1, h2) = (health(&p.n1.http).await, health(&p.n2.http).await);
    assert!(!h1.writable, "the wiped node was confirmed: {h1:?}");
    assert_eq!(h2.role, "standby");
    assert!(h2.last_lsn >= 20, "n2 rewound: {h2:?}");
    assert_all_readable(&p.n2.http, &acked).await;

    n2.set_maintenance(false).await.expect("n2 resumed");
    wait_health(&p.n2.http, "writable primary", is_writable_primary).await;
    wait_health(&p.n1.http, "rejoined standby", is_streaming_standby).await;
    let after = write_all(&p.n2.http, "after", 5).await;
    let last = health(&p.n2.http).await.last_lsn;
    wait_health(&p.n1.http, "caught-up standby", |h| h.applied_lsn >= last).await;
    for node in [&p.n1.http, &p.n2.http] {
        assert_all_readable(node, &acked).await;
        assert_all_readable(node, &after).await;
    }
}
