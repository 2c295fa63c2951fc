//! The framing shared by full and log backup files (`docs/formats.md`):
//!
//! ```text
//! magic [8] | format_version u32 | header slot [4096]: json_len u32, json, zeros, crc32c u32
//! frame* : len u32 | crc32c(bytes) u32 | bytes
//! end frame: len 0 | crc 0
//! end magic [8] | sha256 [32] over every byte from the first frame through the end magic
//! ```
//!
//! The header is written last (its slot is reserved), so a file can be streamed without knowing
//! its LSN range up front. Files are written under a temporary name, fsynced, then renamed.

use crate::error::{Result, StoreError};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) const FULL_MAGIC: [u8; 8] = *b"TNDMFULL";
pub(crate) const LOG_MAGIC: [u8; 8] = *b"TNDMLOG1";
const END_MAGIC: [u8; 8] = *b"TNDMEND1";
/// Version of the backup file layout.
pub const BACKUP_FORMAT_VERSION: u32 = 1;
const HEADER_SLOT_BYTES: usize = 4096;
const FRAMES_OFFSET: u64 = 8 + 4 + HEADER_SLOT_BYTES as u64;
/// Bound on one frame (a record, or a chunk of a database file).
pub(crate) const FRAME_BYTES_MAX: usize = crate::record::RECORD_BYTES_MAX + 64;
/// Every this many bytes written, the file's writeback is started (`FileWriter::put`).
const WRITEBACK_EVERY_BYTES: u64 = 8 << 20;

pub(crate) struct FileWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    sha: Sha256,
    magic: [u8; 8],
    bytes: u64,
    /// `bytes` when the writeback was last started.
    written_back: u64,
}

/// A file's first bytes, before its frames: magic, format version, and the header slot
/// (`slot`, or zeros where the slot is written once the header is known).
fn file_prefix(magic: [u8; 8], slot: Option<&[u8]>) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(FRAMES_OFFSET as usize);
    prefix.extend_from_slice(&magic);
    prefix.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
    match slot {
        Some(slot) => prefix.extend_from_slice(slot),
        None => prefix.resize(FRAMES_OFFSET as usize, 0),
    }
    debug_assert_eq!(prefix.len() as u64, FRAMES_OFFSET);
    prefix
}

/// A frame's head: its length and the CRC32C of `bytes`.
fn frame_head(bytes: &[u8]) -> [u8; 8] {
    assert!(
        !bytes.is_empty() && bytes.len() <= FRAME_BYTES_MAX,
        "frame size"
    );
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    head[4..].copy_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
    head
}

