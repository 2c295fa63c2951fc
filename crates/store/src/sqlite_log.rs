//! SQLite's own error log (`SQLITE_CONFIG_LOG`), handed to the caller. An I/O error that a
//! statement returns reads "disk I/O error" and nothing more; SQLite's log of it names the
//! system call, the errno and the file.

#![allow(unsafe_code)]

use crate::error::{Result, StoreError};
use std::sync::Mutex;

/// Sends every message SQLite logs to `callback` (its result code, then the message), for the
/// rest of the process. Call it before the process opens any database: SQLite takes it only
/// before it initializes. Later calls, and calls after a database was opened, are refused.
pub fn log_sqlite_to(callback: fn(i32, &str)) -> Result<()> {
    static SET: Mutex<bool> = Mutex::new(false);
    let mut set = SET.lock().expect("sqlite log lock");
    if *set {
        return Err(StoreError::Invalid(
            "SQLite's log is already handed out".into(),
        ));
    }
    // SAFETY: serialized by `SET`, so no other call of it runs concurrently; SQLite refuses it
    // (SQLITE_MISUSE, an error here) once it is initialized, so no connection is using the log
    // being replaced. The callback is a plain `fn`, valid for the life of the process.
    unsafe { rusqlite::trace::config_log(Some(callback)) }.map_err(|e| {
        StoreError::Invalid(format!(
            "SQLite's log cannot be set now (a database was opened before): {e}"
        ))
    })?;
    *set = true;
    Ok(())
}

/// Whether a code SQLite logs with means damage or a failing system: the ones an operator must
/// see. Constraint failures, schema changes, notices and warnings are everyday.
pub fn sqlite_log_is_failure(code: i32) -> bool {
    matches!(
        code & 0xff,
        rusqlite::ffi::SQLITE_IOERR
            | rusqlite::ffi::SQLITE_CORRUPT
            | rusqlite::ffi::SQLITE_CANTOPEN
            | rusqlite::ffi::SQLITE_FULL
            | rusqlite::ffi::SQLITE_NOTADB
            | rusqlite::ffi::SQLITE_READONLY
            | rusqlite::ffi::SQLITE_PROTOCOL
            | rusqlite::ffi::SQLITE_NOMEM
    )
}
