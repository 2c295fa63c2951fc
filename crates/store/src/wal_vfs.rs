//! The writer's WAL writes, gathered: a VFS layered over SQLite's default one ("unix") that
//! writes the frames of one commit with one `pwrite` instead of two per frame.
//!
//! SQLite writes each WAL frame as two calls — its 24-byte header, then the page — and a group
//! commit dirties a dozen pages or more: some thirty system calls, each walking the page cache
//! over the one or two pages it touches. That was about 30 % of the writer thread's time (bench
//! store, 256 writers). Gathered, the commit's frames go in one call, each page of the file
//! touched once (docs/performance-log.md).
//!
//! What is gathered and when it is written (`WalFile::write`):
//! - a write that starts where the previous write to the file ended — frames appended in order —
//!   is kept in the file's buffer; any other write (SQLite rewriting a frame or a checksum of
//!   the same transaction) writes the buffer first, then goes straight to the file;
//! - the buffer is written as soon as the page of a **commit frame** is in it: the frame whose
//!   header carries the database size (bytes 4..8 non-zero; zero in every other frame). SQLite
//!   writes that frame last, and only afterwards publishes the commit in the wal-index, which is
//!   where readers and the checkpointer — other connections, other descriptors — learn which
//!   frames exist. So no one can look for a frame before it is in the OS's page cache, and an
//!   error writing it is the commit's error: SQLite fails the commit and the caller is told;
//! - any other use of the file (read, sync, truncate, size, file control, close) writes the
//!   buffer first, and so does a buffer past `GATHER_BYTES_MAX` (a transaction spilling pages
//!   before its commit).
//!
//! Durability is unchanged: the acknowledgment stage fdatasyncs the WAL after the commit
//! returned, when its frames are long written. A process that dies with frames gathered dies
//! before their commit frame was written: that commit never was.
//!
//! Every other file — the database, the shared memory index, any other file SQLite opens — and
//! every other call goes to the default VFS as it is. Only the writer's connection opens its
//! database through this VFS; readers, the checkpointer and backups use the default one, and
//! share its locks (the default VFS keeps them per file, whatever VFS object opened it).

#![allow(unsafe_code)]

use crate::error::{Result, StoreError};
use rusqlite::ffi;
use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

/// The VFS's registered name.
const NAME: &CStr = c"tandem-wal";
/// Gathered bytes past which the buffer is written even before a commit frame (a transaction
/// spilling pages): a bound on the memory kept per WAL.
const GATHER_BYTES_MAX: usize = 1 << 20;
/// The largest single write: the default VFS writes at most 128 KiB - 1 bytes per call.
const WRITE_BYTES_MAX: usize = 124 * 1024;
/// A WAL frame's header; a file's own header is the first 32 bytes.
const FRAME_HEADER_BYTES: i64 = 24;
const WAL_HEADER_BYTES: i64 = 32;

/// What this VFS adds to each file it opens; the default VFS's own file structure follows it.
#[repr(C)]
struct File {
    /// Must come first: SQLite sees this structure as a `sqlite3_file`.
    base: ffi::sqlite3_file,
    /// The default VFS's file, just after this structure (`INNER_AT`).
    inner: *mut ffi::sqlite3_file,
    /// The gathered writes, for a WAL; null for any other file.
    wal: *mut WalFile,
}

/// Where the default VFS's file starts in the memory SQLite gives for a file.
const INNER_AT: usize = std::mem::size_of::<File>().next_multiple_of(16);

/// A WAL's gathered writes.
struct WalFile {
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    start: i64,
    /// Where the previous write ended (-1 before the first).
    last_end: i64,
    /// Set when the previous write was a commit frame's header, at this offset.
    commit_header_at: Option<i64>,
    /// Writes SQLite made, and writes made of them (each piece of a flush counts): for tests.
    asked: u64,
    made: u64,
    /// The file kept zeroed ahead of the writes (`wal_ahead`); None if that could not start.
    ahead: Option<crate::wal_ahead::Ahead>,
}

impl WalFile {
    /// Makes a write of `len` bytes at `at`, `w`, as `wal_ahead` requires.
    fn write(&self, at: i64, len: usize, w: impl FnOnce() -> c_int) -> c_int {
        match &self.ahead {
            Some(a) => a.write(at, at + len as i64, w),
            None => w(),
        }
    }
}

struct Registered {
    vfs: ffi::sqlite3_vfs,
    default: *mut ffi::sqlite3_vfs,
}

// SAFETY: written once, before any use, then only read; SQLite's VFS objects are meant to be
// shared by every thread.
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

