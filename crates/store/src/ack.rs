//! The acknowledgment stage. The writer commits a batch to SQLite (its WAL frames written, not
//! yet fsynced: `synchronous=NORMAL`) and goes on with the next batch; this stage fsyncs the WAL
//! and only then answers the batch's callers and publishes the durable LSN. One fsync covers
//! every batch committed before it began, so a slow disk makes groups larger, not the writer
//! idle. (Synchronous mirroring waits here too, for the mirror's hardened LSN.)

use crate::database::Published;
use crate::error::{Result, StoreError};
use crate::record::Lsn;
use crate::writer::Completion;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Batches committed but not yet answered, at most.
const PENDING_BATCHES_MAX: usize = 1024;

/// A committed batch waiting to be durable: its last LSN and its callers.
pub(crate) struct Pending {
    pub(crate) lsn: Lsn,
    pub(crate) replies: Vec<(Completion, Lsn)>,
}

pub(crate) struct AckStage {
    queue: Option<SyncSender<Pending>>,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl AckStage {
    pub(crate) fn start(wal: PathBuf, published: Arc<Published>) -> Result<AckStage> {
        let (queue, rx) = sync_channel(PENDING_BATCHES_MAX);
        let failure = Arc::new(Mutex::new(None));
        let f = failure.clone();
        let thread = std::thread::Builder::new()
            .name("ack".into())
            .spawn(move || run(wal, published, rx, f))
            .map_err(|e| {
                StoreError::Closed(format!("cannot start the acknowledgment thread: {e}"))
            })?;
        Ok(AckStage {
            queue: Some(queue),
            thread: Some(thread),
            failure,
        })
    }

    /// Hands a committed batch over; its callers are answered once it is durable.
    pub(crate) fn submit(&self, pending: Pending) {
        let queue = self.queue.as_ref().expect("open while the writer runs");
        if let Err(e) = queue.send(pending) {
            for (reply, _) in e.0.replies {
                reply(Err(StoreError::Closed(
                    "the acknowledgment thread stopped".into(),
                )));
            }
        }
    }

    /// Blocks until everything committed up to `lsn` is durable.
    pub(crate) fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply: Completion = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.submit(Pending {
            lsn,
            replies: vec![(reply, lsn)],
        });
        rx.recv()
            .map_err(|_| StoreError::Closed("the acknowledgment thread stopped".into()))?
            .map(|_| ())
    }

    /// Set once an fsync failed: from then on the database accepts no write.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }
}

impl Drop for AckStage {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync(wal: &mut Option<File>, path: &PathBuf) -> std::io::Result<()> {
    if wal.is_none() {
        match File::open(path) {
            Ok(f) => *wal = Some(f),
            // No WAL yet: nothing was written through it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    wal.as_ref().expect("opened above").sync_data()
}

fn run(
    path: PathBuf,
    published: Arc<Published>,
    rx: Receiver<Pending>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut wal: Option<File> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            batch.push(p);
        }
        let failed = failure.lock().expect("failure lock").clone();
        let result = match failed {
            Some(f) => Err(f),
            None => sync(&mut wal, &path).map_err(|e| {
                let msg = format!(
                    "fsync of {} failed ({e}); the database accepts no more writes: restart \
                     the node after checking the disk",
                    path.display()
                );
                *failure.lock().expect("failure lock") = Some(msg.clone());
                msg
            }),
        };
        match result {
            Ok(()) => {
                let lsn = batch.iter().map(|p| p.lsn).max().expect("at least one");
                published.set_durable(lsn);
                for p in batch {
                    for (reply, lsn) in p.replies {
                        reply(Ok(lsn));
                    }
                }
            }
            Err(msg) => {
                for p in batch {
                    for (reply, _) in p.replies {
                        reply(Err(StoreError::Closed(msg.clone())));
                    }
                }
            }
        }
    }
}
