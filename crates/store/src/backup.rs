//! Full backups (a consistent snapshot, taken online, that starts a restore chain) and log
//! backups (the journal records since the previous log backup), as checksummed files.
//!
//! Names sort in LSN order within a directory:
//! `full-<lsn:016x>-e<epoch>-<created_ms>.tfb` and `log-<first:016x>-<last:016x>.tlb`.

use crate::backup_file::{FULL_MAGIC, FileReader, FileWriter, LOG_MAGIC};
use crate::database::{DB_FILE, Database, Role, read_state};
use crate::error::{Result, StoreError};
use crate::history::History;
use crate::journal::RecordBatch;
use crate::record::{Chain, Epoch, Lsn, check, peek_header};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The journal consumer whose cursor is the last LSN written to a log backup.
pub const LOG_BACKUP_CONSUMER: &str = "log-backup";
/// Chunk of the database file in one frame of a full backup.
const FULL_CHUNK_BYTES: usize = 1 << 20;
/// Records read from the journal at a time while writing a log backup.
const LOG_READ_RECORDS_MAX: usize = 8192;

/// Header of a full backup file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullHeader {
    pub database_id: String,
    pub name: String,
    pub epoch: Epoch,
    pub lsn: Lsn,
    pub chain: Chain,
    pub history: History,
    /// Commit time of the snapshot's last record (ms since the Unix epoch).
    pub last_time_ms: i64,
    pub created_ms: i64,
    /// Size of the database file carried in the frames.
    pub payload_bytes: u64,
}

/// Header of a log backup file: records `first_lsn..=last_lsn`, all of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogHeader {
    pub database_id: String,
    pub name: String,
    pub epoch: Epoch,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub chain_before: Chain,
    pub chain_after: Chain,
    pub records: u64,
    pub first_time_ms: i64,
    pub last_time_ms: i64,
    pub created_ms: i64,
}

/// A backup file and what its header says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupFile {
    Full { path: PathBuf, header: FullHeader },
    Log { path: PathBuf, header: LogHeader },
}

impl BackupFile {
    pub fn path(&self) -> &Path {
        match self {
            BackupFile::Full { path, .. } | BackupFile::Log { path, .. } => path,
        }
    }

    pub fn database_id(&self) -> &str {
        match self {
            BackupFile::Full { header, .. } => &header.database_id,
            BackupFile::Log { header, .. } => &header.database_id,
        }
    }

    /// The database the file is a backup of, as people name it: its name and its id.
    pub fn database(&self) -> String {
        let name = match self {
            BackupFile::Full { header, .. } => &header.name,
            BackupFile::Log { header, .. } => &header.name,
        };
        format!("{name} ({})", self.database_id())
    }

    /// The last LSN the file holds.
    pub fn lsn(&self) -> Lsn {
        match self {
            BackupFile::Full { header, .. } => header.lsn,
            BackupFile::Log { header, .. } => header.last_lsn,
        }
    }