/// Makes `conn` keep its main database's WAL and shared-memory files when it closes
/// (`SQLITE_FCNTL_PERSIST_WAL`). SQLite deletes them by path when the last connection to a
/// database closes, and a copy whose directory was replaced under an open handle may close after
/// the new copy took the path. SQLite means to skip that for a file that moved, but a failing
/// failback, traced (session 20, when a restore still swapped directories under open handles;
/// it now waits for them to close), showed an old copy's writer thread closing 40 ms after the
/// restore that replaced it, checkpointing, and unlinking the new copy's `-shm` and `-wal`
/// (whose next reader then read past the end of a new, empty WAL: a short read).
/// Kept, a WAL that a close checkpointed is started over by the next writer.
pub(crate) fn keep_wal_on_close(conn: &rusqlite::Connection) -> Result<()> {
    let mut on: c_int = 1;
    // SAFETY: the handle is valid for the life of `conn`; PERSIST_WAL reads and writes one int
    // through the pointer, which outlives the call.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut c_int).cast::<c_void>(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(StoreError::Invalid(format!(
            "SQLite refused to keep the WAL on close (code {rc})"
        )));
    }
    Ok(())
}

static REGISTERED: OnceLock<std::result::Result<Box<Registered>, String>> = OnceLock::new();

/// Registers the VFS (once per process) and returns its name, for `open_with_flags_and_vfs`.
pub(crate) fn name() -> Result<&'static CStr> {
    REGISTERED
        .get_or_init(register)
        .as_ref()
        .map(|_| NAME)
        .map_err(|e| StoreError::Closed(e.clone()))
}

fn register() -> std::result::Result<Box<Registered>, String> {
    // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe; the registered object
    // lives in a static box for the rest of the process, as SQLite requires.
    unsafe {
        let default = ffi::sqlite3_vfs_find(std::ptr::null());
        if default.is_null() {
            return Err("SQLite has no default VFS to layer the WAL writes over".into());
        }
        let mut vfs = *default;
        vfs.zName = NAME.as_ptr();
        vfs.szOsFile = (INNER_AT + (*default).szOsFile as usize) as c_int;
        vfs.xOpen = Some(open);
        vfs.pNext = std::ptr::null_mut();
        let mut registered = Box::new(Registered { vfs, default });
        let rc = ffi::sqlite3_vfs_register(&mut registered.vfs, 0);
        if rc != ffi::SQLITE_OK {
            return Err(format!(
                "cannot register the {NAME:?} VFS (SQLite code {rc})"
            ));
        }
        Ok(registered)
    }
}

fn default_vfs() -> *mut ffi::sqlite3_vfs {
    match REGISTERED.get() {
        Some(Ok(r)) => r.default,
        _ => unreachable!("files are opened through the VFS only once it is registered"),
    }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite gives `szOsFile` bytes for the file: this structure, then the default
    // VFS's, which that VFS's own open fills in.
    unsafe {
        let f = file as *mut File;
        let inner = (file as *mut u8).add(INNER_AT) as *mut ffi::sqlite3_file;
        (*f).base.pMethods = std::ptr::null();
        (*f).inner = inner;
        (*f).wal = std::ptr::null_mut();
        let default = default_vfs();
        let Some(open) = (*default).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let rc = open(default, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK || (*inner).pMethods.is_null() {
            // SQLite calls no method of a file whose open failed (pMethods stays null).
            return rc;
        }
        if flags & ffi::SQLITE_OPEN_WAL != 0 {
            use std::os::unix::ffi::OsStrExt;
            // SQLite names every file it opens with a WAL flag (a full path).
            let path =
                std::path::Path::new(std::ffi::OsStr::from_bytes(CStr::from_ptr(name).to_bytes()));
            (*f).wal = Box::into_raw(Box::new(WalFile {
                buf: Vec::new(),
                start: 0,
                last_end: -1,
                commit_header_at: None,
                asked: 0,
                made: 0,
                ahead: crate::wal_ahead::Ahead::start(path),
            }));
        }
        (*f).base.pMethods = &METHODS;
        rc
    }
}

/// The default VFS's file under ours, and its methods.
///
/// SAFETY: `file` is a file this VFS opened successfully and has not closed.
unsafe fn inner(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, &'static Methods) {
    unsafe {
        let inner = (*(file as *mut File)).inner;
        (inner, &*(*inner).pMethods)
    }
}

type Methods = ffi::sqlite3_io_methods;

/// Writes what is gathered, if anything.
///
/// SAFETY: as `inner`.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let wal = (*(file as *mut File)).wal;
        if wal.is_null() || (*wal).buf.is_empty() {
            return ffi::SQLITE_OK;
        }
        let wal = &mut *wal;
        let (inner, m) = inner(file);
        let Some(write) = m.xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut made = 0;
        let rc = wal.write(wal.start, wal.buf.len(), || {
            for (k, piece) in wal.buf.chunks(WRITE_BYTES_MAX).enumerate() {
                let at = wal.start + (k * WRITE_BYTES_MAX) as i64;
                let rc = write(inner, piece.as_ptr().cast(), piece.len() as c_int, at);
                made += 1;
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
            ffi::SQLITE_OK
        });
        wal.made += made;
        // Failed or not, the bytes are not kept: SQLite undoes the transaction they belong to.
        wal.buf.clear();
        rc
    }
}

