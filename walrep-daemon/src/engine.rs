//! The engine a node hosts: the demo KV engine (`kv`, the default) or
//! SQLite (`sqlite`), chosen with the `engine` setting. Both serve the same
//! HTTP KV API and WAL commands (`kv::Command`); this is all the node and
//! the HTTP API see of them.
//!
//! A data dir holds one engine's state (`DIR/kv/` or `DIR/sqlite/`); a node
//! started with the other engine on it is refused rather than left to
//! resync everything.

use crate::kv::KvStore;
use crate::sqlite::SqliteStore;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use walrep::{Lsn, StateMachine, StateMachineError};

/// Which engine a node runs (the `engine` setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// The in-memory demo map with file snapshots (`kv/`).
    #[default]
    Kv,
    /// One SQLite database file (`sqlite/`).
    Sqlite,
}

impl EngineKind {
    pub const ALL: [EngineKind; 2] = [EngineKind::Kv, EngineKind::Sqlite];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Kv => "kv",
            EngineKind::Sqlite => "sqlite",
        }
    }

    /// Where its state lives in a node's data dir.
    fn subdir(self) -> &'static str {
        self.as_str()
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EngineKind, String> {
        EngineKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an engine (kv or sqlite)"))
    }
}

/// An open engine, shared by the replicator, the HTTP API and the
/// node's periodic persist.
#[derive(Clone)]
pub enum Engine {
    Kv(Arc<KvStore>),
    Sqlite(Arc<SqliteStore>),
}