    pub fn name(&self) -> String {
        self.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn log_file_name(first: Lsn, last: Lsn) -> String {
    format!("log-{first:016x}-{last:016x}.tlb")
}

fn full_file_name(h: &FullHeader) -> String {
    format!("full-{:016x}-e{}-{}.tfb", h.lsn, h.epoch, h.created_ms)
}

/// What a backup file's name says (the names `full_backup` and `log_backup` give): enough to
/// order a directory's files and find the newest without opening them. The header, read with
/// `read_header`, is what counts; a file renamed by hand is refused when it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileName {
    Full {
        lsn: Lsn,
        epoch: Epoch,
        created_ms: i64,
    },
    Log {
        first_lsn: Lsn,
        last_lsn: Lsn,
    },
}

impl FileName {
    /// The last LSN the file holds.
    pub fn lsn(&self) -> Lsn {
        match self {
            FileName::Full { lsn, .. } => *lsn,
            FileName::Log { last_lsn, .. } => *last_lsn,
        }
    }
}

/// Parses a backup file's name; `None` for any other name (temporary files included).
pub fn parse_file_name(name: &str) -> Option<FileName> {
    let hex = |s: &str| {
        (s.len() == 16)
            .then(|| Lsn::from_str_radix(s, 16).ok())
            .flatten()
    };
    if let Some(rest) = name
        .strip_prefix("log-")
        .and_then(|r| r.strip_suffix(".tlb"))
    {
        let (first, last) = rest.split_once('-')?;
        let (first_lsn, last_lsn) = (hex(first)?, hex(last)?);
        return (first_lsn <= last_lsn).then_some(FileName::Log {
            first_lsn,
            last_lsn,
        });
    }
    let rest = name.strip_prefix("full-")?.strip_suffix(".tfb")?;
    let (lsn, rest) = rest.split_once("-e")?;
    let (epoch, created) = rest.split_once('-')?;
    Some(FileName::Full {
        lsn: hex(lsn)?,
        epoch: epoch.parse().ok()?,
        created_ms: created.parse().ok()?,
    })
}

/// Reads and checks a backup file's header (not its body).
pub fn read_header(path: &Path) -> Result<BackupFile> {
    let reader = FileReader::open(path)?;
    parse_header(&reader)
}

fn parse_header(reader: &FileReader) -> Result<BackupFile> {
    let path = reader.path.clone();
    let bad = |e: serde_json::Error| {
        StoreError::Corrupt(format!("{}: unreadable header: {e}", path.display()))
    };
    let actual = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = if reader.magic == FULL_MAGIC {
        let header: FullHeader = serde_json::from_slice(&reader.header_json).map_err(bad)?;
        // Log shipping picks the newest full backup by its name: a name must tell the truth.
        let expected = full_file_name(&header);
        if actual != expected && actual.starts_with("full-") {
            return Err(StoreError::Corrupt(format!(
                "{}: the name says one LSN, epoch or time but the header holds LSN {}, epoch {} \
                 (expected name {expected})",
                path.display(),
                header.lsn,
                header.epoch
            )));
        }
        BackupFile::Full {
            header,
            path: path.clone(),
        }
    } else {
        debug_assert_eq!(reader.magic, LOG_MAGIC);
        let header: LogHeader = serde_json::from_slice(&reader.header_json).map_err(bad)?;
        if header.last_lsn < header.first_lsn
            || header.records != header.last_lsn - header.first_lsn + 1
        {
            return Err(StoreError::Corrupt(format!(
                "{}: header says LSN {}..={} in {} records",
                path.display(),
                header.first_lsn,
                header.last_lsn,
                header.records
            )));
        }
        // A file renamed or swapped with another is caught here, before anything is applied.
        let expected = log_file_name(header.first_lsn, header.last_lsn);
        if actual != expected && actual.starts_with("log-") {
            return Err(StoreError::Corrupt(format!(
                "{}: the name says one LSN range but the header holds LSN {}..={} (expected name {expected})",
                path.display(),
                header.first_lsn,
                header.last_lsn
            )));
        }
        BackupFile::Log {
            path: path.clone(),
            header,
        }
    };
    Ok(file)
}

/// Reads a whole backup file and checks everything that can be checked inside one file: every
/// checksum, the header against the body, and for a log backup every record's LSN, epoch and
/// the chain from `chain_before` to `chain_after`.
pub fn verify_file(path: &Path) -> Result<BackupFile> {
    let mut reader = FileReader::open(path)?;
    let file = parse_header(&reader)?;
    let mut buf = Vec::new();
    match &file {
        BackupFile::Full { header, .. } => {
            let mut bytes = 0u64;
            while reader.next_frame(&mut buf)? {
                bytes += buf.len() as u64;
            }
            if bytes != header.payload_bytes {
                return Err(StoreError::Corrupt(format!(
                    "{}: carries {bytes} database bytes, header says {}",
                    path.display(),
                    header.payload_bytes
                )));
            }
            reader.finish()?;
        }
        BackupFile::Log { header, .. } => {
            let mut walk = LogWalk::new(header);
            while reader.next_frame(&mut buf)? {
                walk.record(path, &buf)?;
            }
            walk.end(path)?;
            reader.finish()?;
        }
    }
    Ok(file)
}

/// Checks the records of a log backup one by one against its header.
pub(crate) struct LogWalk<'h> {
    header: &'h LogHeader,
    pub(crate) next_lsn: Lsn,
    pub(crate) chain: Chain,
}