/// What ends the frames: an empty frame's head (zeros), then the end magic. The SHA-256 of
/// every byte from the first frame through these follows.
fn frames_end() -> [u8; 16] {
    let mut end = [0u8; 16];
    end[8..].copy_from_slice(&END_MAGIC);
    end
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Removes what backups into `dir` left when their process died: files being written
/// (`.partial-PID-N`) and database snapshots (`.snapshot-PID-…`), which may be as large as the
/// database. A running process's are left alone. Once per directory and process: a log
/// shipping job backs up into its share every second, and what a process finds dead at its
/// first backup there stays dead. Best effort.
pub(crate) fn clear_interrupted_backups(dir: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    {
        let mut swept = SWEPT.lock().expect("swept directories");
        if swept.iter().any(|d| d == dir) {
            return;
        }
        swept.push(dir.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix(".partial-")
            .or_else(|| name.strip_prefix(".snapshot-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !crate::restore::process_running(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl FileWriter {
    pub(crate) fn create(dir: &Path, magic: [u8; 8]) -> Result<FileWriter> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        clear_interrupted_backups(dir);
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".partial-{}-{n}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&file_prefix(magic, None))
            .map_err(|e| StoreError::io(&tmp, e))?;
        Ok(FileWriter {
            out: Some(out),
            tmp,
            sha: Sha256::new(),
            magic,
            bytes: FRAMES_OFFSET,
            written_back: 0,
        })
    }

    pub(crate) fn frame(&mut self, bytes: &[u8]) -> Result<()> {
        self.put(&frame_head(bytes))?;
        self.put(bytes)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.sha.update(b);
        self.bytes += b.len() as u64;
        let out = self.out.as_mut().expect("open until finish");
        out.write_all(b).map_err(|e| StoreError::io(&self.tmp, e))?;
        if self.bytes - self.written_back >= WRITEBACK_EVERY_BYTES {
            // The final fsync then finds most of a large file written while the rest was made,
            // instead of writing it all (as PostgreSQL's `backend_flush_after`).
            self.written_back = self.bytes;
            crate::ack::start_writeback(out.get_ref());
        }
        Ok(())
    }

    /// Ends the frames, writes the header into its slot and the checksum, makes the file durable
    /// and gives it its final name. Returns the file's size.
    pub(crate) fn finish(mut self, header_json: &[u8], path: &Path) -> Result<u64> {
        let slot = header_slot(header_json)?;
        self.put(&frames_end())?;
        let digest = self.sha.clone().finalize();
        let mut out = self.out.take().expect("open until finish");
        out.write_all(&digest)
            .map_err(|e| StoreError::io(&self.tmp, e))?;
        let file = out
            .into_inner()
            .map_err(|e| StoreError::io(&self.tmp, e.into_error()))?;
        debug_assert_eq!(self.magic.len(), 8);
        file.write_all_at(&slot, 12)
            .map_err(|e| StoreError::io(&self.tmp, e))?;
        file.sync_all().map_err(|e| StoreError::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, path).map_err(|e| StoreError::io(path, e))?;
        self.tmp = PathBuf::new();
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(self.bytes + 32)
    }
}

/// The header slot holding `header_json`: its length, the JSON, zeros, its checksum.
fn header_slot(header_json: &[u8]) -> Result<Vec<u8>> {
    if header_json.len() > HEADER_SLOT_BYTES - 8 {
        return Err(StoreError::Invalid(format!(
            "backup header of {} bytes exceeds its {}-byte slot",
            header_json.len(),
            HEADER_SLOT_BYTES - 8
        )));
    }
    let mut slot = vec![0u8; HEADER_SLOT_BYTES];
    slot[..4].copy_from_slice(&(header_json.len() as u32).to_le_bytes());
    slot[4..4 + header_json.len()].copy_from_slice(header_json);
    let crc = crc32c::crc32c(&slot[..HEADER_SLOT_BYTES - 4]);
    slot[HEADER_SLOT_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
    Ok(slot)
}

/// A backup file made as a stream of bytes rather than a file: its header is known before its
/// first frame (so it goes first, in its slot), and nothing is written anywhere — the caller
/// sends each piece on. The bytes are those `FileWriter` would have put in the file.
pub(crate) struct StreamFramer {
    sha: Sha256,
}

impl StreamFramer {
    /// The framer, and the file's first bytes: magic, format version, the header slot.
    pub(crate) fn start(magic: [u8; 8], header_json: &[u8]) -> Result<(StreamFramer, Vec<u8>)> {
        let prefix = file_prefix(magic, Some(&header_slot(header_json)?));
        Ok((StreamFramer { sha: Sha256::new() }, prefix))
    }

    /// One frame of `bytes`, appended to `out`.
    pub(crate) fn frame(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let from = out.len();
        out.extend_from_slice(&frame_head(bytes));
        out.extend_from_slice(bytes);
        self.sha.update(&out[from..]);
    }

    /// The end frame, the end magic and the checksum, appended to `out`.
    pub(crate) fn end(mut self, out: &mut Vec<u8>) {
        let end = frames_end();
        self.sha.update(end);
        out.extend_from_slice(&end);
        out.extend_from_slice(&self.sha.finalize());
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // An unfinished file never keeps a name a restore would read.
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a backup file frame by frame, checking every checksum on the way.
pub(crate) struct FileReader {
    input: BufReader<File>,
    pub(crate) path: PathBuf,
    pub(crate) magic: [u8; 8],
    pub(crate) header_json: Vec<u8>,
    sha: Sha256,
    frames: u64,
    ended: bool,
}

impl FileReader {
    pub(crate) fn open(path: &Path) -> Result<FileReader> {
        let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let bad = |what: String| StoreError::Corrupt(format!("{}: {what}", path.display()));
        let mut head = [0u8; 12];
        input
            .read_exact(&mut head)
            .map_err(|_| bad("too short to be a backup file".into()))?;
        let magic: [u8; 8] = head[..8].try_into().expect("8 bytes");
        if magic != FULL_MAGIC && magic != LOG_MAGIC {
            return Err(bad("not a tandem backup file (unknown magic)".into()));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if version != BACKUP_FORMAT_VERSION {
            return Err(bad(format!(
                "backup format version {version}; this program reads version {BACKUP_FORMAT_VERSION}"
            )));
        }
        let mut slot = vec![0u8; HEADER_SLOT_BYTES];
        input
            .read_exact(&mut slot)
            .map_err(|_| bad("truncated inside its header".into()))?;
        let crc = u32::from_le_bytes(slot[HEADER_SLOT_BYTES - 4..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&slot[..HEADER_SLOT_BYTES - 4]) != crc {
            return Err(bad("header checksum mismatch (damaged header)".into()));
        }
        let len = u32::from_le_bytes(slot[..4].try_into().expect("4 bytes")) as usize;
        if len > HEADER_SLOT_BYTES - 8 {
            return Err(bad(format!("header length {len} out of range")));
        }
        Ok(FileReader {
            input,
            path: path.to_path_buf(),
            magic,
            header_json: slot[4..4 + len].to_vec(),
            sha: Sha256::new(),
            frames: 0,
            ended: false,
        })
    }

    fn bad(&self, what: String) -> StoreError {
        StoreError::Corrupt(format!("{}: {what}", self.path.display()))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.bad(format!("truncated after {} frames", self.frames))
            } else {
                StoreError::io(&self.path, e)
            }
        })?;
        self.sha.update(&*buf);
        Ok(())
    }

    /// The next frame into `buf`; false at the end frame.
    pub(crate) fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        assert!(!self.ended, "read past the end frame");
        let mut head = [0u8; 8];
        self.read(&mut head)?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len == 0 {
            if crc != 0 {
                return Err(self.bad("damaged end frame".into()));
            }
            self.ended = true;
            return Ok(false);
        }
        if len > FRAME_BYTES_MAX {
            return Err(self.bad(format!(
                "frame {} claims {len} bytes (damaged)",
                self.frames
            )));
        }
        buf.resize(len, 0);
        self.read(buf)?;
        if crc32c::crc32c(buf) != crc {
            return Err(self.bad(format!("frame {} checksum mismatch (damaged)", self.frames)));
        }
        self.frames += 1;
        Ok(true)
    }

    /// After the end frame: checks the end magic, the file checksum and that nothing follows.
    pub(crate) fn finish(mut self) -> Result<()> {
        assert!(self.ended, "finish before the end frame");
        let mut end = [0u8; 8];
        self.read(&mut end)?;
        if end != END_MAGIC {
            return Err(self.bad("damaged end marker".into()));
        }
        let digest = self.sha.clone().finalize();
        let mut stored = [0u8; 32];
        self.input
            .read_exact(&mut stored)
            .map_err(|_| self.bad("truncated inside its checksum".into()))?;
        if stored[..] != digest[..] {
            return Err(self.bad("file checksum mismatch (damaged)".into()));
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.bad("bytes after the end of the backup".into())),
            Err(e) => Err(StoreError::io(&self.path, e)),
        }
    }
}
