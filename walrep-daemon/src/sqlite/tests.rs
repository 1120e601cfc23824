use super::*;
use std::sync::Arc;

use crate::kv::command::encoded::{del, put};

fn store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (SqliteStore::open(dir.path()).unwrap(), dir)
}

fn value(s: &SqliteStore, k: &str) -> Option<Bytes> {
    s.get(k.as_bytes()).unwrap()
}

fn snapshot_of(s: &SqliteStore) -> (Lsn, Vec<u8>) {
    let mut out = Vec::new();
    let lsn = s.snapshot(&mut out).unwrap();
    (lsn, out)
}

#[test]
fn a_batch_is_one_transaction_with_its_lsn_and_a_bad_record_applies_none() {
    let (s, _d) = store();
    let out = s
        .apply_batch(&[(Lsn(1), &put("x", "1")), (Lsn(2), &put("x", "2"))])
        .unwrap();
    assert_eq!(out, vec![Bytes::new(), Bytes::from("1")]);
    let err = s
        .apply_batch(&[(Lsn(3), &put("y", "3")), (Lsn(4), &b"\xff"[..])])
        .unwrap_err();
    assert!(err.message().contains("record 4"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(s.applied_lsn(), Lsn(2));
    assert_eq!(value(&s, "y"), None);
    let stored = s.stored_state().unwrap();
    assert_eq!((stored.applied, stored.records_applied), (Lsn(2), 2));
}

#[test]
fn a_reopened_store_holds_its_lsn_and_applies_nothing_twice() {
    let (s, d) = store();
    s.apply_batch(&[(Lsn(1), &put("x", "1")), (Lsn(2), &put("y", "2"))])
        .unwrap();
    let hash = s.state_hash();
    drop(s);
    let s = SqliteStore::open(d.path()).unwrap();
    assert_eq!(s.applied_lsn(), Lsn(2));
    assert_eq!(s.state_hash(), hash);
    // Redelivered records are skipped, new ones applied.
    s.apply_batch(&[(Lsn(2), &put("y", "again")), (Lsn(3), &del("x"))])
        .unwrap();
    assert_eq!(value(&s, "y"), Some(Bytes::from("2")));
    assert_eq!(value(&s, "x"), None);
    let stored = s.stored_state().unwrap();
    assert_eq!((stored.applied, stored.records_applied), (Lsn(3), 3));
}

#[test]
fn equal_stores_hash_equal_whatever_the_order() {
    let (a, _da) = store();
    let (b, _db) = store();
    a.apply_batch(&[(Lsn(1), &put("x", "1")), (Lsn(2), &put("y", "2"))])
        .unwrap();
    b.apply_batch(&[(Lsn(1), &put("y", "2")), (Lsn(2), &put("x", "0"))])
        .unwrap();
    assert_ne!(a.state_hash(), b.state_hash());
    b.apply(Lsn(3), &put("x", "1")).unwrap();
    assert_eq!(a.state_hash(), b.state_hash());
    // Swapping two values of the same length changes the hash.
    a.apply_batch(&[(Lsn(3), &put("x", "2")), (Lsn(4), &put("y", "1"))])
        .unwrap();
    assert_ne!(a.state_hash(), b.state_hash());
}

/// A checkpoint makes what was applied durable; nothing else does.
#[test]
fn durable_lsn_advances_only_with_a_checkpoint() {
    let (s, _d) = store();
    s.apply(Lsn(1), &put("x", "1")).unwrap();
    assert_eq!(s.durable_lsn(), Lsn::ZERO);
    assert_eq!(s.persist().unwrap(), Lsn(1));
    assert_eq!(s.durable_lsn(), Lsn(1));
}

#[test]
fn a_snapshot_round_trips_and_replaces_everything() {
    let (a, _da) = store();
    let big = "v".repeat(3000);
    for i in 1..=200u64 {
        a.apply(Lsn(i), &put(&format!("k{i}"), &big)).unwrap();
    }
    a.apply(Lsn(201), &del("k7")).unwrap();
    let (lsn, snap) = snapshot_of(&a);
    assert_eq!(lsn, Lsn(201));
    assert!(snap.len() > 600_000, "{} bytes", snap.len());

    let (b, db) = store();
    b.apply(Lsn(1), &put("only-b", "1")).unwrap();
    b.restore(lsn, &mut &snap[..]).unwrap();
    assert_eq!(b.applied_lsn(), Lsn(201));
    assert_eq!(b.durable_lsn(), Lsn(201));
    assert_eq!(b.state_hash(), a.state_hash());
    assert_eq!(value(&b, "only-b"), None);
    assert_eq!(value(&b, "k7"), None);
    assert_eq!(value(&b, "k8"), Some(Bytes::from(big.clone())));
    // It goes on from there, and survives a reopen.
    b.apply(Lsn(202), &put("after", "1")).unwrap();
    drop(b);
    let b = SqliteStore::open(db.path()).unwrap();
    assert_eq!(b.applied_lsn(), Lsn(202));
    assert_eq!(value(&b, "after"), Some(Bytes::from("1")));
    let files: Vec<String> = std::fs::read_dir(db.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(files.is_empty(), "temporary files left: {files:?}");
}

/// The state a restored store holds is whole: SQLite finds no damage,
/// every row's stored hash is its (key, value)'s, their XOR is the stored
/// state hash, and `records_applied` is its LSN.
fn assert_one_state(s: &SqliteStore) {
    let conn = s.conn.lock().unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stmt = conn.prepare("SELECT k, v, h FROM kv").unwrap();
    let mut xor = 0u64;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap();
    for row in rows {
        let (k, v, h) = row.unwrap();
        assert_eq!(
            entry_hash(&k, &v),
            h,
            "row {:?}",
            String::from_utf8_lossy(&k)
        );
        xor ^= h;
    }
    let stored = schema::read_state(&conn).unwrap();
    assert_eq!(xor, stored.state_hash);
    assert_eq!(stored.records_applied, stored.applied.0);
}

/// A snapshot streams the database file while applies and checkpoints go
/// on: each one restores to exactly the state at the LSN it returned.
#[test]
fn a_snapshot_beside_applies_and_checkpoints_holds_exactly_its_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 1..=600u64 {
                // Overwrites as well as inserts, values over many pages.
                let key = format!("k{}", i % 150);
                a.apply(Lsn(i), &put(&key, &format!("{i}-{}", "v".repeat(6000))))
                    .unwrap();
                if i % 7 == 0 {
                    a.persist().unwrap();
                }
            }
        })
    };
    let mut snaps = Vec::new();
    while !writer.is_finished() {
        snaps.push(snapshot_of(&a));
    }
    writer.join().unwrap();
    assert!(snaps.len() > 1, "{} snapshots", snaps.len());
    for (lsn, snap) in snaps {
        let (b, _db) = store();
        b.restore(lsn, &mut &snap[..]).unwrap();
        assert_eq!(b.applied_lsn(), lsn);
        assert_one_state(&b);
        if lsn.0 > 0 {
            let key = format!("k{}", lsn.0 % 150);
            let v = value(&b, &key).expect("the last record's key");
            assert!(v.starts_with(format!("{}-", lsn.0).as_bytes()));
        }
    }
    // Once the snapshots are done, checkpoints complete again.
    assert_eq!(a.persist().unwrap(), Lsn(600));
}