/// Writes what is gathered, then calls `f` on the default VFS's file.
///
/// SAFETY: as `inner`.
unsafe fn flushed(
    file: *mut ffi::sqlite3_file,
    f: impl FnOnce(*mut ffi::sqlite3_file, &'static Methods) -> Option<c_int>,
) -> c_int {
    unsafe {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (inner, m) = inner(file);
        f(inner, m).unwrap_or(ffi::SQLITE_IOERR)
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file once; the gathered writes' box is freed with it.
    unsafe {
        let written = flush(file);
        let (inner, m) = inner(file);
        let closed = m.xClose.map_or(ffi::SQLITE_OK, |close| close(inner));
        let f = file as *mut File;
        if !(*f).wal.is_null() {
            drop(Box::from_raw((*f).wal));
            (*f).wal = std::ptr::null_mut();
        }
        if written != ffi::SQLITE_OK {
            written
        } else {
            closed
        }
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: `data` holds `amount` bytes (SQLite's contract for xWrite).
    unsafe {
        let wal = (*(file as *mut File)).wal;
        if wal.is_null() {
            let (inner, m) = inner(file);
            return m
                .xWrite
                .map_or(ffi::SQLITE_IOERR_WRITE, |w| w(inner, data, amount, offset));
        }
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), amount as usize);
        (*wal).asked += 1;
        let ends_commit = (*wal)
            .commit_header_at
            .is_some_and(|h| offset == h + FRAME_HEADER_BYTES);
        if offset == (*wal).last_end {
            let wal = &mut *wal;
            if wal.buf.is_empty() {
                wal.start = offset;
            }
            wal.buf.extend_from_slice(bytes);
        } else {
            let rc = flushed(file, |inner, m| {
                m.xWrite.map(|w| {
                    (*wal).write(offset, amount as usize, || w(inner, data, amount, offset))
                })
            });
            (*wal).made += 1;
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        let wal = &mut *wal;
        wal.last_end = offset + amount as i64;
        wal.commit_header_at = (amount as i64 == FRAME_HEADER_BYTES
            && offset >= WAL_HEADER_BYTES
            && bytes[4..8] != [0; 4])
            .then_some(offset);
        if ends_commit || wal.buf.len() >= GATHER_BYTES_MAX {
            return flush(file);
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    unsafe { flushed(file, |i, m| m.xRead.map(|r| r(i, buf, amount, offset))) }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    unsafe {
        let wal = (*(file as *mut File)).wal;
        flushed(file, |i, m| {
            m.xTruncate
                .map(|t| match wal.as_ref().and_then(|w| w.ahead.as_ref()) {
                    Some(a) => a.truncate(size, || t(i, size)),
                    None => t(i, size),
                })
        })
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    unsafe { flushed(file, |i, m| m.xSync.map(|s| s(i, flags))) }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    unsafe { flushed(file, |i, m| m.xFileSize.map(|s| s(i, size))) }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SQLITE_NOTFOUND: "no such control", which SQLite expects from a VFS without one.
    unsafe {
        flushed(file, |i, m| {
            Some(
                m.xFileControl
                    .map_or(ffi::SQLITE_NOTFOUND, |c| c(i, op, arg)),
            )
        })
    }
}

// The rest goes to the default VFS's file unchanged.

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xLock.map_or(ffi::SQLITE_IOERR_LOCK, |l| l(i, level))
    }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xUnlock.map_or(ffi::SQLITE_IOERR_UNLOCK, |u| u(i, level))
    }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xCheckReservedLock
            .map_or(ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, |c| c(i, out))
    }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xSectorSize.map_or(4096, |s| s(i))
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xDeviceCharacteristics.map_or(0, |d| d(i))
    }
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xShmMap.map_or(ffi::SQLITE_IOERR_SHMMAP, |s| {
            s(i, region, size, extend, out)
        })
    }
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xShmLock
            .map_or(ffi::SQLITE_IOERR_SHMLOCK, |s| s(i, offset, n, flags))
    }
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    unsafe {
        let (i, m) = inner(file);
        if let Some(b) = m.xShmBarrier {
            b(i)
        }
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xShmUnmap.map_or(ffi::SQLITE_OK, |u| u(i, delete))
    }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        match m.xFetch {
            Some(f) => f(i, offset, amount, out),
            // No memory map: SQLite reads instead.
            None => {
                *out = std::ptr::null_mut();
                ffi::SQLITE_OK
            }
        }
    }
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    unsafe {
        let (i, m) = inner(file);
        m.xUnfetch.map_or(ffi::SQLITE_OK, |u| u(i, offset, p))
    }
}