impl Engine {
    /// Opens `kind`'s state in `data_dir`, refusing a data dir that holds
    /// the other engine's.
    pub fn open(kind: EngineKind, data_dir: &Path) -> Result<Engine, StateMachineError> {
        for other in EngineKind::ALL.into_iter().filter(|k| *k != kind) {
            let theirs = data_dir.join(other.subdir());
            if theirs.exists() {
                return Err(StateMachineError::new(format!(
                    "{} holds the state of the {other} engine ({}); start with --engine \
                     {other}, or use another data dir for the {kind} engine",
                    data_dir.display(),
                    theirs.display()
                )));
            }
        }
        let dir = data_dir.join(kind.subdir());
        Ok(match kind {
            EngineKind::Kv => Engine::Kv(Arc::new(KvStore::open(dir)?)),
            EngineKind::Sqlite => Engine::Sqlite(Arc::new(SqliteStore::open(dir)?)),
        })
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Kv(_) => EngineKind::Kv,
            Engine::Sqlite(_) => EngineKind::Sqlite,
        }
    }

    /// What the replicator applies to.
    pub fn state_machine(&self) -> Arc<dyn StateMachine> {
        match self {
            Engine::Kv(kv) => kv.clone(),
            Engine::Sqlite(s) => s.clone(),
        }
    }

    /// The value of `key`. The KV engine's map answers at once; SQLite's
    /// read waits for the store's connection, which a batch's commit or a
    /// checkpoint (fsyncs) may hold for milliseconds or more, so it runs
    /// on a blocking thread: the node's runtime thread, which also carries
    /// heartbeats and replication, never waits for it. At most
    /// `READ_THREADS` reads hold a blocking thread at once (the permit goes
    /// with the read to its thread, so a caller that gives up frees none
    /// early); the others wait for one without a thread, leaving the pool
    /// to the WAL's fsyncs and the applies.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Bytes>, StateMachineError> {
        match self {
            Engine::Kv(kv) => Ok(kv.get(&key)),
            Engine::Sqlite(s) => {
                let permit = s.reads.clone().acquire_owned().await.map_err(|e| {
                    StateMachineError::with_source("waiting for a reader thread", e)
                })?;
                let s = s.clone();
                tokio::task::spawn_blocking(move || {
                    let _thread = permit;
                    s.get(&key)
                })
                .await
                .map_err(|e| StateMachineError::with_source("reading a key", e))?
            }
        }
    }

    /// Equal on two nodes of the same engine iff their states are.
    pub fn state_hash(&self) -> u64 {
        match self {
            Engine::Kv(kv) => kv.state_hash(),
            Engine::Sqlite(s) => s.state_hash(),
        }
    }

    /// Makes the applied state durable (KV: writes its snapshot file;
    /// SQLite: checkpoints) so walrep may trim the WAL before it.
    pub fn persist(&self) -> Result<Lsn, StateMachineError> {
        match self {
            Engine::Kv(kv) => kv.persist_snapshot(),
            Engine::Sqlite(s) => s.persist(),
        }
    }

    /// Applied records between two persists when `every` is asked for: a
    /// KV snapshot writes the whole map, so it waits for as many records
    /// as the map has keys; a checkpoint costs what was written since the
    /// last one.
    pub fn persist_every(&self, every: u64) -> u64 {
        match self {
            Engine::Kv(kv) => every.max(kv.len() as u64),
            Engine::Sqlite(_) => every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use walrep::{Lsn, StateMachine};

    /// An SQLite engine holding `k = v` whose connection is busy (a
    /// commit, a checkpoint): a thread holds it until the returned sender
    /// is used, or for 10 s; joined, that thread says whether it was used
    /// in time. The directory lives as long as the test holds it.
    fn busy_sqlite() -> (
        Engine,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<bool>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let Engine::Sqlite(store) = Engine::open(EngineKind::Sqlite, dir.path()).unwrap() else {
            panic!("an SQLite engine")
        };
        store
            .apply(Lsn(1), &crate::kv::command::encoded::put("k", "v"))
            .unwrap();
        let engine = Engine::Sqlite(store.clone());
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (done, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            store.with_connection_held(|| {
                locked_tx.send(()).unwrap();
                done_rx.recv_timeout(Duration::from_secs(10)).is_ok()
            })
        });
        locked_rx.recv().unwrap();
        (engine, done, holder, dir)
    }

    /// A GET on the SQLite engine while its connection is busy waits on a
    /// blocking thread, not on the runtime's thread: the test's one-thread
    /// runtime, as the node's, goes on meanwhile. The connection is held
    /// until that runtime signals it ran on while the read was pending (or
    /// 10 s pass, which is the failure: a read on the runtime's thread
    /// leaves it no way to signal).
    #[tokio::test]
    async fn a_sqlite_read_waits_for_a_busy_store_off_the_runtime_thread() {
        let (engine, done, holder, _dir) = busy_sqlite();
        let read = tokio::spawn(async move { engine.get(b"k".to_vec()).await });
        tokio::task::yield_now().await;
        let _ = done.send(());
        let value = read.await.unwrap().unwrap();
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
        assert!(
            holder.join().unwrap(),
            "the runtime ran on while the read waited for the busy store"
        );
    }

    /// A burst of GETs while the SQLite store's connection is busy holds
    /// at most `READ_THREADS` blocking threads: other blocking work (the
    /// WAL's fsync, an apply) still gets a thread of a small pool. The
    /// connection is held until that work ran (or 10 s pass, the failure:
    /// with every thread waiting on the connection, it cannot run).
    #[test]
    fn a_burst_of_sqlite_reads_leaves_blocking_threads_for_the_wal() {
        let (engine, done, holder, _dir) = busy_sqlite();
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(crate::sqlite::READ_THREADS + 2)
            .build()
            .unwrap();
        rt.block_on(async move {
            let reads: Vec<_> = (0..16)
                .map(|_| {
                    let engine = engine.clone();
                    tokio::spawn(async move { engine.get(b"k".to_vec()).await })
                })
                .collect();
            for _ in 0..32 {
                tokio::task::yield_now().await;
            }
            tokio::task::spawn_blocking(move || {
                let _ = done.send(());
            })
            .await
            .unwrap();
            for read in reads {
                assert_eq!(read.await.unwrap().unwrap().as_deref(), Some(&b"v"[..]));
            }
        });
        assert!(
            holder.join().unwrap(),
            "other blocking work ran while the reads waited for the busy store"
        );
    }
}