/// Garbage, a truncated file, a foreign SQLite database and a snapshot of
/// another LSN are refused with a message saying which, and the store
/// keeps every byte it had.
#[test]
fn a_corrupt_or_foreign_snapshot_is_refused_and_nothing_is_lost() {
    let (a, _da) = store();
    for i in 1..=50u64 {
        a.apply(Lsn(i), &put(&format!("k{i}"), &"x".repeat(500)))
            .unwrap();
    }
    let (lsn, snap) = snapshot_of(&a);
    let foreign = {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("other.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        std::fs::read(&p).unwrap()
    };
    let cases: [(&str, Vec<u8>, Lsn, &str); 5] = [
        ("garbage", vec![7u8; 10_000], lsn, "not an SQLite database"),
        ("empty", Vec::new(), lsn, "not an SQLite database"),
        (
            "truncated",
            snap[..snap.len() / 2].to_vec(),
            lsn,
            "truncated or corrupt",
        ),
        ("foreign", foreign, lsn, "not a walrep store"),
        (
            "other lsn",
            snap.clone(),
            Lsn(49),
            "sent as the state at LSN 49",
        ),
    ];
    let (b, db) = store();
    b.apply(Lsn(1), &put("mine", "kept")).unwrap();
    let hash = b.state_hash();
    for (what, bytes, lsn, expected) in cases {
        let err = b.restore(lsn, &mut &bytes[..]).unwrap_err();
        assert!(err.chain().contains(expected), "{what}: {}", err.chain());
        assert_eq!(b.applied_lsn(), Lsn(1), "{what}");
        assert_eq!(b.state_hash(), hash, "{what}");
        assert_eq!(value(&b, "mine"), Some(Bytes::from("kept")), "{what}");
    }
    assert!(!db.path().join("restore.tmp").exists());
}

#[test]
fn a_foreign_or_corrupt_store_file_is_refused_at_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    std::fs::write(&path, vec![1u8; 8192]).unwrap();
    let err = SqliteStore::open(dir.path()).err().expect("refused");
    assert!(
        err.message().contains("is not an SQLite database") && err.message().contains("store.db"),
        "{}",
        err.chain()
    );
    std::fs::remove_file(&path).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (x);")
        .unwrap();
    let err = SqliteStore::open(dir.path()).err().expect("refused");
    assert!(
        err.message().contains("not a walrep store"),
        "{}",
        err.chain()
    );
}

