//! The witness role (DESIGN.md §2, mirroring and the witness). Per mirrored database it durably
//! holds the current epoch, which copy is primary, and whether the mirror is synchronized; it
//! raises the epoch, by compare-and-set, only when a synchronized mirror asks and the primary
//! has been silent for `FAILOVER_MS` — longer than the primary's lease, so the old primary has
//! stopped acknowledging first. Its records live in a store database of its own.

use crate::error::ApiError;
use crate::json_body::{BodyRejection, Object};
use crate::server::Shared;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tandem_store::{Database, Migration, Options, StoreError, Tx, Value};

/// A primary acknowledges writes only while it heard, within this, from its mirror or witness.
pub const LEASE_MS: u64 = 1_000;
/// A mirror takes over only after this long without a word from the primary (mirror and
/// witness both): the lease plus a margin.
pub const FAILOVER_MS: u64 = 1_500;

static WITNESS_SCHEMA: &[Migration] = &[Migration {
    version: 1,
    name: "witness records",
    sql: "CREATE TABLE records (
              database TEXT PRIMARY KEY,
              database_id TEXT NOT NULL,
              epoch INTEGER NOT NULL,
              primary_node TEXT NOT NULL,
              synchronized INTEGER NOT NULL,
              updated_ms INTEGER NOT NULL
          ) WITHOUT ROWID;",
}];

