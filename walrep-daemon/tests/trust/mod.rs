//! Mutual TLS between real daemons: only the peer's certificate gets in,
//! and certificates rotate on SIGHUP without breaking the stream.

use crate::daemon_support::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use walrep::testing::{
    FenceReason, FenceRequest, Header, HeartbeatRequest, Peer, PromoteRequest, SnapshotRequest,
    WalBatch, peer_with_identity,
};
use walrep::{Config, Epoch, GrpcPeer, Lsn, NodeId, Record, SyncState, Tls, TlsFiles};
use walrep_daemon::api::HealthReport;
use walrep_daemon::certs::CertAuthority;
use walrep_daemon::client::HttpClient;
use walrep_daemon::https::{self, ClientTls};
use walrep_daemon::pair::Pair as ProcessPair;

/// Writes `ca.pem` and `<name>.pem`/`<name>.key` for each name into `dir`,
/// replacing what is there (rename over, as an operator's rotation would).
fn issue(dir: &Path, ca: &CertAuthority, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let put = |file: &str, text: &str| {
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    };
    put("ca.pem", ca.pem());
    for name in names {
        let cert = ca.issue(name).unwrap();
        put(&format!("{name}.pem"), &cert.cert_pem);
        put(&format!("{name}.key"), &cert.key_pem);
    }
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

fn listen_addr(args: &[String]) -> String {
    let i = args.iter().position(|a| a == "--listen").unwrap();
    args[i + 1].clone()
}

/// A client that dials `target` (whose node id is `target_id`) saying it
/// is `claims`, over `tls` (or in clear text).
fn client(target: &str, target_id: &str, claims: &str, tls: Option<&Tls>) -> Arc<dyn Peer> {
    let cfg = Config {
        node_id: NodeId::from(claims),
        peer_id: NodeId::from(target_id),
        peer_addr: target.to_string(),
        cluster_id: "test".into(),
        ..Config::default()
    };
    Arc::new(match tls {
        Some(tls) => GrpcPeer::connect_lazy_tls(&cfg, tls).unwrap(),
        None => GrpcPeer::connect_lazy(&cfg).unwrap(),
    })
}

fn header(claims: &str, epoch: u64) -> Header {
    Header {
        cluster_id: "test".into(),
        epoch: Epoch(epoch),
        node_id: NodeId::from(claims),
        ..Header::default()
    }
}

/// One RPC with `peer`, claiming to be `claims`, against a node whose
/// health is `h`: `Ok` with what it answered if the node took it, `Err`
/// with the error if it was refused.
async fn call(
    peer: &Arc<dyn Peer>,
    rpc: &str,
    claims: &str,
    h: &HealthReport,
) -> Result<String, walrep::TransportError> {
    let header = || header(claims, h.epoch);
    match rpc {
        "Heartbeat" => peer
            .heartbeat(HeartbeatRequest {
                header: header(),
                last_lsn: Lsn(h.last_lsn),
                commit_lsn: Lsn(h.last_lsn),
                sync: SyncState::NotSync,
                confirmed: true,
                commit_rule: String::new(),
            })
            .await
            .map(|r| format!("{r:?}")),
        "Fence" => peer
            .fence(FenceRequest {
                header: Header {
                    epoch: Epoch(Epoch::MAX.0 - 1),
                    ..header()
                },
                reason: FenceReason::Forced,
                candidate_end: None,
            })
            .await
            .map(|r| format!("{r:?}")),
        "Promote" => peer
            .promote(PromoteRequest {
                header: header(),
                force: true,
            })
            .await
            .map(|r| format!("{r:?}")),
        "FetchSnapshot" => peer
            .fetch_snapshot(SnapshotRequest {
                header: header(),
                snapshot_id: 0,
                offset: 0,
                crc_after_data: true,
            })
            .await
            .map(|_| "a snapshot stream".to_string()),
        "StreamWal" => {
            // A forged record right after the node's last, in its epoch,
            // with a valid CRC (the wire encoding computes it).
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let forged = Record {
                lsn: Lsn(h.last_lsn + 1),
                epoch: Epoch(h.epoch),
                payload: bytes::Bytes::from_static(b"forged"),
                request_id: None,
            };
            tx.send(WalBatch {
                header: header(),
                prev_lsn: Lsn(h.last_lsn),
                prev_epoch: Epoch(h.epoch),
                records: vec![forged],
                commit_lsn: Lsn(h.last_lsn + 1),
                sync: SyncState::NotSync,
                last_lsn: Lsn(h.last_lsn + 1),
                first_lsn: Lsn(1),
                unconfirmed: false,
            })
            .await
            .unwrap();
            let mut acks = peer.open_wal_stream(rx).await?;
            use futures::StreamExt;
            match acks.next().await {
                Some(Ok(ack)) => Ok(format!("{ack:?}")),
                Some(Err(e)) => Err(e),
                None => Err(walrep::TransportError::Unreachable(
                    "the stream ended unanswered".into(),
                )),
            }
        }
        "Status" => peer.status(header()).await.map(|r| format!("{r:?}")),
        other => unreachable!("{other}"),
    }
}

/// The RPCs that change a node, and the read-only one.
const RPCS: [&str; 6] = [
    "StreamWal",
    "Fence",
    "Promote",
    "Heartbeat",
    "FetchSnapshot",
    "Status",
];

fn unauthenticated(scrape: &str) -> u64 {
    scrape
        .lines()
        .find(|l| {
            l.starts_with("walrep_rejected_requests") && l.contains("reason=\"unauthenticated\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn metrics_text(addr: &str) -> String {
    crate::scrape(addr).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_only_the_peer_in_and_rotates_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let certs: PathBuf = dir.path().join("tls");
    let ca = CertAuthority::new().unwrap();
    issue(&certs, &ca, &["n1", "n2"]);

    let mut pair = ProcessPair::new(&dir.path().join("pair"), &test_options(&[])).unwrap();
    for node in [&mut pair.n1, &mut pair.n2] {
        let name = node.name.clone();
        let f = files(&certs, &name);
        for (flag, path) in [
            ("--tls-ca", f.ca),
            ("--tls-cert", f.cert),
            ("--tls-key", f.key),
        ] {
            node.args.push(flag.into());
            node.args.push(path.display().to_string());
        }
    }
    pair.n1.spawn().unwrap();
    pair.n2.spawn().unwrap();
    wait_streaming(&pair.n1.http, &pair.n2.http).await;
    let acked = write_all(&pair.n1.http, "before", 20).await;
    let standby = wait_health(&pair.n2.http, "applied", |h| h.applied_lsn >= 20).await;
    let n2_grpc = listen_addr(&pair.n2.args);
    let n1_grpc = listen_addr(&pair.n1.args);
    let primary = wait_health(&pair.n1.http, "primary applied", |h| h.applied_lsn >= 20).await;

    // The attackers' certificates: one from another CA (named like each
    // node), one from the cluster CA naming a stranger, n3.
    let elsewhere = dir.path().join("other-ca");
    let other = CertAuthority::new().unwrap();
    issue(&elsewhere, &other, &["n1", "n2"]);
    let stranger_dir = dir.path().join("stranger");
    issue(&stranger_dir, &ca, &["n3"]);
    let ca_pem = certs.join("ca.pem");
    // Each attacker trusts the real CA, so a refusal is the node's doing.
    let attacker = |target: &str, target_id: &str, claims: &str, who: &str| -> Arc<dyn Peer> {
        let cfg = Config {
            node_id: NodeId::from(claims),
            peer_id: NodeId::from(target_id),
            peer_addr: target.to_string(),
            cluster_id: "test".into(),
            rpc_timeout: std::time::Duration::from_secs(2),
            ..Config::default()
        };
        let own = files(&elsewhere, claims);
        let n3 = files(&stranger_dir, "n3");
        let peer = match who {
            "no TLS" => GrpcPeer::connect_lazy(&cfg).unwrap(),
            "TLS without a certificate" => peer_with_identity(&cfg, &ca_pem, None).unwrap(),
            "a certificate from another CA" => {
                peer_with_identity(&cfg, &ca_pem, Some((&own.cert, &own.key))).unwrap()
            }
            "the cluster CA's certificate for n3" => {
                peer_with_identity(&cfg, &ca_pem, Some((&n3.cert, &n3.key))).unwrap()
            }
            // The control: the real identity of `claims`.
            "the real certificate" => {
                let real = files(&certs, claims);
                peer_with_identity(&cfg, &ca_pem, Some((&real.cert, &real.key))).unwrap()
            }
            other => unreachable!("{other}"),
        };
        Arc::new(peer)
    };
    // The helper works: with the peer's real certificate it gets in.
    for (target, id, claims) in [(&n2_grpc, "n2", "n1"), (&n1_grpc, "n1", "n2")] {
        let h = if id == "n2" { &standby } else { &primary };
        call(
            &attacker(target, id, claims, "the real certificate"),
            "Status",
            claims,
            h,
        )
        .await
        .unwrap_or_else(|e| panic!("the real {claims} cannot reach {id}: {e}"));
    }
    let before = [
        unauthenticated(&metrics_text(&pair.n1.http).await),
        unauthenticated(&metrics_text(&pair.n2.http).await),
    ];
    let identities = [
        "no TLS",
        "TLS without a certificate",
        "a certificate from another CA",
        "the cluster CA's certificate for n3",
    ];
    let mut tried = 0;
    for who in identities {
        for (target, id, claims, h) in [
            (&n2_grpc, "n2", "n1", &standby),
            (&n1_grpc, "n1", "n2", &primary),
        ] {
            for rpc in RPCS {
                // A fresh connection per call: each is judged on its own.
                let peer = attacker(target, id, claims, who);
                match call(&peer, rpc, claims, h).await {
                    Ok(answer) => panic!("{who}, claiming {claims}: {id} took {rpc}: {answer}"),
                    // Refused at the handshake: no request reached the node.
                    Err(e) => assert!(
                        e.is_unreachable(),
                        "{who}: {rpc} to {id} failed, but not at the connection: {e}"
                    ),
                }
                tried += 1;
            }
        }
    }

    // Nothing changed on either node: log, epoch, role, state.
    for (addr, was, role) in [
        (&pair.n2.http, &standby, "standby"),
        (&pair.n1.http, &primary, "primary"),
    ] {
        let now = crate::health(addr).await;
        assert_eq!(
            (
                now.epoch,
                now.last_lsn,
                now.role.as_str(),
                now.state_hash.as_str()
            ),
            (was.epoch, was.last_lsn, role, was.state_hash.as_str()),
            "an attacker changed {addr}"
        );
    }
    // Each refused connection is counted (the no-TLS ones too); the TLS
    // ones are logged as refused.
    let refused = [
        unauthenticated(&metrics_text(&pair.n1.http).await) - before[0],
        unauthenticated(&metrics_text(&pair.n2.http).await) - before[1],
    ];
    assert!(
        refused[0] + refused[1] >= tried as u64 / 2,
        "{refused:?} refusals counted for {tried} attempts"
    );
    for node in [&pair.n1, &pair.n2] {
        assert!(
            node.log_tail(400)
                .contains("replication connection refused"),
            "{}",
            node.log_tail(50)
        );
    }

    // Rotation: a new CA for both nodes, SIGHUP, and the stream goes on.
    let ca2 = CertAuthority::new().unwrap();
    issue(&certs, &ca2, &["n1", "n2"]);
    for node in [&pair.n1, &pair.n2] {
        node.signal(libc::SIGHUP).unwrap();
    }
    for node in [&pair.n1, &pair.n2] {
        wait_until(|| node.log_tail(200).contains("TLS files reloaded")).await;
    }
    let more = write_all(&pair.n1.http, "after", 20).await;
    wait_health(&pair.n2.http, "caught up after rotation", |h| {
        h.last_lsn >= 40
    })
    .await;
    assert_all_readable(&pair.n2.http, &acked).await;
    assert_all_readable(&pair.n2.http, &more).await;
    // New connections need the new CA: n1's old certificate is refused,
    // its new one is let in (status is read-only).
    let old = dir.path().join("old");
    issue(&old, &ca, &["n1"]);
    // It trusts both CAs, so a refusal is n2's doing, not this client's.
    std::fs::write(old.join("both.pem"), format!("{}{}", ca.pem(), ca2.pem())).unwrap();
    let old_tls = Tls::load(
        TlsFiles {
            ca: old.join("both.pem"),
            ..files(&old, "n1")
        },
        &cfg_for("n1", "n2"),
    )
    .unwrap();
    let new_tls = Tls::load(files(&certs, "n1"), &cfg_for("n1", "n2")).unwrap();
    let status = |tls: Tls| {
        let peer = client(&n2_grpc, "n2", "n1", Some(&tls));
        async move { peer.status(header("n1", standby.epoch)).await }
    };
    assert!(
        status(old_tls).await.is_err(),
        "the old CA still gets in after rotation"
    );
    status(new_tls)
        .await
        .expect("the rotated certificate is accepted");
}

fn cfg_for(node: &str, peer: &str) -> Config {
    Config {
        node_id: node.into(),
        peer_id: peer.into(),
        ..Config::default()
    }
}

/// Polls `done` every 20 ms until it holds; panics after `WAIT`.
async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `addr`'s /health over HTTPS (trusting `tls`) until `pred` holds;
/// panics after `WAIT`.
async fn https_health(
    addr: &str,
    tls: &ClientTls,
    what: &str,
    pred: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    let deadline = std::time::Instant::now() + WAIT;
    let mut client = HttpClient::new(addr)
        .with_tls(tls.clone())
        .with_timeout(std::time::Duration::from_secs(2));
    loop {
        let last = match client.health().await {
            Ok((_, h)) if pred(&h) => return h,
            Ok((_, h)) => format!("{h:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{addr}: timed out waiting until {what}; last: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn put_http_cert(dir: &Path, ca: &CertAuthority, ca_file: &str) {
    let cert = ca.issue_http(&["127.0.0.1".into()]).unwrap();
    for (file, text) in [
        ("http.pem", cert.cert_pem.as_str()),
        ("http.key", cert.key_pem.as_str()),
        (ca_file, ca.pem()),
    ] {
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_cli_with_the_ca_refuses_plain_http_and_untrusting_clients_and_reloads_on_sighup()
 {
    let dir = tempfile::tempdir().unwrap();
    let certs: PathBuf = dir.path().join("tls");
    let ca = CertAuthority::new().unwrap();
    issue(&certs, &ca, &["n1", "n2"]);
    put_http_cert(&certs, &ca, "http-ca.pem");
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef-https-token").unwrap();

    // A short idle timeout, to see a stalled handshake closed, and a cap
    // of 80 connections, to see one address's stalled handshakes leave
    // room for others.
    let options = test_options(&[
        ("http_idle_timeout_ms", "2000"),
        ("http_max_connections", "80"),
    ]);
    let mut pair = ProcessPair::new(&dir.path().join("pair"), &options).unwrap();
    for node in [&mut pair.n1, &mut pair.n2] {
        let f = files(&certs, &node.name.clone());
        for (flag, path) in [
            ("--tls-ca", f.ca),
            ("--tls-cert", f.cert),
            ("--tls-key", f.key),
            ("--http-tls-cert", certs.join("http.pem")),
            ("--http-tls-key", certs.join("http.key")),
            ("--http-token-file", token.clone()),
        ] {
            node.args.push(flag.into());
            node.args.push(path.display().to_string());
        }
    }
    pair.n1.spawn().unwrap();
    pair.n2.spawn().unwrap();
    let trust = https::client_config(&certs.join("ca.pem")).unwrap();
    https_health(&pair.n1.http, &trust, "writable primary", |h| {
        h.role == "primary" && h.writable && h.peer.connected
    })
    .await;
    https_health(&pair.n2.http, &trust, "streaming standby", |h| {
        h.role == "standby" && h.peer.connected
    })
    .await;
    let n1 = format!("https://{}", pair.n1.http);
    let n2 = format!("https://{}", pair.n2.http);
    let ca_file = certs.join("ca.pem").display().to_string();
    let token_file = token.display().to_string();

    // The CLI with the cluster CA: a write on the primary, a read on the
    // standby, the health check.
    let out = crate::cli(crate::args(&[
        "put",
        "city",
        "Lisbon",
        "--addr",
        &n1,
        "--tls-ca",
        &ca_file,
        "--http-token-file",
        &token_file,
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok: lsn 1 "),
        "{out:?}"
    );
    https_health(&pair.n2.http, &trust, "applied", |h| h.applied_lsn >= 1).await;
    let out = crate::cli(crate::args(&[
        "get", "city", "--addr", &n2, "--tls-ca", &ca_file,
    ]))
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Lisbon\n", "{out:?}");
    let out = crate::cli(crate::args(&[
        "healthcheck",
        "--addr",
        &n1,
        "--tls-ca",
        &ca_file,
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");

    // Plain HTTP to the HTTPS port gets no answer; the node counts and
    // logs the failed handshake.
    let plain = HttpClient::new(&pair.n1.http)
        .with_timeout(std::time::Duration::from_secs(5))
        .health()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let out = crate::cli(crate::args(&["get", "city", "--addr", &pair.n1.http])).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A TCP health check (connect, close) is not a failed handshake: after
    // five of them, one plain-HTTP request counts one.
    let tls_refused = |scrape: String| -> u64 {
        scrape
            .lines()
            .find(|l| l.contains("reason=\"tls_handshake\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let scrape = |tls: ClientTls| {
        let addr = pair.n1.http.clone();
        async move {
            let reply = HttpClient::new(&addr)
                .with_tls(tls)
                .request(hyper::Method::GET, "/metrics", bytes::Bytes::new())
                .await
                .unwrap();
            String::from_utf8_lossy(&reply.body).into_owned()
        }
    };
    let before = tls_refused(scrape(trust.clone()).await);
    for _ in 0..5 {
        drop(tokio::net::TcpStream::connect(&pair.n1.http).await.unwrap());
    }
    assert!(HttpClient::new(&pair.n1.http).health().await.is_err());
    let deadline = std::time::Instant::now() + WAIT;
    let counted = loop {
        let n = tls_refused(scrape(trust.clone()).await) - before;
        if n > 0 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(counted, 1, "TCP health checks counted as failed handshakes");
    wait_until(|| {
        pair.n1
            .log_tail(200)
            .contains("HTTPS connection refused: TLS handshake failed")
    })
    .await;
    let mut trusted = HttpClient::new(&pair.n1.http).with_tls(trust.clone());
    let metrics = trusted
        .request(hyper::Method::GET, "/metrics", bytes::Bytes::new())
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .lines()
            .any(|l| l.contains("reason=\"tls_handshake\"") && !l.ends_with(" 0")),
        "the failed handshakes are not counted"
    );

    // A connection that never starts its handshake is closed after
    // http_idle_timeout_ms, giving its slot back.
    let mut stalled = tokio::net::TcpStream::connect(&pair.n1.http).await.unwrap();
    let opened = std::time::Instant::now();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut stalled, &mut buf))
        .await
        .expect("a stalled handshake is never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let held = opened.elapsed();
    assert!(
        held >= std::time::Duration::from_millis(1500),
        "closed after {held:?}, before the idle timeout"
    );

    // 80 connections from 127.0.0.1 that never start their handshakes
    // hold at most HANDSHAKES_PER_SOURCE slots: a client from 127.0.0.2
    // still gets in.
    let mut stalled = Vec::new();
    for _ in 0..80 {
        stalled.push(tokio::net::TcpStream::connect(&pair.n1.http).await.unwrap());
    }
    let other_source = async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let tcp = socket.connect(pair.n1.http.parse().unwrap()).await?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(trust.clone())
            .connect(name, tcp)
            .await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: n1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), other_source)
        .await
        .expect("no answer to 127.0.0.2")
        .expect("127.0.0.2 was refused");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let per_source = answer
        .lines()
        .find(|l| l.contains("reason=\"handshakes_per_source\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        per_source >= (80 - walrep_daemon::http_server::HANDSHAKES_PER_SOURCE) as f64,
        "{per_source} connections refused by the per-address limit"
    );
    drop(stalled);
    https_health(&pair.n1.http, &trust, "127.0.0.1 let in again", |_| true).await;

    // A client that trusts another CA refuses the node's certificate.
    let stranger = dir.path().join("stranger");
    issue(&stranger, &CertAuthority::new().unwrap(), &[]);
    let stranger_ca = stranger.join("ca.pem").display().to_string();
    let out = crate::cli(crate::args(&[
        "get",
        "city",
        "--addr",
        &n2,
        "--tls-ca",
        &stranger_ca,
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        // (Every `walrep certs` CA has the same name, so rustls finds the
        // stranger's CA and the signature check fails.)
        stderr.contains("TLS handshake failed: invalid peer certificate"),
        "{stderr}"
    );
    // --tls-ca with an http:// address is a usage error, said as such.
    let out = crate::cli(crate::args(&[
        "get",
        "city",
        "--addr",
        &format!("http://{}", pair.n2.http),
        "--tls-ca",
        &ca_file,
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is plain HTTP: use --addr https://"),
        "{out:?}"
    );

    // Rotation: a certificate from a new CA, SIGHUP. A connection opened
    // before goes on; new ones get the new certificate.
    let (code, _) = trusted.health().await.unwrap();
    assert_eq!(code, 200);
    let ca2 = CertAuthority::new().unwrap();
    put_http_cert(&certs, &ca2, "http-ca2.pem");
    pair.n1.signal(libc::SIGHUP).unwrap();
    wait_until(|| {
        pair.n1
            .log_tail(200)
            .contains("SIGHUP: HTTPS certificate reloaded")
    })
    .await;
    let (code, _) = trusted.health().await.expect("the open connection goes on");
    assert_eq!(code, 200);
    let ca2_file = certs.join("http-ca2.pem").display().to_string();
    let out = crate::cli(crate::args(&[
        "put",
        "city",
        "Porto",
        "--addr",
        &n1,
        "--tls-ca",
        &ca2_file,
        "--http-token-file",
        &token_file,
    ]))
    .await;
    assert!(out.status.success(), "the new certificate: {out:?}");
    let out = crate::cli(crate::args(&[
        "get", "city", "--addr", &n1, "--tls-ca", &ca_file,
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the old CA still accepted: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid peer certificate"),
        "{out:?}"
    );
}
