//! The store's file: how it is opened (WAL journal, `synchronous=NORMAL`),
//! what marks it as a walrep store, its tables, and the replication state
//! kept in the same file as the data.
//!
//! ```sql
//! kv           (k BLOB PRIMARY KEY, v BLOB, h INTEGER)  -- h: the entry's hash
//! walrep_state (applied_lsn, state_hash, records_applied)  -- one row
//! ```
//!
//! `records_applied` counts every record ever applied to this state: it
//! equals `applied_lsn` unless a record was applied twice (or skipped), so
//! anyone with the sqlite3 CLI can check exactly-once apply.

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use walrep::{Lsn, StateMachineError};

/// `PRAGMA application_id` of a walrep store: "WRSQ".
pub const APPLICATION_ID: i32 = 0x5752_5351;
/// `PRAGMA user_version`: the layout of the tables above.
pub const SCHEMA_VERSION: i32 = 1;

/// What the store's `walrep_state` row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredState {
    pub applied: Lsn,
    pub state_hash: u64,
    pub records_applied: u64,
}

fn sql_err(what: String) -> impl FnOnce(rusqlite::Error) -> StateMachineError {
    move |e| StateMachineError::with_source(what, e)
}

/// Opens (creating it if missing) the store at `path` for reading and
/// writing, in WAL journal mode with `synchronous=NORMAL`: a commit is
/// not fsynced, a checkpoint is (`SqliteStore::persist`), and walrep's own
/// WAL holds every record until then.
pub fn open_store(path: &Path) -> Result<(Connection, StoredState), StateMachineError> {
    let shown = path.display();
    let conn = Connection::open(path).map_err(sql_err(format!("opening {shown}")))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| not_a_store(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StateMachineError::new(format!(
            "{shown}: SQLite refused WAL journal mode (it stays in {mode} mode)"
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA busy_timeout = 10000;",
    )
    .map_err(sql_err(format!("configuring {shown}")))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(|e| not_a_store(path, e))?;
    if tables == 0 {
        create(&conn).map_err(sql_err(format!("creating the tables of {shown}")))?;
    }
    let state = check_and_read(&conn, path)?;
    Ok((conn, state))
}

/// Opens `path` read-only (a snapshot's copy, a received snapshot) and
/// returns what it holds, refusing anything that is not a walrep store.
pub fn read_only(path: &Path) -> Result<(Connection, StoredState), StateMachineError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err(format!("opening {}", path.display())))?;
    let state = check_and_read(&conn, path)?;
    Ok((conn, state))
}

fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {SCHEMA_VERSION};
         CREATE TABLE kv (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL, h INTEGER NOT NULL);
         CREATE TABLE walrep_state (
             applied_lsn INTEGER NOT NULL,
             state_hash INTEGER NOT NULL,
             records_applied INTEGER NOT NULL
         );
         INSERT INTO walrep_state VALUES (0, 0, 0);
         COMMIT;"
    ))
}

/// The store's identity, then its state row.
fn check_and_read(conn: &Connection, path: &Path) -> Result<StoredState, StateMachineError> {
    let shown = path.display();
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| not_a_store(path, e))?;
    if app_id != APPLICATION_ID {
        return Err(StateMachineError::new(format!(
            "{shown} is an SQLite database but not a walrep store (application_id {app_id:#x}, \
             a walrep store has {APPLICATION_ID:#x}); move it aside or use another data dir"
        )));
    }
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| not_a_store(path, e))?;
    if version != SCHEMA_VERSION {
        return Err(StateMachineError::new(format!(
            "{shown} is a walrep store of schema version {version}; this build reads version \
             {SCHEMA_VERSION}"
        )));
    }
    read_state(conn).map_err(sql_err(format!("reading walrep_state in {shown}")))
}

/// The `walrep_state` row.
pub fn read_state(conn: &Connection) -> rusqlite::Result<StoredState> {
    conn.query_row(
        "SELECT applied_lsn, state_hash, records_applied FROM walrep_state",
        [],
        |r| {
            Ok(StoredState {
                applied: Lsn(r.get::<_, i64>(0)? as u64),
                state_hash: r.get::<_, i64>(1)? as u64,
                records_applied: r.get::<_, i64>(2)? as u64,
            })
        },
    )
}

/// A failure to read a file that should be an SQLite database.
fn not_a_store(path: &Path, e: rusqlite::Error) -> StateMachineError {
    let not_a_db = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    );
    let msg = if not_a_db {
        format!(
            "{} is not an SQLite database or is corrupt; move it aside to resync this node \
             from its peer",
            path.display()
        )
    } else {
        format!("reading {}", path.display())
    };
    StateMachineError::with_source(msg, e)
}

/// The value and entry hash stored for `key`.
pub fn lookup(conn: &Connection, key: &[u8]) -> rusqlite::Result<Option<(Vec<u8>, u64)>> {
    conn.prepare_cached("SELECT v, h FROM kv WHERE k = ?1")?
        .query_row([key], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .optional()
}

/// Checkpoints every frame of SQLite's WAL into the database file,
/// waiting (busy timeout) for readers of older states to finish; true if
/// it got them all. The caller holds the only writer.
pub fn checkpoint_all(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0 && log >= 0 && log == done)
}

/// Runs a passive checkpoint: true if every frame of SQLite's WAL is now
/// in the database file (and so fsynced: in WAL mode SQLite syncs the WAL
/// before a checkpoint and the database after it).
pub fn checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0 && log >= 0 && log == done)
}
