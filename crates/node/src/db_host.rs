//! The db role: the database copies on this node, each opened once, and the domain schema each
//! kind of database carries. Copies come and go at run time (a mirror reseeded, a mirror
//! installed): each is behind a lock that hands out cheap clones of its handle.

use crate::status::DatabaseStatus;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tandem_store::{Database, Options, Role};
use tandem_topology::{DATABASE_CMS, Placement, PlacementRole, Topology};

/// What a database holds, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Users,
    Cms,
    /// The chat database `mgc`.
    Chat,
    /// A database whose domain schema comes with a later part (`mgccomp`).
    Other,
}

pub(crate) fn kind_of(database: &str) -> Kind {
    if database == DATABASE_CMS {
        Kind::Cms
    } else if database == tandem_topology::DATABASE_MGC {
        Kind::Chat
    } else if database.starts_with("users-") {
        Kind::Users
    } else {
        Kind::Other
    }
}

/// Runs what a copy of `database` needs before serving: on a primary its migrations (and the
/// CMS seed), on every copy the derived structures its kind maintains.
pub(crate) fn prepare(db: &Database, database: &str, topology: &Topology) -> Result<(), String> {
    let primary = db.identity().role == Role::Primary;
    let err = |e: &dyn std::fmt::Display| format!("database {database}: {e}");
    match kind_of(database) {
        Kind::Users if primary => {
            db.migrate(tandem_pool::users::USERS_SCHEMA)
                .map_err(|e| err(&e))?;
        }
        Kind::Cms if primary => {
            db.migrate(tandem_pool::cms::CMS_SCHEMA)
                .map_err(|e| err(&e))?;
            if tandem_pool::cms::seed(db, topology).map_err(|e| format!("seeding the CMS: {e}"))? {
                tracing::info!(database, "CMS seeded from the topology");
            }
        }
        Kind::Chat => tandem_chat::prepare(db).map_err(|e| err(&e))?,
        _ => {}
    }
    Ok(())
}

pub(crate) struct Hosted {
    /// What the topology places here (`None`: installed at run time, a mirror for instance).
    pub(crate) placement: Option<PlacementRole>,
    db: RwLock<Option<Database>>,
    /// The copy was too damaged to open when the node started: why, and where its files are
    /// kept. Shown while the copy is absent (until it is made again).
    set_aside: RwLock<Option<String>>,
}

impl Hosted {
    pub(crate) fn get(&self) -> Option<Database> {
        self.db.read().expect("copy lock").clone()
    }
}

