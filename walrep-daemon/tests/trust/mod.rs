//! Mutual TLS between real daemons: only the peer's certificate gets in,
//! and certificates rotate on SIGHUP without breaking the stream.

use crate::daemon_support::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use walrep::testing::{
    FenceReason, FenceRequest, Header, HeartbeatRequest, Peer, PromoteRequest, SnapshotRequest,
    WalBatch,
};
use walrep::{Config, Epoch, GrpcPeer, Lsn, NodeId, Record, SyncState, Tls, TlsFiles};
use walrep_daemon::api::HealthReport;
use walrep_daemon::certs::CertAuthority;
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

/// Every RPC an attacker would use against a standby; each must fail.
async fn attack(peer: &Arc<dyn Peer>, claims: &str, h: &HealthReport, what: &str) {
    let high = h.epoch + 5;
    let hb = peer
        .heartbeat(HeartbeatRequest {
            header: header(claims, h.epoch),
            last_lsn: Lsn(h.last_lsn),
            commit_lsn: Lsn(h.last_lsn),
            sync: SyncState::NotSync,
        })
        .await;
    assert!(hb.is_err(), "{what}: heartbeat answered {hb:?}");
    let fence = peer
        .fence(FenceRequest {
            header: header(claims, high),
            reason: FenceReason::Forced,
        })
        .await;
    assert!(fence.is_err(), "{what}: fence answered {fence:?}");
    let promote = peer
        .promote(PromoteRequest {
            header: header(claims, h.epoch),
            force: true,
        })
        .await;
    assert!(promote.is_err(), "{what}: promote answered {promote:?}");
    let snapshot = peer
        .fetch_snapshot(SnapshotRequest {
            header: header(claims, h.epoch),
            snapshot_id: 0,
            offset: 0,
            crc_after_data: true,
        })
        .await;
    assert!(snapshot.is_err(), "{what}: snapshot request accepted");
    // A forged record right after the standby's last, with a valid CRC.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let forged = Record {
        lsn: Lsn(h.last_lsn + 1),
        epoch: Epoch(h.epoch),
        payload: bytes::Bytes::from_static(b"forged"),
        request_id: None,
    };
    let _ = tx
        .send(WalBatch {
            header: header(claims, h.epoch),
            prev_lsn: Lsn(h.last_lsn),
            prev_epoch: Epoch(h.epoch),
            records: vec![forged],
            commit_lsn: Lsn(h.last_lsn),
            sync: SyncState::NotSync,
            last_lsn: Lsn(h.last_lsn + 1),
            first_lsn: Lsn(1),
        })
        .await;
    let stream = peer.open_wal_stream(rx).await;
    assert!(stream.is_err(), "{what}: a WAL stream was opened");
}

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

    // Three attackers, all claiming to be n1 (the standby's primary).
    let elsewhere = dir.path().join("other-ca");
    let other = CertAuthority::new().unwrap();
    issue(&elsewhere, &other, &["n1"]);
    // It trusts the real CA too, so the refusal is the server's doing.
    std::fs::write(
        elsewhere.join("both.pem"),
        format!("{}{}", ca.pem(), other.pem()),
    )
    .unwrap();
    let other_ca = Tls::load(
        TlsFiles {
            ca: elsewhere.join("both.pem"),
            ..files(&elsewhere, "n1")
        },
        &cfg_for("n1", "n2"),
    )
    .unwrap();
    let stranger_dir = dir.path().join("stranger");
    issue(&stranger_dir, &ca, &["n3"]);
    let stranger = Tls::load(files(&stranger_dir, "n3"), &cfg_for("n3", "n2")).unwrap();
    let stranger_to_n1 = Tls::load(files(&stranger_dir, "n3"), &cfg_for("n3", "n1")).unwrap();
    issue(&elsewhere, &other, &["n2"]);
    let other_ca_as_n2 = Tls::load(
        TlsFiles {
            ca: elsewhere.join("both.pem"),
            ..files(&elsewhere, "n2")
        },
        &cfg_for("n2", "n1"),
    )
    .unwrap();
    let before = unauthenticated(&metrics_text(&pair.n2.http).await);
    attack(
        &client(&n2_grpc, "n2", "n1", None),
        "n1",
        &standby,
        "no certificate",
    )
    .await;
    attack(
        &client(&n2_grpc, "n2", "n1", Some(&other_ca)),
        "n1",
        &standby,
        "another CA",
    )
    .await;
    attack(
        &client(&n2_grpc, "n2", "n1", Some(&stranger)),
        "n1",
        &standby,
        "the right CA, named n3",
    )
    .await;

    // The primary's store is only for its standby: a snapshot request
    // from any of them, claiming to be n2, is refused too.
    let n1_grpc = listen_addr(&pair.n1.args);
    let to_primary = [
        ("no certificate", None),
        ("another CA", Some(&other_ca_as_n2)),
        ("the right CA, named n3", Some(&stranger_to_n1)),
    ];
    for (what, tls) in to_primary {
        let asked = client(&n1_grpc, "n1", "n2", tls)
            .fetch_snapshot(SnapshotRequest {
                header: header("n2", standby.epoch),
                snapshot_id: 0,
                offset: 0,
                crc_after_data: true,
            })
            .await;
        assert!(
            asked.is_err(),
            "{what}: the primary accepted a snapshot request"
        );
    }

    let after = crate::health(&pair.n2.http).await;
    assert_eq!(
        (
            after.epoch,
            after.last_lsn,
            after.role.as_str(),
            after.state_hash.as_str()
        ),
        (
            standby.epoch,
            standby.last_lsn,
            "standby",
            standby.state_hash.as_str()
        ),
        "an attacker changed the standby"
    );
    let primary = crate::health(&pair.n1.http).await;
    assert_eq!(
        (primary.role.as_str(), primary.epoch),
        ("primary", standby.epoch)
    );
    let refused = unauthenticated(&metrics_text(&pair.n2.http).await) - before;
    assert!(refused >= 3, "{refused} refusals counted on n2");
    assert!(
        pair.n2
            .log_tail(200)
            .contains("replication connection refused"),
        "{}",
        pair.n2.log_tail(50)
    );

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
