//! The db role: the database copies the topology places on this node, each opened once, and
//! the domain schema each kind of database carries.

use crate::status::DatabaseStatus;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tandem_store::{Database, Options};
use tandem_topology::{DATABASE_CMS, Placement, PlacementRole, Topology};

/// What a database holds, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Users,
    Cms,
    /// The chat database `mgc`.
    Chat,
    /// A database whose domain schema comes with a later part (chat's `mgc`, `mgccomp`).
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

pub(crate) struct Hosted {
    pub(crate) placement: PlacementRole,
    pub(crate) db: Option<Database>,
}

/// Every copy placed on this node.
pub(crate) struct DbHost {
    dir: PathBuf,
    pub(crate) copies: BTreeMap<String, Hosted>,
}

impl DbHost {
    /// Opens (creating on first start) every primary copy the topology places on `node`; copies
    /// placed as mirror, backup or standby are seeded by replication, not created empty here.
    pub(crate) fn open(
        topology: &Topology,
        node: &str,
        data_dir: PathBuf,
    ) -> Result<DbHost, String> {
        let dir = data_dir.join("databases");
        let mut copies = BTreeMap::new();
        for Placement { database, role } in topology.databases_on(node) {
            let path = dir.join(&database);
            let db = if role == PlacementRole::Primary {
                let db = if path.join(tandem_store::DB_FILE).exists() {
                    Database::open(&path, Options::default())
                } else {
                    Database::create(&path, &database, Options::default())
                }
                .map_err(|e| format!("database {database} in {}: {e}", path.display()))?;
                match kind_of(&database) {
                    Kind::Users => {
                        db.migrate(tandem_pool::users::USERS_SCHEMA)
                            .map_err(|e| format!("database {database}: {e}"))?;
                    }
                    Kind::Cms => {
                        db.migrate(tandem_pool::cms::CMS_SCHEMA)
                            .map_err(|e| format!("database {database}: {e}"))?;
                        if tandem_pool::cms::seed(&db, topology)
                            .map_err(|e| format!("seeding the CMS: {e}"))?
                        {
                            tracing::info!(database, "CMS seeded from the topology");
                        }
                    }
                    Kind::Chat => {
                        tandem_chat::prepare(&db)
                            .map_err(|e| format!("database {database}: {e}"))?;
                    }
                    Kind::Other => {}
                }
                tracing::info!(
                    database,
                    lsn = db.identity().lsn,
                    epoch = db.identity().epoch,
                    "database open"
                );
                Some(db)
            } else if path.join(tandem_store::DB_FILE).exists() {
                Some(
                    Database::open(&path, Options::default())
                        .map_err(|e| format!("database {database}: {e}"))?,
                )
            } else {
                None
            };
            copies.insert(
                database,
                Hosted {
                    placement: role,
                    db,
                },
            );
        }
        Ok(DbHost { dir, copies })
    }

    pub(crate) fn get(&self, database: &str) -> Option<&Database> {
        self.copies.get(database).and_then(|h| h.db.as_ref())
    }

    pub(crate) fn status(&self) -> Vec<DatabaseStatus> {
        self.copies
            .iter()
            .map(|(name, h)| {
                let id = h.db.as_ref().map(|d| d.identity());
                DatabaseStatus {
                    database: name.clone(),
                    placement: h.placement.as_str().to_string(),
                    open: h.db.is_some(),
                    role: id.as_ref().map(|i| i.role.to_string()),
                    epoch: id.as_ref().map(|i| i.epoch),
                    lsn: id.as_ref().map(|i| i.lsn),
                    durable_lsn: h.db.as_ref().map(|d| d.durable_lsn()),
                    warnings: h
                        .db
                        .as_ref()
                        .and_then(|d| d.health().ok())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    pub(crate) fn dir(&self) -> &PathBuf {
        &self.dir
    }
}