#[test]
fn leftovers_of_an_interrupted_snapshot_or_restore_go_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    for name in [
        "restore.tmp",
        "snapshot-3.tmp",
        "replaced.tmp",
        "restore.tmp-wal",
    ] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    drop(SqliteStore::open(dir.path()).unwrap());
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

/// A restore interrupted after it moved the store aside, before the
/// snapshot took its place: the old store comes back at open, with its
/// LSN, not an empty store that would need a peer's snapshot again.
#[test]
fn a_store_a_crashed_restore_moved_aside_comes_back_at_open() {
    let (s, d) = store();
    s.apply_batch(&[(Lsn(1), &put("x", "1")), (Lsn(2), &put("y", "2"))])
        .unwrap();
    let hash = s.state_hash();
    drop(s);
    std::fs::rename(d.path().join(STORE_FILE), d.path().join("replaced.tmp")).unwrap();
    std::fs::write(d.path().join("restore.tmp"), b"half a snapshot").unwrap();
    let s = SqliteStore::open(d.path()).unwrap();
    assert_eq!(s.applied_lsn(), Lsn(2));
    assert_eq!(s.state_hash(), hash);
    assert!(!d.path().join("replaced.tmp").exists());
    assert!(!d.path().join("restore.tmp").exists());
}

/// With the engine reporting what its checkpoints made durable, walrep
/// lets go of the WAL before it although the retention bound is far away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_store_lets_walrep_trim_its_wal() {
    use walrep::Replicator;
    use walrep::testing::Pair;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let pair = Pair::builder(move |id| {
        Arc::new(SqliteStore::open(root.join(id.to_string())).expect("store opens"))
    })
    .config(|c| c.wal_retention_bytes = 1 << 30)
    .start()
    .await
    .unwrap();
    pair.wait_streaming().await.unwrap();
    let primary = pair.primary();
    let mut last = Lsn::ZERO;
    for i in 0..20 {
        last = primary
            .replica()
            .apply(Bytes::from(put(&format!("k{i}"), "v")))
            .await
            .unwrap()
            .lsn;
    }
    assert_eq!(primary.replica().health().first_lsn, Lsn(1));
    assert_eq!(primary.engine().persist().unwrap(), last);
    let mut health = primary.replica().subscribe();
    let trimmed = tokio::time::timeout(
        pair.wait_timeout(),
        health.wait_for(|h| h.first_lsn > Lsn(1)),
    )
    .await
    .expect("the WAL was not trimmed after a checkpoint")
    .unwrap()
    .first_lsn;
    assert!(trimmed <= last.next(), "{trimmed}");
}

/// `restore_file` takes walrep's received file as the store itself: the
/// database file afterwards is the same inode (renamed, not copied), the
/// received path is gone, and the state is the snapshot's.
#[test]
fn restore_file_moves_the_received_file_into_place_without_copying() {
    use std::os::unix::fs::MetadataExt;
    let (a, _da) = store();
    for i in 1..=100u64 {
        a.apply(Lsn(i), &put(&format!("k{i}"), &"y".repeat(2000)))
            .unwrap();
    }
    let (lsn, snap) = snapshot_of(&a);
    let (b, db) = store();
    b.apply(Lsn(1), &put("only-b", "1")).unwrap();
    // walrep's snapshot directory is under the data directory, beside
    // the engine's.
    let snapshots = db.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    let received = snapshots.join("incoming.snapshot");
    std::fs::write(&received, &snap).unwrap();
    let inode = std::fs::metadata(&received).unwrap().ino();
    b.restore_file(lsn, &received).unwrap();
    assert!(
        !received.exists(),
        "the received file was moved, not copied"
    );
    assert_eq!(
        std::fs::metadata(b.path()).unwrap().ino(),
        inode,
        "the store is the received file itself"
    );
    assert_eq!(b.applied_lsn(), lsn);
    assert_eq!(b.state_hash(), a.state_hash());
    assert_eq!(value(&b, "only-b"), None);
    assert_one_state(&b);
}