impl<'h> LogWalk<'h> {
    pub(crate) fn new(header: &'h LogHeader) -> LogWalk<'h> {
        LogWalk {
            header,
            next_lsn: header.first_lsn,
            chain: header.chain_before,
        }
    }

    pub(crate) fn record(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let r = check(bytes).map_err(|e| {
            StoreError::Corrupt(format!(
                "{}: record LSN {}: {e}",
                path.display(),
                self.next_lsn
            ))
        })?;
        if r.lsn != self.next_lsn || r.lsn > self.header.last_lsn {
            return Err(StoreError::Corrupt(format!(
                "{}: holds LSN {} where LSN {} was expected",
                path.display(),
                r.lsn,
                self.next_lsn
            )));
        }
        if r.epoch != self.header.epoch {
            return Err(StoreError::Corrupt(format!(
                "{}: record LSN {} is of epoch {}, the file of epoch {}",
                path.display(),
                r.lsn,
                r.epoch,
                self.header.epoch
            )));
        }
        self.chain = self.chain.next(bytes);
        self.next_lsn += 1;
        Ok(())
    }

    pub(crate) fn end(&self, path: &Path) -> Result<()> {
        if self.next_lsn != self.header.last_lsn + 1 {
            return Err(StoreError::Corrupt(format!(
                "{}: ends at LSN {}, header says {}",
                path.display(),
                self.next_lsn - 1,
                self.header.last_lsn
            )));
        }
        if self.chain != self.header.chain_after {
            return Err(StoreError::Corrupt(format!(
                "{}: chain {} recomputed over LSN {}..={}, header says {}",
                path.display(),
                self.chain,
                self.header.first_lsn,
                self.header.last_lsn,
                self.header.chain_after
            )));
        }
        Ok(())
    }
}

/// Takes a full backup into `dir` while writes go on: a snapshot consistent at one LSN.
/// Registers the log-backup consumer at that LSN if no log chain exists yet.
pub fn full_backup(db: &Database, dir: &Path) -> Result<BackupFile> {
    let file = seed_backup(db, dir)?;
    if !db
        .consumers()?
        .iter()
        .any(|c| c.name == LOG_BACKUP_CONSUMER)
    {
        db.register_consumer(LOG_BACKUP_CONSUMER, file.lsn())?;
    }
    Ok(file)
}

/// A full backup that starts no log chain: to seed a mirror or a replica.
pub fn seed_backup(db: &Database, dir: &Path) -> Result<BackupFile> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    // Unique per process, time and call: backups of several databases may share a directory.
    static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let snapshot = dir.join(format!(
        ".snapshot-{}-{}-{n}.db",
        std::process::id(),
        now_ms()
    ));
    let result = full_backup_via(db, dir, &snapshot);
    let _ = std::fs::remove_file(&snapshot);
    let _ = std::fs::remove_file(snapshot.with_extension("db-journal"));
    result
}

/// A snapshot of `db` at one LSN into the file `snapshot` (a self-contained database file,
/// not fsynced: scratch), and the header a full backup of it carries.
fn take_snapshot(db: &Database, snapshot: &Path) -> Result<FullHeader> {
    {
        let src = db.open_reader()?;
        let mut dst = Connection::open(snapshot)?;
        dst.pragma_update(None, "synchronous", "OFF")?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // One step copies every page under one read transaction: a snapshot at one LSN. In WAL
        // mode the writer goes on meanwhile.
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    }
    let state = {
        // The copy is in WAL mode like its source: fold it into one self-contained file. Not
        // fsynced (it is a scratch file: the backup file made from it is): with the default
        // synchronous=FULL the switch wrote the whole snapshot to disk, a sixth of the backup's time.
        let conn = Connection::open(snapshot)?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        read_state(&conn)?
    };
    let payload_bytes = std::fs::metadata(snapshot)
        .map_err(|e| StoreError::io(snapshot, e))?
        .len();
    Ok(FullHeader {
        database_id: state.database_id.to_hex(),
        name: state.name.clone(),
        epoch: state.epoch,
        lsn: state.lsn,
        chain: state.chain,
        history: state.history.clone(),
        last_time_ms: state.last_time_ms,
        created_ms: now_ms(),
        payload_bytes,
    })
}

