//! tandem's store: journaled SQLite databases.
//!
//! Every committed transaction gets a log sequence number (LSN) and its row changes are recorded
//! in the database's journal in the same SQLite transaction. Everything that moves data between
//! copies — mirroring, log shipping, the backup service, backups — moves that journal
//! (DESIGN.md §2). This crate knows nothing of networking, chat or pools.

mod database;
mod error;
mod history;
mod journal;
mod record;
mod schema;
mod writer;

pub use database::{
    Committed, DB_FILE, Database, DatabaseId, FORMAT_VERSION, Identity, Options, Role, inspect,
};
pub use error::{Result, StoreError};
pub use history::{Comparison, History, HistoryEntry, Position, compare};
pub use journal::{Consumer, JournalStats, RecordBatch};
pub use record::{Chain, Epoch, Lsn, Op, Record, RecordHeader, peek_header};
pub use rusqlite;
pub use rusqlite::types::Value;
pub use schema::Migration;
pub use writer::{Applied, StopAt, Tx};