/// A received file that is not the announced store is refused by
/// `restore_file` as by `restore`: the store stays, and no temporary file
/// is left.
#[test]
fn restore_file_refuses_a_corrupt_or_mislabelled_file_and_keeps_the_store() {
    let (a, _da) = store();
    for i in 1..=20u64 {
        a.apply(Lsn(i), &put(&format!("k{i}"), "v")).unwrap();
    }
    let (lsn, snap) = snapshot_of(&a);
    let (b, db) = store();
    b.apply(Lsn(1), &put("mine", "kept")).unwrap();
    let received = db.path().join("incoming.snapshot");
    for (what, bytes, lsn, expected) in [
        ("garbage", vec![7u8; 10_000], lsn, "not an SQLite database"),
        (
            "other lsn",
            snap.clone(),
            Lsn(19),
            "sent as the state at LSN 19",
        ),
    ] {
        std::fs::write(&received, &bytes).unwrap();
        let err = b.restore_file(lsn, &received).unwrap_err();
        assert!(err.chain().contains(expected), "{what}: {}", err.chain());
        assert_eq!(b.applied_lsn(), Lsn(1), "{what}");
        assert_eq!(value(&b, "mine"), Some(Bytes::from("kept")), "{what}");
        assert!(!db.path().join("restore.tmp").exists(), "{what}");
    }
}

/// The bytes of a snapshot source, read as walrep reads them.
fn read_source(source: &dyn walrep::SnapshotSource) -> Vec<u8> {
    let mut bytes = Vec::new();
    source
        .read_from(0)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(bytes.len() as u64, source.total_bytes());
    bytes
}

/// `snapshot_source` hands walrep the database file itself, read in
/// place: while the source lives, applies and checkpoints go on without
/// changing its bytes (they restore to exactly the state at its LSN), a
/// second pin is refused rather than waiting behind the first, and once
/// the source is dropped a checkpoint completes again.
#[test]
fn a_snapshot_source_pins_the_database_file_until_it_is_dropped() {
    let (a, _da) = store();
    for i in 1..=50u64 {
        a.apply(Lsn(i), &put(&format!("k{i}"), &"z".repeat(1000)))
            .unwrap();
    }
    let hash_at_50 = a.state_hash();
    let source = a.snapshot_source().unwrap().expect("the database file");
    assert_eq!(source.lsn(), Lsn(50));
    let before = read_source(&*source);
    for i in 51..=150u64 {
        a.apply(Lsn(i), &put(&format!("k{i}"), &"w".repeat(1000)))
            .unwrap();
    }
    a.persist().unwrap();
    assert!(a.durable_lsn() < Lsn(150), "no checkpoint passes the pin");
    let during = read_source(&*source);
    assert!(during == before, "the pinned bytes did not change");
    let mut tail = Vec::new();
    source
        .read_from(100)
        .unwrap()
        .read_to_end(&mut tail)
        .unwrap();
    assert!(
        tail[..] == before[100..],
        "a reader from an offset reads the rest"
    );
    let Err(err) = a.snapshot_source() else {
        panic!("a second pin while the first lives")
    };
    assert!(err.chain().contains("still held"), "{}", err.chain());
    let (b, _db) = store();
    b.restore(source.lsn(), &mut &during[..]).unwrap();
    assert_eq!(b.state_hash(), hash_at_50);
    drop(source);
    a.persist().unwrap();
    assert_eq!(
        a.durable_lsn(),
        Lsn(150),
        "released: the checkpoint completes"
    );
    assert!(
        a.snapshot_source().unwrap().is_some(),
        "and it can pin again"
    );
}

/// Whether another process sees a lock held on SQLite's shared-lock bytes
/// of the database file at `path` (what SQLite's own connection holds for
/// its whole life), asked with `fcntl(F_GETLK)` from python3; `None`
/// without python3.
fn shared_lock_held_by_another_process(path: &std::path::Path) -> Option<bool> {
    let script = "import fcntl, os, struct, sys\n\
fd = os.open(sys.argv[1], os.O_RDWR)\n\
q = struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0x40000002, 510, 0)\n\
t = struct.unpack('hhqqi', fcntl.fcntl(fd, fcntl.F_GETLK, q))[0]\n\
print('held' if t != fcntl.F_UNLCK else 'free')\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim() == "held")
}

/// SQLite's locks are POSIX locks, which a process loses on the close of
/// any descriptor of the file: a snapshot that opened and closed the
/// database file itself left the store's connection unlocked, and an
/// operator's `sqlite3` could then checkpoint and delete the WAL under the
/// running node. Serving and writing snapshots keeps the lock.
#[test]
fn serving_a_snapshot_keeps_the_stores_sqlite_lock() {
    let (a, _da) = store();
    a.apply(Lsn(1), &put("k", "v")).unwrap();
    let Some(before) = shared_lock_held_by_another_process(&a.path()) else {
        eprintln!("SKIPPED serving_a_snapshot_keeps_the_stores_sqlite_lock: python3 not found");
        return;
    };
    assert!(before, "an open store holds SQLite's shared lock");
    let source = a.snapshot_source().unwrap().expect("the database file");
    read_source(&*source);
    drop(source);
    let _ = snapshot_of(&a);
    assert_eq!(
        shared_lock_held_by_another_process(&a.path()),
        Some(true),
        "the store still holds its lock after serving snapshots"
    );
}
