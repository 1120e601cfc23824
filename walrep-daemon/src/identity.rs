//! Whose data a data dir holds, and checks that a start does not mix nodes
//! up.
//!
//! `DATA_DIR/identity` names the cluster and the node the directory was
//! created for, as two `key = "value"` lines. It is written once, before
//! anything else in the directory, and checked at every start: a data dir
//! of another cluster or another node refuses to start instead of being
//! rewound or resynced into the wrong pair. A data dir from before this
//! file existed (a WAL but no identity) adopts the configured names once,
//! with a log line.
//!
//! The same start also refuses a peer address that reaches this node
//! itself: such a node would never hear a peer and would run alone.

use crate::error::DaemonError;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;

const FILE: &str = "identity";
const TMP: &str = "identity.tmp";

/// The cluster and node a data dir belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: String,
    pub node_id: String,
}

impl Identity {
    fn encode(&self) -> String {
        format!(
            "# written once when this data dir was created; a start with other names is refused\ncluster_id = {:?}\nnode_id = {:?}\n",
            self.cluster_id, self.node_id
        )
    }

    fn decode(text: &str) -> Option<Identity> {
        let mut cluster_id = None;
        let mut node_id = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=')?;
            let value = unquote(value.trim())?;
            match key.trim() {
                "cluster_id" => cluster_id = Some(value),
                "node_id" => node_id = Some(value),
                _ => return None,
            }
        }
        Some(Identity {
            cluster_id: cluster_id?,
            node_id: node_id?,
        })
    }
}

/// Reverses `{:?}` of a string whose names passed config validation
/// (printable, no quotes or backslashes need escaping in practice).
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') || inner.contains('"') {
        return None;
    }
    Some(inner.to_string())
}

/// Checks `dir`'s identity against `want`, writing it when the directory
/// has none yet. Call after creating `dir` and before opening anything in
/// it. `Err` names both identities and what to do; nothing was changed.
pub fn check_or_write(dir: &Path, want: &Identity) -> Result<(), DaemonError> {
    let path = dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let Some(found) = Identity::decode(&text) else {
                return Err(DaemonError::Failed(format!(
                    "{} is damaged (expected `cluster_id = \"..\"` and `node_id = \"..\"` lines): restore it, or move {} away to start this node empty",
                    path.display(),
                    dir.display()
                )));
            };
            if found.cluster_id != want.cluster_id {
                return Err(DaemonError::Config(format!(
                    "data dir {} belongs to cluster {:?}, but this node is configured for cluster {:?}: point --data-dir at this cluster's directory, or fix --cluster-id",
                    dir.display(),
                    found.cluster_id,
                    want.cluster_id
                )));
            }
            if found.node_id != want.node_id {
                return Err(DaemonError::Config(format!(
                    "data dir {} belongs to node {:?}, but this node is configured as {:?}: each node needs its own data dir; fix --data-dir or --id",
                    dir.display(),
                    found.node_id,
                    want.node_id
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dir.join("wal").exists() {
                tracing::info!(
                    data_dir = %dir.display(),
                    cluster_id = %want.cluster_id,
                    node_id = %want.node_id,
                    "data dir has no identity file yet (made by an older walrep); recording this node's"
                );
            }
            write(dir, want)
        }
        Err(e) => Err(DaemonError::io(format!("reading {}", path.display()), e)),
    }
}

fn write(dir: &Path, identity: &Identity) -> Result<(), DaemonError> {
    let tmp = dir.join(TMP);
    let path = dir.join(FILE);
    let result = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(identity.encode().as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path))
        .and_then(|()| fs::File::open(dir)?.sync_all());
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DaemonError::io(format!("writing {}", path.display()), e)
    })
}

/// Refuses a peer address that reaches this node's own replication
/// listener (`listen` is the bound address). An address that does not
/// resolve is left to the node, which retries it.
pub async fn refuse_self_peer(peer_addr: &str, listen: SocketAddr) -> Result<(), DaemonError> {
    let Ok(resolved) = tokio::net::lookup_host(peer_addr).await else {
        return Ok(());
    };
    for peer in resolved {
        let reaches_us = peer == listen
            || (peer.port() == listen.port() && listen.ip().is_unspecified() && is_local(peer));
        if reaches_us {
            return Err(DaemonError::Config(format!(
                "peer address {peer_addr} ({peer}) is this node's own replication listener ({listen}): set --peer to the other node's address"
            )));
        }
    }
    Ok(())
}

/// Whether `addr` is an address of this machine that a listener on the
/// unspecified address would accept.
fn is_local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn id(cluster: &str, node: &str) -> Identity {
        Identity {
            cluster_id: cluster.into(),
            node_id: node.into(),
        }
    }

    #[test]
    fn a_fresh_dir_records_its_identity_and_accepts_the_same_names_again() {
        let dir = TempDir::new().unwrap();
        check_or_write(dir.path(), &id("walrep", "n1")).unwrap();
        check_or_write(dir.path(), &id("walrep", "n1")).unwrap();
        assert!(!dir.path().join(TMP).exists());
    }

    #[test]
    fn a_dir_of_another_cluster_or_node_refuses_to_start_naming_both() {
        let dir = TempDir::new().unwrap();
        check_or_write(dir.path(), &id("walrep", "n1")).unwrap();
        let before = fs::read(dir.path().join(FILE)).unwrap();

        let err = check_or_write(dir.path(), &id("beta", "n1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"walrep\"") && err.contains("\"beta\""),
            "{err}"
        );
        let err = check_or_write(dir.path(), &id("walrep", "n2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"n1\"") && err.contains("\"n2\""), "{err}");

        assert_eq!(fs::read(dir.path().join(FILE)).unwrap(), before);
    }

    #[test]
    fn a_damaged_identity_file_is_refused_not_rewritten() {
        let dir = TempDir::new().unwrap();
        fs::write(dir.path().join(FILE), "cluster_id = \"walrep\"\n").unwrap();
        let err = check_or_write(dir.path(), &id("walrep", "n1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE)).unwrap(),
            "cluster_id = \"walrep\"\n"
        );
    }

    #[tokio::test]
    async fn a_peer_address_reaching_our_own_listener_is_refused() {
        let listen: SocketAddr = "127.0.0.1:7401".parse().unwrap();
        for peer in ["127.0.0.1:7401", "localhost:7401"] {
            let err = refuse_self_peer(peer, listen)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("own replication listener"), "{peer}: {err}");
        }
        let any: SocketAddr = "0.0.0.0:7401".parse().unwrap();
        assert!(refuse_self_peer("127.0.0.1:7401", any).await.is_err());
        assert!(refuse_self_peer("127.0.0.1:7402", listen).await.is_ok());
        assert!(refuse_self_peer("127.0.0.1:7402", any).await.is_ok());
        // Another loopback address is another listener.
        assert!(refuse_self_peer("127.0.0.2:7401", listen).await.is_ok());
    }
}