/// What the witness holds for one mirrored database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessRecord {
    pub database: String,
    pub database_id: String,
    pub epoch: u64,
    pub primary: String,
    /// The mirror has every acknowledged record: automatic failover is allowed.
    pub synchronized: bool,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WitnessRequest {
    /// A primary says it is alive (renews its lease when the witness agrees it is primary).
    Heartbeat {
        database: String,
        node: String,
        database_id: String,
        epoch: u64,
    },
    /// The primary says whether its mirror is synchronized.
    Synchronized {
        database: String,
        node: String,
        epoch: u64,
        synchronized: bool,
    },
    /// A mirror asks to take over from a silent primary.
    Failover {
        database: String,
        node: String,
        database_id: String,
        epoch: u64,
    },
    /// The primary hands over to its mirror (planned failover, after the mirror caught up).
    Handover {
        database: String,
        node: String,
        to: String,
        epoch: u64,
    },
    /// Mirroring was removed: the witness forgets the database.
    Forget {
        database: String,
    },
    Get {
        database: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// The asker is not the primary of the current epoch: it must stop writing.
    Fenced,
    /// The request cannot be granted now (the reason says why).
    Refused,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitnessAnswer {
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub record: Option<WitnessRecord>,
}

pub(crate) struct Witness {
    db: Database,
    started: Instant,
    /// When each primary was last heard from, per database.
    heard: Mutex<HashMap<String, (String, Instant)>>,
    /// One decision at a time: every compare-and-set reads and writes under it.
    decide: tokio::sync::Mutex<()>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Witness {
    /// Opens, or creates on the node's first start, the witness's database. `Ok(Err(why))`
    /// when it is damaged: the node then serves without the witness role (no failover by
    /// itself in the site) rather than with a witness that forgot what it granted, which could
    /// let a stale primary take writes again.
    pub(crate) fn open(data_dir: &Path) -> Result<Result<Witness, String>, String> {
        let path = data_dir.join("witness");
        let opened = if path.join(tandem_store::DB_FILE).exists() {
            Database::open(&path, Options::default())
        } else {
            Database::create(&path, "witness", Options::default())
        }
        .and_then(|db| db.migrate(WITNESS_SCHEMA).map(|_| db));
        let db = match opened {
            Ok(db) => db,
            Err(e) if e.is_damage() => {
                return Ok(Err(format!(
                    "the witness's database in {} is damaged ({e}): this node serves without \
                     the witness role, so no mirror of its site takes over by itself; move that \
                     directory aside and restart the node once no primary of a past epoch runs \
                     (a new witness learns each primary from its heartbeats)",
                    path.display()
                )));
            }
            Err(e) => return Err(format!("the witness database in {}: {e}", path.display())),
        };
        Ok(Ok(Witness {
            db,
            started: Instant::now(),
            heard: Mutex::new(HashMap::new()),
            decide: tokio::sync::Mutex::new(()),
        }))
    }

    /// What the witness's own database warns of (its commits failing, its disk not answering),
    /// each line saying whose database it is.
    pub(crate) fn health(&self) -> Vec<String> {
        self.db
            .health()
            .unwrap_or_default()
            .into_iter()
            .map(|w| format!("the witness's database: {w}"))
            .collect()
    }

    pub(crate) fn records(&self) -> Vec<WitnessRecord> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT database, database_id, epoch, primary_node, synchronized, updated_ms \
                     FROM records ORDER BY database",
                )?;
                let rows = stmt.query_map([], row_to_record)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .unwrap_or_default()
    }

    fn record(&self, database: &str) -> Result<Option<WitnessRecord>, ApiError> {
        let database = database.to_string();
        Ok(self.db.read(move |c| {
            use tandem_store::rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT database, database_id, epoch, primary_node, synchronized, updated_ms \
                 FROM records WHERE database = ?1",
                [&database],
                row_to_record,
            )
            .optional()?)
        })?)
    }

    async fn store(&self, r: WitnessRecord, exists: bool) -> Result<WitnessRecord, ApiError> {
        let row = r.clone();
        self.db
            .write_async(move |tx: &mut Tx<'_>| -> Result<(), StoreError> {
                let values = vec![
                    Value::Text(row.database.clone()),
                    Value::Text(row.database_id.clone()),
                    Value::Integer(row.epoch as i64),
                    Value::Text(row.primary.clone()),
                    Value::Integer(row.synchronized as i64),
                    Value::Integer(row.updated_ms),
                ];
                if exists {
                    tx.update("records", values)
                } else {
                    tx.insert("records", values)
                }
            })
            .await?;
        Ok(r)
    }

    fn silent_ms(&self, database: &str, primary: &str) -> u64 {
        let heard = self.heard.lock().expect("heard lock");
        let since = match heard.get(database) {
            Some((node, at)) if node == primary => *at,
            // Not heard since this witness started: count from the start.
            _ => self.started,
        };
        since.elapsed().as_millis() as u64
    }

    pub(crate) async fn handle(&self, req: WitnessRequest) -> Result<WitnessAnswer, ApiError> {
        let _one = self.decide.lock().await;
        let ok = |r: WitnessRecord| WitnessAnswer {
            verdict: Verdict::Ok,
            reason: None,
            record: Some(r),
        };
        let no = |verdict, reason: String, r: Option<WitnessRecord>| WitnessAnswer {
            verdict,
            reason: Some(reason),
            record: r,
        };
        match req {
            WitnessRequest::Heartbeat {
                database,
                node,
                database_id,
                epoch,
            } => {
                let current = self.record(&database)?;
                let fresh = WitnessRecord {
                    database: database.clone(),
                    database_id: database_id.clone(),
                    epoch,
                    primary: node.clone(),
                    synchronized: false,
                    updated_ms: now_ms(),
                };
                let answer = match current {
                    None => ok(self.store(fresh, false).await?),
                    Some(r)
                        if r.primary == node
                            && r.epoch == epoch
                            && r.database_id == database_id =>
                    {
                        ok(r)
                    }
                    // A copy recovered by an operator (a new epoch) is the primary from now on.
                    Some(r) if epoch > r.epoch && r.database_id == database_id => {
                        tracing::info!(
                            database,
                            node,
                            epoch,
                            "witness: a newer epoch names a new primary"
                        );
                        ok(self.store(fresh, true).await?)
                    }
                    Some(r) => {
                        let reason = format!(
                            "{node} is not the primary of {database}: the witness holds epoch {} with primary {}",
                            r.epoch, r.primary
                        );
                        return Ok(no(Verdict::Fenced, reason, Some(r)));
                    }
                };
                self.heard
                    .lock()
                    .expect("heard lock")
                    .insert(database, (node, Instant::now()));
                Ok(answer)
            }
            WitnessRequest::Synchronized {
                database,
                node,
                epoch,
                synchronized,
            } => match self.record(&database)? {
                Some(r) if r.primary == node && r.epoch == epoch => {
                    self.heard
                        .lock()
                        .expect("heard lock")
                        .insert(database, (node, Instant::now()));
                    if r.synchronized == synchronized {
                        return Ok(ok(r));
                    }
                    tracing::info!(database = %r.database, synchronized, "witness: mirror state");
                    Ok(ok(self
                        .store(
                            WitnessRecord {
                                synchronized,
                                updated_ms: now_ms(),
                                ..r
                            },
                            true,
                        )
                        .await?))
                }
                r => Ok(no(
                    Verdict::Fenced,
                    format!("{node} is not the primary of {database} at epoch {epoch}"),
                    r,
                )),
            },
            WitnessRequest::Failover {
                database,
                node,
                database_id,
                epoch,
            } => {
                let Some(r) = self.record(&database)? else {
                    return Ok(no(
                        Verdict::Refused,
                        format!("the witness knows no primary of {database}"),
                        None,
                    ));
                };
                if r.primary == node {
                    return Ok(ok(r));
                }
                let silent = self.silent_ms(&database, &r.primary);
                let refusal = if r.database_id != database_id {
                    Some(format!(
                        "{node} holds another database than {database}'s primary"
                    ))
                } else if r.epoch != epoch {
                    Some(format!(
                        "{node} is at epoch {epoch}, the witness at epoch {}",
                        r.epoch
                    ))
                } else if !r.synchronized {
                    Some(format!(
                        "the mirror of {database} is not synchronized: it may lack acknowledged \
                         records (failover needs the operator)"
                    ))
                } else if silent < FAILOVER_MS {
                    Some(format!(
                        "the witness heard from {} {silent} ms ago",
                        r.primary
                    ))
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    return Ok(no(Verdict::Refused, reason, Some(r)));
                }
                tracing::warn!(database, from = %r.primary, to = node, epoch = r.epoch + 1, silent_ms = silent, "witness: automatic failover");
                let next = WitnessRecord {
                    epoch: r.epoch + 1,
                    primary: node.clone(),
                    synchronized: false,
                    updated_ms: now_ms(),
                    ..r
                };
                let stored = self.store(next, true).await?;
                self.heard
                    .lock()
                    .expect("heard lock")
                    .insert(database, (node, Instant::now()));
                Ok(ok(stored))
            }
            WitnessRequest::Handover {
                database,
                node,
                to,
                epoch,
            } => match self.record(&database)? {
                Some(r) if r.primary == node && r.epoch == epoch => {
                    tracing::info!(
                        database,
                        from = node,
                        to,
                        epoch = epoch + 1,
                        "witness: planned failover"
                    );
                    let next = WitnessRecord {
                        epoch: epoch + 1,
                        primary: to.clone(),
                        synchronized: false,
                        updated_ms: now_ms(),
                        ..r
                    };
                    let stored = self.store(next, true).await?;
                    self.heard
                        .lock()
                        .expect("heard lock")
                        .insert(database, (to, Instant::now()));
                    Ok(ok(stored))
                }
                r => Ok(no(
                    Verdict::Fenced,
                    format!("{node} is not the primary of {database} at epoch {epoch}"),
                    r,
                )),
            },
            WitnessRequest::Forget { database } => {
                let d = database.clone();
                self.db
                    .write_async(move |tx: &mut Tx<'_>| -> Result<(), StoreError> {
                        let exists = tx
                            .query_row("SELECT 1 FROM records WHERE database = ?1", [&d], |_| {
                                Ok(())
                            })?
                            .is_some();
                        if exists {
                            tx.delete("records", vec![Value::Text(d.clone())])?;
                        }
                        Ok(())
                    })
                    .await?;
                self.heard.lock().expect("heard lock").remove(&database);
                Ok(WitnessAnswer {
                    verdict: Verdict::Ok,
                    reason: None,
                    record: None,
                })
            }
            WitnessRequest::Get { database } => Ok(WitnessAnswer {
                verdict: Verdict::Ok,
                reason: None,
                record: self.record(&database)?,
            }),
        }
    }
}

fn row_to_record(
    r: &tandem_store::rusqlite::Row<'_>,
) -> tandem_store::rusqlite::Result<WitnessRecord> {
    Ok(WitnessRecord {
        database: r.get(0)?,
        database_id: r.get(1)?,
        epoch: r.get::<_, i64>(2)? as u64,
        primary: r.get(3)?,
        synchronized: r.get::<_, i64>(4)? != 0,
        updated_ms: r.get(5)?,
    })
}

/// `POST /internal/v1/witness`
pub(crate) async fn serve(
    State(node): State<Shared>,
    body: Result<Object<WitnessRequest>, BodyRejection>,
) -> Result<Json<WitnessAnswer>, ApiError> {
    let Object(req) = body.map_err(ApiError::json)?;
    let witness = node
        .witness
        .as_ref()
        .ok_or_else(|| match &node.witness_failure {
            Some(why) => ApiError::unavailable(why.clone()),
            None => ApiError::not_found(format!("node {} is not a witness", node.name)),
        })?;
    Ok(Json(witness.handle(req).await?))
}

/// How long a witness request may take.
pub(crate) const WITNESS_TIMEOUT: Duration = Duration::from_millis(500);