fn full_backup_via(db: &Database, dir: &Path, snapshot: &Path) -> Result<BackupFile> {
    let header = take_snapshot(db, snapshot)?;
    let payload_bytes = header.payload_bytes;
    let mut out = FileWriter::create(dir, FULL_MAGIC)?;
    let mut input = std::fs::File::open(snapshot).map_err(|e| StoreError::io(snapshot, e))?;
    let mut buf = vec![0u8; FULL_CHUNK_BYTES];
    let mut copied = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf).map_err(|e| StoreError::io(snapshot, e))?;
        if n == 0 {
            break;
        }
        out.frame(&buf[..n])?;
        copied += n as u64;
    }
    assert_eq!(
        copied, payload_bytes,
        "the snapshot changed while being copied"
    );
    let path = dir.join(full_file_name(&header));
    out.finish(
        &serde_json::to_vec(&header).expect("header serializes"),
        &path,
    )?;
    Ok(BackupFile::Full { path, header })
}

/// Bytes free for an unprivileged writer on the file system of `dir` (`statvfs`).
pub fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| StoreError::Invalid(format!("{}: a NUL in the path", dir.display())))?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers), which the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct of the type the call writes.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(StoreError::io(dir, std::io::Error::last_os_error()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// A full backup of a database as a stream of bytes (`SeedStream::next_chunk`), for a seed
/// sent over the network: the bytes of the file `seed_backup` writes, none of it written.
/// Only the snapshot it is read from takes room, in `dir`, and only as long as the stream
/// lives: its name is removed at once (a process that dies frees it with its descriptor).
pub struct SeedStream {
    snapshot: std::fs::File,
    /// The snapshot's path, for errors (the name itself is gone).
    path: PathBuf,
    header: FullHeader,
    framer: Option<crate::backup_file::StreamFramer>,
    prefix: Option<Vec<u8>>,
    copied: u64,
}

impl SeedStream {
    /// What the backup's header says (its LSN, its epoch, the payload's size).
    pub fn header(&self) -> &FullHeader {
        &self.header
    }

    /// The next piece of the backup (the header first, then about 1 MiB of frames each), or
    /// `None` once its checksum was given. A read error ends it: the bytes given so far are
    /// not a backup (the receiver's check of the checksum says so too).
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some(prefix) = self.prefix.take() {
            return Ok(Some(prefix));
        }
        let Some(framer) = self.framer.as_mut() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; FULL_CHUNK_BYTES];
        let n =
            read_full(&mut self.snapshot, &mut buf).map_err(|e| StoreError::io(&self.path, e))?;
        let mut out = Vec::with_capacity(n + 64);
        if n > 0 {
            framer.frame(&buf[..n], &mut out);
            self.copied += n as u64;
        }
        if n < buf.len() {
            assert_eq!(
                self.copied, self.header.payload_bytes,
                "the snapshot changed while being streamed"
            );
            self.framer.take().expect("framer").end(&mut out);
        }
        Ok(Some(out))
    }
}

/// Starts a seed streamed from `db` (`SeedStream`): takes its snapshot into `dir`, once the
/// file system there has room for it with `keep_free_bytes` left over — so that a seed never
/// takes the room the database's own commits need. Refused otherwise (`StoreError::NoSpace`),
/// before anything is written.
pub fn seed_stream(db: &Database, dir: &Path, keep_free_bytes: u64) -> Result<SeedStream> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    crate::backup_file::clear_interrupted_backups(dir);
    // The snapshot holds every page of the database (free pages too).
    let snapshot_bytes: u64 = db.read(|c| {
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((pages.max(0) as u64) * (size.max(0) as u64))
    })?;
    let needed = snapshot_bytes + keep_free_bytes;
    let free = free_bytes(dir)?;
    if free < needed {
        return Err(StoreError::NoSpace {
            path: dir.to_path_buf(),
            needed,
            free,
            kept_free: keep_free_bytes,
        });
    }
    static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(
        ".snapshot-{}-{}-s{n}.db",
        std::process::id(),
        now_ms()
    ));
    let opened = take_snapshot(db, &path).and_then(|header| {
        let file = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok((header, file))
    });
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("db-journal"));
    let (header, snapshot) = opened?;
    let json = serde_json::to_vec(&header).expect("header serializes");
    let (framer, prefix) = crate::backup_file::StreamFramer::start(FULL_MAGIC, &json)?;
    Ok(SeedStream {
        snapshot,
        path,
        header,
        framer: Some(framer),
        prefix: Some(prefix),
        copied: 0,
    })
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes the journal records since the previous log backup into `dir`: one file per epoch
/// run, then moves the log-backup cursor (which lets the journal drop them). Returns the files
/// written; none when nothing was committed since the last one.
pub fn log_backup(db: &Database, dir: &Path) -> Result<Vec<BackupFile>> {
    // Only what is durable here leaves this copy.
    log_backup_upto(db, dir, db.durable_lsn())
}

