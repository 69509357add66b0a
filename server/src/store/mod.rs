//! SQLite persistence of everything the loop does: tasks, clarifications, test
//! cases (and which were dropped), attempts, sandbox test runs with per-test
//! results, validation/security findings, critiques, user feedback and every
//! LLM call with its token usage and latency.
//!
//! Owns: the schema (`migrations/*.sql`, applied in order by `PRAGMA user_version`)
//! and the typed read/write API over it. Must not know about LLM providers, LSP,
//! the CLI or the sandbox: it stores the plain data of `crate::types` and strings
//! the callers hand it.
//!
//! Concurrency: one `rusqlite::Connection` behind a `Mutex`, so `Store` is
//! `Send + Sync` and can sit in an `Arc`. Every method is synchronous and short
//! (a few ms); call it directly or from `spawn_blocking`. Several processes may
//! open the same file: WAL mode plus a 5,000 ms busy timeout lets them share it.
//!
//! Files by role: this one opens the database, migrates it and holds the
//! error type; `rows.rs` the row types (each read straight from its SQL row)
//! and how the enums are stored (one `ToSql`/`FromSql` each); `write.rs` the
//! inserts and updates; `read.rs` the queries; `tests.rs` the tests.

mod read;
mod rows;
mod write;

pub mod memory;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

/// Defined in `crate::types` (every front end uses them); re-exported here
/// because the store is where most callers met them first.
pub use crate::types::{TaskKind, TaskStatus};
pub use rows::{
    AttemptId, AttemptRecord, AttemptSummary, CandidateRow, Clarification, Critique, DropInfo,
    FeedbackRecord, LlmCallRecord, NewTask, RoleUsage, SelectionRow, StoredFinding, StoredTestCase,
    TaskDetail, TaskId, TaskRow, TaskSummary,
};
pub use write::MAX_RESPONSE_BYTES;

mod metrics;
pub use metrics::{Count, LlmCallRow, Usage, WorkspaceStats};

/// Schema migrations, in order. Entry `i` takes the database from
/// `user_version == i` to `i + 1`. Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_llm_call_response.sql"),
    include_str!("migrations/0003_candidates.sql"),
    include_str!("migrations/0004_real_code.sql"),
    include_str!("migrations/0005_user_tests.sql"),
    include_str!("migrations/0006_memory.sql"),
];

/// How long a statement waits for another connection's write lock, ms.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Errors of the store. Messages name the cause and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory that should hold the database could not be created.
    #[error("cannot create directory {path} for the docsmith database: {source}; check permissions or choose another path")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// SQLite could not open (or configure) the database file.
    #[error("cannot open docsmith database {path}: {source}; check the file is writable and not corrupt (delete it to start a fresh history)")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The database was written by a newer docsmith whose schema this build does not know.
    #[error("docsmith database {path} has schema version {found}, newer than the {supported} this docsmith supports; upgrade docsmith or use another database file")]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    /// A migration script failed; the database is left at the previous version.
    #[error("migrating the docsmith database to schema version {version} failed: {source}; the database was left unchanged at version {}", .version - 1)]
    Migration {
        version: usize,
        source: rusqlite::Error,
    },
    /// A row the call refers to does not exist (wrong id, or deleted).
    #[error("{what} {id} not found in the docsmith database; it may belong to another database or was never created")]
    NotFound { what: &'static str, id: String },
    /// An argument outside the allowed set (e.g. a findings phase other than `validate`/`security`).
    #[error("invalid {what}: {value:?}; expected one of {expected}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A stored value could not be decoded (unknown enum name, bad JSON).
    #[error("stored {what} {value:?} cannot be read; the database was modified by another program or is corrupt")]
    Corrupt { what: &'static str, value: String },
    /// Any other SQLite failure (disk full, locked past the busy timeout, ...).
    #[error("docsmith database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    /// A stored value that does not decode ([`rows::Unreadable`], raised by
    /// the `FromSql` of an enum or a JSON column) is [`StoreError::Corrupt`];
    /// anything else is [`StoreError::Sqlite`].
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::FromSqlConversionFailure(_, _, inner) = &e {
            if let Some(u) = inner.downcast_ref::<rows::Unreadable>() {
                return StoreError::Corrupt {
                    what: u.what,
                    value: u.value.clone(),
                };
            }
        }
        StoreError::Sqlite(e)
    }
}

/// Handle on the docsmith database. Cheap to share in an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating it and its parent directories if needed) the database at
    /// `path`, sets WAL mode, `foreign_keys=ON` and a 5,000 ms busy timeout, and
    /// applies pending migrations.
    ///
    /// Errors: [`StoreError::CreateDir`], [`StoreError::Open`], [`StoreError::NewerSchema`]
    /// when the file was written by a newer docsmith, [`StoreError::Migration`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite refused WAL mode; concurrent readers will block writers");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        Self::finish_open(conn, &path.display().to_string())
    }

    /// An empty database in memory (tests, `--no-history` runs).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::finish_open(conn, ":memory:")
    }

    fn finish_open(mut conn: Connection, label: &str) -> Result<Store, StoreError> {
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|source| StoreError::Open {
                path: PathBuf::from(label),
                source,
            })?;
        let applied = migrate(&mut conn, MIGRATIONS, label)?;
        if applied > 0 {
            tracing::info!(
                db = label,
                applied,
                version = MIGRATIONS.len(),
                "migrated docsmith database"
            );
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (statements are atomic, transactions roll back on drop), so a
        // poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies the write-ahead log into the database file and empties it
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), so a process that exits without
    /// closing the store leaves one self-contained file. Every write is already
    /// committed; this only tidies. Errors: [`StoreError::Sqlite`].
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// Applies `migrations[user_version..]`, each in its own transaction together
/// with the `user_version` bump. Returns how many were applied.
fn migrate(conn: &mut Connection, migrations: &[&str], label: &str) -> Result<usize, StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(StoreError::NewerSchema {
            path: label.to_string(),
            found,
            supported,
        });
    }
    let start = usize::try_from(found).unwrap_or(0);
    for (i, sql) in migrations.iter().enumerate().skip(start) {
        let version = i + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", version as i64))
            .map_err(|source| StoreError::Migration { version, source })?;
        tx.commit()
            .map_err(|source| StoreError::Migration { version, source })?;
    }
    Ok(migrations.len() - start)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(if v < 0 { 0 } else { u32::MAX })
}

#[cfg(test)]
mod tests;