static METHODS: Methods = Methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// The writes SQLite asked of a connection's WAL and the writes made of them, so far.
#[cfg(test)]
fn wal_writes(conn: &rusqlite::Connection) -> (u64, u64) {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: JOURNAL_POINTER stores the WAL's sqlite3_file pointer; the WAL is open through
    // this VFS (checked below) while the connection is in WAL mode and has written.
    unsafe {
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        );
        assert_eq!(rc, ffi::SQLITE_OK);
        assert!(!file.is_null() && std::ptr::eq((*file).pMethods, &METHODS));
        let wal = &*(*(file as *mut File)).wal;
        (wal.asked, wal.made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags, params};

    fn open(dir: &std::path::Path, through_vfs: bool) -> Connection {
        let path = dir.join("t.db");
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let conn = if through_vfs {
            Connection::open_with_flags_and_vfs(path, flags, name().unwrap()).unwrap()
        } else {
            Connection::open_with_flags(path, flags).unwrap()
        };
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn
    }

    fn body(i: i64, len: usize) -> String {
        format!("{i:08} ").repeat(len / 9 + 1)[..len].to_string()
    }

    fn insert(conn: &Connection, from: i64, rows: i64, len: usize) {
        let tx = conn.unchecked_transaction().unwrap();
        for i in from..from + rows {
            tx.execute(
                "INSERT INTO t (id, body) VALUES (?1, ?2)",
                params![i, body(i, len)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// What another connection (the default VFS, its own descriptor) reads: the rows, and a
    /// check of every byte against what was written.
    fn check(conn: &Connection, rows: i64, len: usize) {
        assert_eq!(count(conn), rows);
        let bad: i64 = conn
            .query_row(
                "SELECT count(*) FROM t WHERE length(body) != ?1",
                [len as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(bad, 0);
        let mut stmt = conn.prepare("SELECT id, body FROM t").unwrap();
        let mut it = stmt.query([]).unwrap();
        while let Some(row) = it.next().unwrap() {
            let (id, b): (i64, String) = (row.get(0).unwrap(), row.get(1).unwrap());
            assert_eq!(b, body(id, len), "row {id}");
        }
    }

    #[test]
    fn a_commit_is_one_write_and_other_connections_read_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(dir.path(), true);
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .unwrap();
        let reader = open(dir.path(), false);
        for k in 0..20 {
            let before = wal_writes(&writer);
            // About 20 KB: six pages or more, two writes asked per frame.
            insert(&writer, k * 100, 100, 200);
            let (asked, made) = wal_writes(&writer);
            let (asked, made) = (asked - before.0, made - before.1);
            assert!(asked >= 12, "commit {k}: {asked} writes asked");
            // One write, two when the commit restarted the WAL (its header, then the frames).
            assert!(made <= 2, "commit {k}: {asked} writes asked, {made} made");
            check(&reader, (k + 1) * 100, 200);
        }
        drop(writer);
        let again = open(dir.path(), false);
        check(&again, 2000, 200);
        let ok: String = again
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn spills_rollbacks_checkpoints_and_large_commits_keep_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(dir.path(), true);
        // A cache of ten pages: a large transaction writes frames before its commit.
        writer.pragma_update(None, "cache_size", 10).unwrap();
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .unwrap();
        let reader = open(dir.path(), false);
        insert(&writer, 0, 50, 3000);
        // Spilled, then rolled back: nothing of it may be seen, the next commit overwrites it.
        {
            let tx = writer.unchecked_transaction().unwrap();
            for i in 1000..2000 {
                tx.execute(
                    "INSERT INTO t (id, body) VALUES (?1, ?2)",
                    params![i, body(i, 3000)],
                )
                .unwrap();
            }
            tx.rollback().unwrap();
        }
        check(&reader, 50, 3000);
        insert(&writer, 50, 10, 3000);
        check(&reader, 60, 3000);
        // Past the gathering bound and the largest single write, spilling on the way.
        insert(&writer, 60, 1000, 3000);
        check(&reader, 1060, 3000);
        // The writer's own checkpoint reads the WAL back, then truncates it.
        writer
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        insert(&writer, 1060, 40, 3000);
        check(&reader, 1100, 3000);
        writer
            .execute("DELETE FROM t WHERE id % 2 = 0", [])
            .unwrap();
        assert_eq!(count(&reader), 550);
        drop(writer);
        // What a crash would leave: reopened from the files, WAL replayed.
        let again = open(dir.path(), true);
        assert_eq!(count(&again), 550);
        let ok: String = again
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
}