/// Every copy on this node.
pub(crate) struct DbHost {
    dir: PathBuf,
    copies: RwLock<BTreeMap<String, Arc<Hosted>>>,
    /// Per database: held by whatever replaces or restores the copy, or writes backups of it
    /// (log shipping's jobs, the online backup, restore and recover), one at a time.
    operations: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How long reopening a copy waits for the last users of its previous handle to let go.
const REOPEN_WAIT_MS: u64 = 10_000;

impl DbHost {
    /// Opens every copy the topology places on `node` that exists. A missing primary copy is
    /// created when `create_primaries` says so for it (a node's first start, or a database with
    /// no mirror to fetch it from); copies placed as mirrors are seeded by replication.
    pub(crate) fn open(
        topology: &Topology,
        node: &str,
        data_dir: PathBuf,
        create_primary: impl Fn(&str) -> bool,
    ) -> Result<DbHost, String> {
        let dir = data_dir.join("databases");
        // Seeds under way when the node last stopped — a download, a backup being streamed to
        // a partner — are of no use now (none runs before the node serves) and may be as large
        // as a copy.
        for scratch in [".seed", ".seed-out"] {
            let p = dir.join(scratch);
            if p.exists()
                && let Err(e) = std::fs::remove_dir_all(&p)
            {
                tracing::warn!(path = %p.display(), error = %e, "cannot clear the seeds' scratch directory");
            }
        }
        let mut copies = BTreeMap::new();
        for Placement { database, role } in topology.databases_on(node) {
            let path = dir.join(&database);
            // A restore or a seed of this copy that the node's end cut short left its work
            // beside it (or, where directories cannot be swapped in one step, the copy set
            // aside: it is put back).
            for p in tandem_store::clear_interrupted_restores(&path) {
                tracing::warn!(database, path = %p.display(), "cleared what an interrupted restore left");
            }
            let exists = path.join(tandem_store::DB_FILE).exists();
            let mut set_aside = None;
            let opened = match exists.then(|| Database::open(&path, Options::default())) {
                Some(Err(e))
                    if e.is_damage()
                        && (role != PlacementRole::Primary || !create_primary(&database)) =>
                {
                    // A copy made from another one (a mirror's, a standby's, a secondary's) or
                    // a mirrored primary's (its mirror took over when it stopped, or holds every
                    // acknowledged record) too damaged to open is made again from it, as a
                    // missing one is; the node serves its other copies meanwhile. The damaged
                    // files are kept, aside.
                    let aside = dir
                        .join(".damaged")
                        .join(format!("{database}-{}", crate::log_shipping::now_ms()));
                    std::fs::create_dir_all(dir.join(".damaged"))
                        .and_then(|()| std::fs::rename(&path, &aside))
                        .map_err(|io| {
                            format!("database {database} in {}: {e}; {io}", path.display())
                        })?;
                    tracing::error!(database, error = %e, aside = %aside.display(), "the copy is damaged and cannot be opened: moved aside, it is made again from its source");
                    set_aside = Some(format!(
                        "the copy was too damaged to open ({e}); its files are kept in {}: it \
                         is made again from its partner or source once that one serves it",
                        aside.display()
                    ));
                    None
                }
                Some(r) => Some(r),
                None if role == PlacementRole::Primary && create_primary(&database) => {
                    Some(Database::create(&path, &database, Options::default()))
                }
                None => None,
            };
            let db = match opened {
                Some(r) => {
                    let db =
                        r.map_err(|e| format!("database {database} in {}: {e}", path.display()))?;
                    prepare(&db, &database, topology)?;
                    let id = db.identity();
                    tracing::info!(database, role = %id.role, lsn = id.lsn, epoch = id.epoch, "database open");
                    Some(db)
                }
                None => None,
            };
            copies.insert(
                database,
                Arc::new(Hosted {
                    placement: Some(role),
                    db: RwLock::new(db),
                    set_aside: RwLock::new(set_aside),
                }),
            );
        }
        Ok(DbHost {
            dir,
            copies: RwLock::new(copies),
            operations: Default::default(),
        })
    }

    pub(crate) fn get(&self, database: &str) -> Option<Database> {
        self.hosted(database).and_then(|h| h.get())
    }

