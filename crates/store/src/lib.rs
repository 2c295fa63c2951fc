//! tandem's store: journaled SQLite databases.
//!
//! Every committed transaction gets a log sequence number (LSN) and its row changes are recorded
//! in the database's journal in the same SQLite transaction. Everything that moves data between
//! copies — mirroring, log shipping, the backup service, backups — moves that journal
//! (DESIGN.md §2). This crate knows nothing of networking, chat or pools.

mod ack;
mod backup;
mod backup_file;
mod callers;
mod checkpoint;
mod database;
mod error;
mod follow;
mod history;
mod journal;
mod recent;
mod record;
pub mod replication;
mod restore;
mod schema;
mod sqlite_log;
mod stages;
mod stall;
mod wal_ahead;
mod wal_vfs;
mod writer;

pub use ack::{Gate, GateStatus};
pub use backup::{
    BackupFile, FileName, FullHeader, LOG_BACKUP_CONSUMER, LogHeader, SeedStream, free_bytes,
    full_backup, log_backup, log_backup_of_primary, log_file_name, parse_file_name, read_header,
    seed_backup, seed_stream, verify_file,
};
pub use backup_file::BACKUP_FORMAT_VERSION;
pub use callers::defer_to_databases;
pub use database::{
    CommitFailure, Committed, DB_FILE, Database, DatabaseId, FORMAT_VERSION, IO_STALL_REPORTED_MS,
    Identity, Options, Role, WriterStats, identity_in, inspect,
};
pub use error::{Result, StoreError};
pub use follow::{Follow, Follower};
pub use history::{Comparison, History, HistoryEntry, Position, compare};
pub use journal::{Consumer, JournalStats, RecordBatch, UPSTREAM_CONSUMER};
pub use record::{Chain, Epoch, Lsn, Op, RECORD_BYTES_MAX, Record, RecordHeader, peek_header};
pub use restore::{
    ChainReport, Recovery, RestoreOptions, RestoreReport, clear_interrupted_restores, collect,
    process_running, restore_logs, restore_new, verify_chain,
};
pub use rusqlite;
pub use rusqlite::types::Value;
pub use schema::Migration;
pub use sqlite_log::{log_sqlite_to, sqlite_log_is_failure};
pub use stages::{CommitStages, StageMeans};
pub use stall::IoStall;
pub use writer::{Applied, Durability, StopAt, Tx, time_text};