/// `log_backup` of a primary copy, up to what its callers were answered: refused when the copy
/// is not primary, or stops being primary while the bound is read. A primary that was frozen
/// (SIGSTOP) while its mirror took over committed what its writer held when it woke, stepped
/// down — after which a copy shows all it has on disk as durable — and its backup round, begun
/// while it was primary, shipped those records, never acknowledged and of the old epoch, to the
/// share (until session 34): the new primary then set the whole chain aside and the secondary
/// was seeded again.
pub fn log_backup_of_primary(db: &Database, dir: &Path) -> Result<Vec<BackupFile>> {
    let before = db.identity();
    let upto = db.durable_lsn();
    let after = db.identity();
    if before.role != Role::Primary || (after.role, after.epoch) != (Role::Primary, before.epoch) {
        return Err(StoreError::Role(format!(
            "{} is {} (epoch {}), not a primary: no log backup leaves it",
            after.name, after.role, after.epoch
        )));
    }
    log_backup_upto(db, dir, upto)
}

fn log_backup_upto(db: &Database, dir: &Path, upto: Lsn) -> Result<Vec<BackupFile>> {
    let cursor = db
        .consumers()?
        .into_iter()
        .find(|c| c.name == LOG_BACKUP_CONSUMER)
        .map(|c| c.lsn)
        .ok_or_else(|| {
            StoreError::Invalid(
                "no log backup chain: take a full backup first (it starts the chain)".into(),
            )
        })?;
    let id = db.identity();
    let mut files = Vec::new();
    let cursor = adopt_unrecorded(db, dir, cursor, &mut files)?;
    let mut next = cursor + 1;
    let mut pending: Option<(FileWriter, LogHeader)> = None;
    while next <= upto {
        let batch = db.read_journal(
            next,
            LOG_READ_RECORDS_MAX.min((upto - next + 1) as usize),
            64 << 20,
        )?;
        if batch.records.is_empty() {
            break;
        }
        let mut chain = batch.chain_before;
        for bytes in &batch.records {
            let h = peek_header(bytes)?;
            if h.lsn > upto {
                break;
            }
            if pending
                .as_ref()
                .is_some_and(|(_, header)| header.epoch != h.epoch)
            {
                let (w, header) = pending.take().expect("checked");
                files.push(finish_log(w, header, dir)?);
            }
            let (w, header) = match pending.as_mut() {
                Some(p) => p,
                None => pending.insert((
                    FileWriter::create(dir, LOG_MAGIC)?,
                    LogHeader {
                        database_id: id.database_id.to_hex(),
                        name: id.name.clone(),
                        epoch: h.epoch,
                        first_lsn: h.lsn,
                        last_lsn: h.lsn,
                        chain_before: chain,
                        chain_after: chain,
                        records: 0,
                        first_time_ms: h.time_ms,
                        last_time_ms: h.time_ms,
                        created_ms: 0,
                    },
                )),
            };
            w.frame(bytes)?;
            chain = chain.next(bytes);
            header.last_lsn = h.lsn;
            header.chain_after = chain;
            header.records += 1;
            header.last_time_ms = h.time_ms;
            next = h.lsn + 1;
        }
    }
    if let Some((w, header)) = pending.take() {
        files.push(finish_log(w, header, dir)?);
    }
    if let Some(BackupFile::Log { header, .. }) = files.last() {
        db.advance_consumer(LOG_BACKUP_CONSUMER, header.last_lsn)?;
    }
    Ok(files)
}