    pub(crate) fn hosted(&self, database: &str) -> Option<Arc<Hosted>> {
        self.copies
            .read()
            .expect("copies lock")
            .get(database)
            .cloned()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.copies
            .read()
            .expect("copies lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Where the copy of `database` lives on this node.
    pub(crate) fn path_of(&self, database: &str) -> PathBuf {
        self.dir.join(database)
    }

    /// Puts `db` in place of whatever copy of `database` was hosted (closing it once its last
    /// user lets go), or hosts it for the first time.
    pub(crate) fn replace(&self, database: &str, db: Option<Database>) {
        let hosted = {
            let mut copies = self.copies.write().expect("copies lock");
            copies
                .entry(database.to_string())
                .or_insert_with(|| {
                    Arc::new(Hosted {
                        placement: None,
                        db: RwLock::new(None),
                        set_aside: RwLock::new(None),
                    })
                })
                .clone()
        };
        let old = std::mem::replace(&mut *hosted.db.write().expect("copy lock"), db);
        // Closed (when it was the last handle) after the lock is let go: closing stops the
        // copy's followers and writer, which may take a while, and `status` reads this lock.
        drop(old);
    }

    /// Closes the copy of `database` and moves its files to `<databases>/<kind>/<database>-<ms>`,
    /// with `why` (given where the files are) shown in `status` until the copy is made again
    /// (from its partner or source, as a missing one is). Blocking. Where the files went, or
    /// why they could not be moved (the copy is closed either way).
    pub(crate) fn set_aside(
        &self,
        database: &str,
        kind: &str,
        why: impl FnOnce(&Path) -> String,
    ) -> Result<PathBuf, String> {
        let Some(hosted) = self.hosted(database) else {
            return Err(format!("no copy of {database} here"));
        };
        let path = self.path_of(database);
        let aside = self
            .dir
            .join(kind)
            .join(format!("{database}-{}", crate::log_shipping::now_ms()));
        let db = hosted.db.write().expect("copy lock").take();
        // Closed (its last handle, before the node serves) before its files move.
        drop(db);
        let moved = std::fs::create_dir_all(self.dir.join(kind))
            .and_then(|()| std::fs::rename(&path, &aside))
            .map_err(|e| format!("cannot move {} to {}: {e}", path.display(), aside.display()));
        let shown = match &moved {
            Ok(()) => why(&aside),
            Err(e) => format!("{}; and it could not be moved aside: {e}", why(&path)),
        };
        *hosted.set_aside.write().expect("set-aside lock") = Some(shown);
        moved.map(|()| aside)
    }

    /// The lock that serializes the operations that replace, restore or back up `database`.
    pub(crate) fn operations(&self, database: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.operations
            .lock()
            .expect("operations lock")
            .entry(database.to_string())
            .or_default()
            .clone()
    }

    /// Opens the copy of `database` in its directory and prepares it, waiting up to
    /// `REOPEN_WAIT_MS` for the last users of a handle just put away (`replace(db, None)`) to
    /// let go of it. Blocking. The caller hosts the result.
    pub(crate) fn reopen(&self, database: &str, topology: &Topology) -> Result<Database, String> {
        let path = self.path_of(database);
        if !path.join(tandem_store::DB_FILE).exists() {
            return Err(format!("no copy of {database} in {}", path.display()));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(REOPEN_WAIT_MS);
        let db = loop {
            match Database::open(&path, Options::default()) {
                Ok(db) => break db,
                Err(tandem_store::StoreError::Locked(m))
                    if std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(database, "waiting for the previous handle to close: {m}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(format!("database {database} in {}: {e}", path.display())),
            }
        };
        prepare(&db, database, topology)?;
        Ok(db)
    }

    pub(crate) fn status(&self) -> Vec<DatabaseStatus> {
        let copies: Vec<(String, Arc<Hosted>)> = self
            .copies
            .read()
            .expect("copies lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        copies
            .into_iter()
            .map(|(name, h)| {
                let db = h.get();
                let id = db.as_ref().map(|d| d.identity());
                DatabaseStatus {
                    database: name,
                    placement: h
                        .placement
                        .map(|p| p.as_str())
                        .unwrap_or("installed")
                        .to_string(),
                    open: db.is_some(),
                    role: id.as_ref().map(|i| i.role.to_string()),
                    epoch: id.as_ref().map(|i| i.epoch),
                    lsn: id.as_ref().map(|i| i.lsn),
                    durable_lsn: db.as_ref().map(|d| d.durable_lsn()),
                    followers: db
                        .as_ref()
                        .map(|d| {
                            d.followers()
                                .into_iter()
                                .map(|(name, lsn)| (name.to_string(), lsn))
                                .collect()
                        })
                        .unwrap_or_default(),
                    warnings: match &db {
                        Some(d) => d.health().unwrap_or_default(),
                        None => h
                            .set_aside
                            .read()
                            .expect("set-aside lock")
                            .iter()
                            .cloned()
                            .collect(),
                    },
                    // Only a primary takes writes to pause (a master that stepped down keeps
                    // its gate's pause, moot once it is a standby).
                    paused: db
                        .as_ref()
                        .filter(|d| d.identity().role == Role::Primary)
                        .and_then(|d| d.gate().status().paused),
                    mirroring: None,
                    standby: None,
                    replicas: Vec::new(),
                    last_time_ms: id.as_ref().map(|i| i.last_time_ms),
                    log_shipping: None,
                }
            })
            .collect()
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}
