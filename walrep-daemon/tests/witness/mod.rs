//! `walrep witness` as a process: it serves, answers /health and
//! /metrics, keeps what it answered across a SIGTERM and a restart, and
//! refuses bad flags by name.

use crate::daemon_support::*;
use std::path::Path;
use std::time::Duration;
use walrep::arbiter::{Arbiter, Caller, CasOutcome, Register, WitnessClient};
use walrep::{Config, Epoch, NodeId};
use walrep_daemon::process::{Launch, NodeProc};
use walrep_daemon::witness::http::WitnessHealth;

fn witness_proc(dir: &Path, grpc: u16, http: u16, extra: &[(&'static str, String)]) -> NodeProc {
    let mut flags = vec![
        ("listen", format!("127.0.0.1:{grpc}")),
        ("data_dir", dir.join("witness").display().to_string()),
        ("http", format!("127.0.0.1:{http}")),
    ];
    flags.extend(extra.iter().cloned());
    let launch = Launch {
        binary: Some(BIN.into()),
        env: vec![("WALREP_LOG".into(), "info".into())],
    };
    NodeProc::witness("witness", &flags, dir, &launch)
}

async fn healthy(w: &mut NodeProc) -> WitnessHealth {
    let http = w.http.clone();
    walrep_daemon::witness::wait_healthy(&http, WAIT, || {
        w.exited()
            .map(|s| format!("exited ({s}): {}", w.log_tail(20)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn caller(node: &str, epoch: u64) -> Caller {
    Caller::new(node, Epoch(epoch))
}

fn client(grpc: u16, node: &str) -> WitnessClient {
    let cfg = Config {
        node_id: NodeId::from(node),
        rpc_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    WitnessClient::connect_lazy(&format!("witness://127.0.0.1:{grpc}"), &cfg).unwrap()
}

async fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let r = walrep_daemon::client::HttpClient::new(addr)
        .request(hyper::Method::GET, "/metrics", bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_serves_health_and_metrics_and_keeps_its_swaps_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = free_ports(2);
    let mut w = witness_proc(dir.path(), p[0], p[1], &[]);
    w.spawn().unwrap();
    let h = healthy(&mut w).await;
    assert_eq!((h.status.as_str(), h.clusters, h.swaps), ("ok", 0, 0));
    let out = super::cli(super::args(&["healthcheck", "--addr", &w.http])).await;
    assert!(out.status.success(), "{out:?}");

    let (n1, n2) = (client(p[0], "n1"), client(p[0], "n2"));
    n2.read("c", &caller("n2", 0)).await.unwrap();
    let members = ["n1".into(), "n2".into()];
    // Refused first: n3, a member of this proposal, never reported.
    let with_n3 = Register::fresh(Epoch(1), &"n1".into(), &["n1".into(), "n3".into()]);
    assert!(
        n1.compare_and_swap("c", &caller("n1", 0), 0, &with_n3)
            .await
            .is_err()
    );
    let CasOutcome::Swapped(created) = n1
        .compare_and_swap(
            "c",
            &caller("n1", 0),
            0,
            &Register::fresh(Epoch(1), &"n1".into(), &members),
        )
        .await
        .unwrap()
    else {
        panic!("not created")
    };
    let h = healthy(&mut w).await;
    assert_eq!((h.clusters, h.swaps), (1, 1));
    let m = scrape(&w.http).await;
    assert_eq!(value(&m, "walrep_witness_swaps_total", &[]), 1.0);
    assert_eq!(value(&m, "walrep_witness_clusters", &[]), 1.0);
    assert_eq!(
        value(&m, "walrep_witness_requests_total", &[("rpc", "read")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "walrep_witness_requests_total",
            &[("rpc", "compare_and_swap")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "walrep_witness_refused_total",
            &[("reason", "members_not_heard")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "walrep_witness_write_latency_seconds_count", &[]),
        1.0
    );
    assert_eq!(value(&m, "walrep_witness_healthy", &[]), 1.0);
    assert_eq!(
        value(&m, "walrep_witness_registers_went_back_total", &[]),
        0.0
    );

    w.signal(libc::SIGTERM).unwrap();
    let status = w.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}: {}", w.log_tail(20));
    let log = w.log_tail(30);
    assert!(
        log.contains("witness swap") && log.contains("witness stopped"),
        "{log}"
    );
    assert!(log.contains("witness refused a swap"), "{log}");

    w.spawn().unwrap();
    let h = healthy(&mut w).await;
    assert_eq!(h.clusters, 1);
    assert_eq!(
        client(p[0], "n2")
            .read("c", &caller("n2", 1))
            .await
            .unwrap(),
        created
    );
    w.terminate(Duration::from_secs(10));
}

#[test]
fn bad_witness_flags_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["witness", "--data-dir", data_s], "missing setting listen"),
        (
            &["witness", "--listen", "127.0.0.1:1"],
            "missing setting data_dir: where the witness keeps its register file; give --data-dir",
        ),
        (
            &["witness", "--listen", "nowhere:7010", "--data-dir", data_s],
            "invalid value for listen (from --listen)",
        ),
        (
            &[
                "witness",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                data_s,
                "--http",
                "x",
            ],
            "invalid value for http (from --http)",
        ),
        (
            &[
                "witness",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                data_s,
                "--tls-ca",
                "/ca.pem",
            ],
            "missing tls_cert, tls_key: give --tls-cert, --tls-key",
        ),
        (
            &[
                "witness",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                data_s,
                "--peer",
                "n2:1",
            ],
            "--peer",
        ),
    ];
    for (args, expected) in cases {
        let out = super::run_bin(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!data.exists(), "a refused start created the data dir");
}

#[test]
fn a_damaged_register_file_stops_the_witness_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join(walrep::arbiter::witness::REGISTER_FILE);
    std::fs::write(&file, b"not a register file").unwrap();
    let p = free_ports(1);
    let listen = format!("127.0.0.1:{}", p[0]);
    let out = super::run_bin(
        &[
            "witness",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("is damaged"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"not a register file",
        "left as it was"
    );
}

/// Writes `name.pem`/`name.key` (and `ca.pem`) issued by `ca` into `dir`,
/// replacing what is there (rename over, as an operator's rotation would).
fn put_cert(dir: &Path, ca: &walrep_daemon::certs::CertAuthority, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let put = |file: &str, text: &str| {
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    };
    put("ca.pem", ca.pem());
    let cert = if name == walrep::arbiter::WITNESS_NAME {
        ca.issue_witness().unwrap()
    } else {
        ca.issue(name).unwrap()
    };
    put(&format!("{name}.pem"), &cert.cert_pem);
    put(&format!("{name}.key"), &cert.key_pem);
}

fn tls_client(grpc: u16, dir: &Path) -> WitnessClient {
    let cfg = Config {
        node_id: NodeId::from("n1"),
        peer_id: NodeId::from("n2"),
        rpc_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let tls = walrep::Tls::load(
        walrep::TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("n1.pem"),
            key: dir.join("n1.key"),
        },
        &cfg,
    )
    .unwrap();
    WitnessClient::connect_lazy_tls(&format!("127.0.0.1:{grpc}"), &cfg, &tls).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_the_witness_serves_its_cas_nodes_and_rotates_on_sighup() {
    use walrep_daemon::certs::CertAuthority;
    let dir = tempfile::tempdir().unwrap();
    let (tls, node_old, node_new) = (
        dir.path().join("tls"),
        dir.path().join("n1-old"),
        dir.path().join("n1-new"),
    );
    let (old_ca, new_ca) = (CertAuthority::new().unwrap(), CertAuthority::new().unwrap());
    put_cert(&tls, &old_ca, "witness");
    put_cert(&node_old, &old_ca, "n1");
    put_cert(&node_new, &new_ca, "n1");
    let p = free_ports(2);
    let file = |f: &str| tls.join(f).display().to_string();
    let mut w = witness_proc(
        dir.path(),
        p[0],
        p[1],
        &[
            ("tls_ca", file("ca.pem")),
            ("tls_cert", file("witness.pem")),
            ("tls_key", file("witness.key")),
        ],
    );
    w.spawn().unwrap();
    healthy(&mut w).await;
    tls_client(p[0], &node_old)
        .read("c", &caller("n1", 0))
        .await
        .expect("a node of the witness's CA is served");
    assert!(
        tls_client(p[0], &node_new)
            .read("c", &caller("n1", 0))
            .await
            .is_err(),
        "a node of another CA is refused"
    );

    // Rotation to the new CA: files replaced, then SIGHUP.
    put_cert(&tls, &new_ca, "witness");
    w.signal(libc::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !w.log_tail(50).contains("SIGHUP: TLS files reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", w.log_tail(20));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tls_client(p[0], &node_new)
        .read("c", &caller("n1", 0))
        .await
        .expect("new connections use the new files");
    assert!(
        tls_client(p[0], &node_old)
            .read("c", &caller("n1", 0))
            .await
            .is_err()
    );
    w.terminate(Duration::from_secs(10));
}