/// A log backup written to `dir` whose cursor move was lost (a crash between the rename and the
/// cursor update) is taken as done, once it checks out against this copy's journal: the next
/// file then follows it instead of overlapping it.
fn adopt_unrecorded(
    db: &Database,
    dir: &Path,
    mut cursor: Lsn,
    files: &mut Vec<BackupFile>,
) -> Result<Lsn> {
    let id = db.identity();
    loop {
        let prefix = format!("log-{:016x}-", cursor + 1);
        let found = match std::fs::read_dir(dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tlb"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io(dir, e)),
        };
        let Some(path) = found else { return Ok(cursor) };
        let file = verify_file(&path)?;
        let BackupFile::Log { header, .. } = &file else {
            unreachable!("a .tlb file verifies as a log backup")
        };
        let ours = |lsn| db.chain_at(lsn);
        if header.database_id != id.database_id.to_hex()
            || ours(cursor)? != Some(header.chain_before)
            || ours(header.last_lsn)? != Some(header.chain_after)
        {
            return Err(StoreError::Invalid(format!(
                "{} is in the way of the next log backup and does not match this database's \
                 journal: another chain writes to this directory",
                path.display()
            )));
        }
        db.advance_consumer(LOG_BACKUP_CONSUMER, header.last_lsn)?;
        cursor = header.last_lsn;
        files.push(file);
    }
}

fn finish_log(w: FileWriter, mut header: LogHeader, dir: &Path) -> Result<BackupFile> {
    header.created_ms = now_ms();
    let path = dir.join(log_file_name(header.first_lsn, header.last_lsn));
    if path.exists() {
        return Err(StoreError::Invalid(format!(
            "{} already exists: another log backup chain writes to this directory",
            path.display()
        )));
    }
    w.finish(
        &serde_json::to_vec(&header).expect("header serializes"),
        &path,
    )?;
    Ok(BackupFile::Log { path, header })
}

/// Streams a log backup's records, checked, as batches of at most `records_max`, from the
/// first record after `after_lsn`.
pub(crate) fn read_log_records(
    path: &Path,
    header: &LogHeader,
    after_lsn: Lsn,
    records_max: usize,
    mut sink: impl FnMut(RecordBatch) -> Result<bool>,
) -> Result<()> {
    let mut reader = FileReader::open(path)?;
    let mut walk = LogWalk::new(header);
    let mut batch = RecordBatch::default();
    let mut buf = Vec::new();
    let mut go_on = true;
    while go_on && reader.next_frame(&mut buf)? {
        let before = walk.chain;
        walk.record(path, &buf)?;
        if walk.next_lsn - 1 <= after_lsn {
            continue;
        }
        if batch.records.is_empty() {
            batch.chain_before = before;
        }
        batch.records.push(std::mem::take(&mut buf));
        if batch.records.len() >= records_max {
            go_on = sink(std::mem::take(&mut batch))?;
        }
    }
    if go_on {
        walk.end(path)?;
        reader.finish()?;
        if !batch.records.is_empty() {
            sink(batch)?;
        }
    }
    Ok(())
}

