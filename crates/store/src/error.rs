//! The store's one error type. Operating errors carry a sentence an operator can act on.

use crate::record::{Epoch, Lsn};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A failing system or damage carries SQLite's extended code: "disk I/O error" alone does
    /// not tell a short read from a failed fsync.
    #[error("sqlite: {}", sqlite_text(.0))]
    Sqlite(#[from] rusqlite::Error),
    /// The I/O error is in the message, not also given as its cause: printed with its chain of
    /// causes (`{:#}`), it would read twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Damaged bytes: a record, a journal segment, a backup file.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A request that cannot be honoured as asked (bad argument, wrong role, unknown table).
    #[error("{0}")]
    Invalid(String),
    /// The copy is not in a role that allows the operation.
    #[error("{0}")]
    Role(String),
    /// A record or batch that does not follow the copy's last LSN.
    #[error("{0}")]
    Sequence(String),
    /// A record or message of an epoch older than the copy's: refused (fencing).
    #[error("stale epoch {got}: this copy is at epoch {current}")]
    StaleEpoch { got: Epoch, current: Epoch },
    /// The journal no longer holds what was asked for: the reader must be reseeded.
    #[error(
        "the journal no longer holds LSN {needed} (oldest kept: {oldest}); take a full backup and reseed"
    )]
    JournalPruned { needed: Lsn, oldest: Lsn },
    /// Another process or handle has the database open.
    #[error("{0}")]
    Locked(String),
    /// A structure derived behind the commits (a follower's) has not reached what was asked
    /// for in the time given: the caller may try again.
    #[error("{0}")]
    CatchingUp(String),
    /// The handle no longer serves: its writer stopped (closed, or a fatal error), or its
    /// copy was replaced under it.
    #[error("database closed: {0}")]
    Closed(String),
    /// A group commit SQLite could not make (a full disk, an I/O error): rolled back, nothing
    /// of it written; the next may go through.
    #[error("commit failed, rolled back: {0}")]
    CommitFailed(String),
    /// Not started: what it would write does not fit on the file system while leaving the
    /// room asked to stay free (`needed` counts both).
    #[error(
        "{}: {} MiB free, {} MiB needed (a copy of {} MiB, and {} MiB kept free for the \
         database's own commits)",
        path.display(),
        free / MIB,
        needed.div_ceil(MIB),
        (needed - kept_free).div_ceil(MIB),
        kept_free / MIB
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        free: u64,
        kept_free: u64,
    },
}

const MIB: u64 = 1 << 20;

fn sqlite_text(e: &rusqlite::Error) -> String {
    match e {
        // Without a message rusqlite shows the code itself.
        rusqlite::Error::SqliteFailure(f, Some(_))
            if crate::sqlite_log_is_failure(f.extended_code) && f.extended_code > 0xff =>
        {
            format!("{e} (SQLite extended code {})", f.extended_code)
        }
        _ => e.to_string(),
    }
}

impl StoreError {
    /// Damaged bytes in a database file or a record (SQLite's `SQLITE_CORRUPT` or
    /// `SQLITE_NOTADB`, or the store's own checks), as opposed to a failing system or a refusal.
    pub fn is_damage(&self) -> bool {
        matches!(self, StoreError::Corrupt(_)) || self.is_page_damage()
    }

    /// Damaged pages in a database file: SQLite's `SQLITE_CORRUPT` or `SQLITE_NOTADB` (not the
    /// store's own checks of a record or a file, which may be another copy's bytes).
    pub fn is_page_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            )
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.into(),
            error: source,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_names_its_extended_code_and_a_constraint_does_not() {
        let io = StoreError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_SHORT_READ),
            Some("disk I/O error".into()),
        ));
        assert_eq!(
            io.to_string(),
            "sqlite: disk I/O error (SQLite extended code 522)"
        );
        let unique = StoreError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE),
            Some("UNIQUE constraint failed: t.id".into()),
        ));
        assert_eq!(unique.to_string(), "sqlite: UNIQUE constraint failed: t.id");
    }
}