/// Writes a full backup's database file into `dir/tandem.db`, checking every checksum.
pub(crate) fn extract_full(path: &Path, header: &FullHeader, dir: &Path) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let target = dir.join(DB_FILE);
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&target).map_err(|e| StoreError::io(&target, e))?,
    );
    let mut reader = FileReader::open(path)?;
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    while reader.next_frame(&mut buf)? {
        out.write_all(&buf)
            .map_err(|e| StoreError::io(&target, e))?;
        bytes += buf.len() as u64;
    }
    reader.finish()?;
    if bytes != header.payload_bytes {
        return Err(StoreError::Corrupt(format!(
            "{}: carries {bytes} database bytes, header says {}",
            path.display(),
            header.payload_bytes
        )));
    }
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io(&target, e.into_error()))?;
    file.sync_all().map_err(|e| StoreError::io(&target, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{FileName, full_file_name, log_file_name, parse_file_name};
    use crate::{Database, Options, StoreError};

    /// A streamed seed is the file `seed_backup` writes, byte for byte but its creation time;
    /// while it streams its directory holds no file (the snapshot's name went at once); a
    /// seed the file system has no room for, with what must stay free, is refused before
    /// anything is written, naming the room needed and the room there is.
    #[test]
    fn a_seed_streams_a_full_backup_and_is_refused_where_it_does_not_fit() {
        static SCHEMA: &[crate::Migration] = &[crate::Migration {
            version: 1,
            name: "t",
            sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
        }];
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("db"), "db", Options::default()).unwrap();
        db.migrate(SCHEMA).unwrap();
        // More than one frame of pages.
        for i in 0..40 {
            db.write(move |tx| {
                tx.insert(
                    "t",
                    vec![
                        rusqlite::types::Value::Integer(i),
                        rusqlite::types::Value::Blob(vec![i as u8; 100_000]),
                    ],
                )
            })
            .unwrap();
        }
        let scratch = dir.path().join("seed-out");
        let mut stream = super::seed_stream(&db, &scratch, 0).unwrap();
        assert_eq!(stream.header().lsn, db.identity().lsn);
        assert!(stream.header().payload_bytes > 2 << 20);
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "a file staged"
        );
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next_chunk().unwrap() {
            bytes.extend_from_slice(&chunk);
        }
        assert!(stream.next_chunk().unwrap().is_none());
        let header = stream.header().clone();
        drop(stream);
        let file = dir.path().join("streamed.tfb");
        std::fs::write(&file, &bytes).unwrap();
        match super::verify_file(&file).unwrap() {
            super::BackupFile::Full { header: h, .. } => assert_eq!(h, header),
            other => panic!("not a full backup: {other:?}"),
        }
        let written = super::seed_backup(&db, &dir.path().join("written")).unwrap();
        let on_disk = std::fs::read(written.path()).unwrap();
        assert_eq!(on_disk.len(), bytes.len());
        // The same frames and checksum: the header slot differs in its creation time only.
        assert_eq!(on_disk[4108..], bytes[4108..]);
        let copy = dir.path().join("copy");
        crate::restore::restore_new(&copy, &[file], &Default::default(), false).unwrap();
        let restored = Database::open(&copy, Options::default()).unwrap();
        assert_eq!(restored.identity().chain, db.identity().chain);

        let free = super::free_bytes(&scratch).unwrap();
        let kept = free + (1 << 40);
        match super::seed_stream(&db, &scratch, kept) {
            Err(e @ StoreError::NoSpace { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("seed-out")
                        && text.contains(" MiB free, ")
                        && text.contains("MiB kept free for the database's own commits"),
                    "{text}"
                );
            }
            other => panic!("not refused: {:?}", other.map(|s| s.header().clone())),
        }
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    }

    /// A copy that stepped down shows all it has on disk as durable: its log backup round,
    /// begun while it was primary, shipped records never acknowledged (until session 34).
    #[test]
    fn only_a_primary_writes_a_log_backup_of_primary() {
        static SCHEMA: &[crate::Migration] = &[crate::Migration {
            version: 1,
            name: "t",
            sql: "CREATE TABLE t (id INTEGER PRIMARY KEY)",
        }];
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("db"), "db", Options::default()).unwrap();
        db.migrate(SCHEMA).unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir_all(&share).unwrap();
        super::full_backup(&db, &share).unwrap();
        db.write(|tx| tx.insert("t", vec![rusqlite::types::Value::Integer(1)]))
            .unwrap();
        assert_eq!(super::log_backup_of_primary(&db, &share).unwrap().len(), 1);
        db.write(|tx| tx.insert("t", vec![rusqlite::types::Value::Integer(2)]))
            .unwrap();
        db.set_role(super::Role::Mirror).unwrap();
        let e = super::log_backup_of_primary(&db, &share).unwrap_err();
        assert!(
            matches!(&e, StoreError::Role(m) if m.contains("not a primary")),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(&share).unwrap().count(),
            2,
            "the full backup and the first log only"
        );
    }

    #[test]
    fn names_parse_back_to_what_they_were_made_of() {
        assert_eq!(
            parse_file_name(&log_file_name(0x9f, 0xb0)),
            Some(FileName::Log {
                first_lsn: 0x9f,
                last_lsn: 0xb0
            })
        );
        let header = super::FullHeader {
            database_id: String::new(),
            name: "mgc".into(),
            epoch: 3,
            lsn: 1234,
            chain: crate::record::Chain::from_slice(&[0; 16]).unwrap(),
            history: Default::default(),
            last_time_ms: 0,
            created_ms: 1_700_000_000_123,
            payload_bytes: 0,
        };
        let name = full_file_name(&header);
        assert_eq!(
            parse_file_name(&name),
            Some(FileName::Full {
                lsn: 1234,
                epoch: 3,
                created_ms: 1_700_000_000_123
            })
        );
        assert_eq!(parse_file_name(&name).unwrap().lsn(), 1234);
        for other in [
            ".partial-12-0",
            "log-0000000000000002-0000000000000001.tlb",
            "log-2-3.tlb",
            "full-00000000000004d2-e3.tfb",
            "log-0000000000000001-0000000000000002.tlb.part",
            "log-shipping.json",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }
}
