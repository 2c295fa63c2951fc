//! The Central Management Store, database `cms`: the deployment's runtime configuration — the
//! chat pool's state and active servers, each front-end pool's mode and the pool serving its
//! users, which pool each user is homed on, and settings (DESIGN.md §1, §3).
//!
//! It is seeded once from the topology; after that it changes only at run time (failovers, homing
//! users), and the topology never overwrites it. Every node keeps its last [`CmsSnapshot`]; a
//! snapshot names the copy and LSN it was read at, so a node can tell whether it is current.

use crate::PoolError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tandem_store::rusqlite::{Connection, OptionalExtension};
use tandem_store::{Database, Migration, StoreError, Tx, Value};
use tandem_topology::{CHAT_ACTIVE_MAX, Topology};

/// The schema of the CMS database. Apply it with `db.migrate(CMS_SCHEMA)` before `seed`.
pub static CMS_SCHEMA: &[Migration] = &[Migration {
    version: 1,
    name: "runtime configuration",
    sql: "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
          CREATE TABLE chat (
              id INTEGER PRIMARY KEY CHECK (id = 1),
              state TEXT NOT NULL CHECK (state IN ('normal', 'failed-over'))
          );
          CREATE TABLE chat_active (node TEXT PRIMARY KEY) WITHOUT ROWID;
          CREATE TABLE pools (
              name TEXT PRIMARY KEY,
              site TEXT NOT NULL,
              pair TEXT,
              mode TEXT NOT NULL CHECK (mode IN ('normal', 'failed-over')),
              served_by TEXT NOT NULL
          ) WITHOUT ROWID;
          CREATE TABLE homes (user TEXT PRIMARY KEY, pool TEXT NOT NULL) WITHOUT ROWID;
          CREATE INDEX homes_pool ON homes (pool);",
}];

/// The setting `seed` writes with the topology's deployment name.
pub const SETTING_DEPLOYMENT: &str = "deployment";

/// Which copy of the chat database the chat pool uses (the seed's PoolState).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChatPoolState {
    /// The chat pool uses the primary placement of `mgc` (topology `chat.primary`).
    Normal,
    /// The chat pool uses the backup placement (topology `chat.backup`).
    FailedOver,
}

/// Who serves a front-end pool's users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// The pool serves its own users.
    Normal,
    /// Its paired pool serves its users.
    FailedOver,
}

/// The chat pool's runtime configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatConfig {
    /// Which chat database copy is in use.
    pub state: ChatPoolState,
    /// The active chat servers, sorted by name; at most `CHAT_ACTIVE_MAX`.
    pub active: Vec<String>,
}

/// A front-end pool's runtime configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// The pool's name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Its paired pool, if any.
    pub pair: Option<String>,
    /// Whether it serves its own users.
    pub mode: PoolMode,
    /// The pool serving its users: itself when `Normal`, its pair when `FailedOver`.
    pub served_by: String,
}

/// The whole CMS as of one committed LSN of one copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmsSnapshot {
    /// The `database_id` (hex) of the CMS copy it was read from.
    pub database_id: String,
    /// That copy's epoch at the read.
    pub epoch: u64,
    /// The LSN whose state every other field shows.
    pub lsn: u64,
    /// The chat pool's configuration; `None` when the deployment has no chat pool.
    pub chat: Option<ChatConfig>,
    /// Every front-end pool, sorted by name.
    pub pools: Vec<PoolConfig>,
    /// User → the pool it is homed on.
    pub homes: BTreeMap<String, String>,
    /// Settings by key.
    pub settings: BTreeMap<String, String>,
}

impl ChatPoolState {
    /// The state as stored and as written on the command line: `normal` or `failed-over`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatPoolState::Normal => "normal",
            ChatPoolState::FailedOver => "failed-over",
        }
    }

    fn parse(s: &str) -> Result<ChatPoolState, StoreError> {
        match s {
            "normal" => Ok(ChatPoolState::Normal),
            "failed-over" => Ok(ChatPoolState::FailedOver),
            other => Err(StoreError::Corrupt(format!(
                "cms: chat state {other:?} is neither normal nor failed-over"
            ))),
        }
    }
}

impl PoolMode {
    /// The mode as stored and as written on the command line: `normal` or `failed-over`.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Normal => "normal",
            PoolMode::FailedOver => "failed-over",
        }
    }

    fn parse(s: &str) -> Result<PoolMode, StoreError> {
        match s {
            "normal" => Ok(PoolMode::Normal),
            "failed-over" => Ok(PoolMode::FailedOver),
            other => Err(StoreError::Corrupt(format!(
                "cms: pool mode {other:?} is neither normal nor failed-over"
            ))),
        }
    }
}

/// What `seed` writes, taken from the topology before the write.
struct Seed {
    deployment: String,
    chat_active: Option<Vec<String>>,
    pools: Vec<(String, String, Option<String>)>,
}

/// Writes the initial runtime configuration from `topology`, once: the chat pool (state normal,
/// the topology's active servers), every pool (mode normal, served by itself) and the setting
/// `deployment`. Returns true when it seeded; false, writing nothing, when the CMS already holds
/// a configuration — runtime changes are never overwritten by the topology.
pub fn seed(db: &Database, topology: &Topology) -> Result<bool, PoolError> {
    let seed = Seed {
        deployment: topology.name.clone(),
        chat_active: topology.chat.as_ref().map(|c| c.active.clone()),
        pools: topology
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.site.clone(), p.pair.clone()))
            .collect(),
    };
    let done = db.write(move |tx: &mut Tx<'_>| {
        let seeded = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM settings) OR EXISTS (SELECT 1 FROM pools) \
                 OR EXISTS (SELECT 1 FROM chat)",
                [],
                |r| r.get::<_, bool>(0),
            )?
            .unwrap_or(false);
        if seeded {
            return Ok(false);
        }
        if let Some(active) = &seed.chat_active {
            debug_assert!(active.len() <= CHAT_ACTIVE_MAX, "a validated topology");
            tx.insert(
                "chat",
                vec![
                    Value::Integer(1),
                    Value::Text(ChatPoolState::Normal.as_str().into()),
                ],
            )?;
            for node in active {
                tx.insert("chat_active", vec![Value::Text(node.clone())])?;
            }
        }
        for (name, site, pair) in &seed.pools {
            tx.insert(
                "pools",
                vec![
                    Value::Text(name.clone()),
                    Value::Text(site.clone()),
                    pair.clone().map_or(Value::Null, Value::Text),
                    Value::Text(PoolMode::Normal.as_str().into()),
                    Value::Text(name.clone()),
                ],
            )?;
        }
        tx.insert(
            "settings",
            vec![
                Value::Text(SETTING_DEPLOYMENT.into()),
                Value::Text(seed.deployment.clone()),
            ],
        )?;
        Ok::<_, PoolError>(true)
    })?;
    Ok(done.value)
}

/// The whole CMS read in one read transaction, with the identity (`database_id`, epoch, LSN) of
/// exactly the state it shows.
pub fn snapshot(db: &Database) -> Result<CmsSnapshot, PoolError> {
    Ok(db.read(|conn| {
        // One SQLite read transaction: the identity and the rows are of the same commit (the
        // store writes the journal segment that is its position in the transaction that
        // changes the rows).
        let tx = conn.unchecked_transaction()?;
        let snapshot = read_snapshot(&tx)?;
        tx.commit()?;
        Ok(snapshot)
    })?)
}

fn read_snapshot(conn: &Connection) -> Result<CmsSnapshot, StoreError> {
    let (database_id, epoch, lsn) = tandem_store::identity_in(conn)?;
    let state: Option<String> = conn
        .query_row("SELECT state FROM chat WHERE id = 1", [], |r| r.get(0))
        .optional()?;
    let chat = match state {
        None => None,
        Some(state) => {
            let mut stmt = conn.prepare("SELECT node FROM chat_active ORDER BY node")?;
            let active = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Some(ChatConfig {
                state: ChatPoolState::parse(&state)?,
                active,
            })
        }
    };
    let mut stmt =
        conn.prepare("SELECT name, site, pair, mode, served_by FROM pools ORDER BY name")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut pools = Vec::with_capacity(rows.len());
    for (name, site, pair, mode, served_by) in rows {
        pools.push(PoolConfig {
            name,
            site,
            pair,
            mode: PoolMode::parse(&mode)?,
            served_by,
        });
    }
    let homes = pairs(conn, "SELECT user, pool FROM homes")?;
    let settings = pairs(conn, "SELECT key, value FROM settings")?;
    Ok(CmsSnapshot {
        database_id: database_id.to_hex(),
        epoch,
        lsn,
        chat,
        pools,
        homes,
        settings,
    })
}

fn pairs(conn: &Connection, sql: &str) -> Result<BTreeMap<String, String>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<BTreeMap<String, String>, _>>()?)
}

/// Homes `user` on `pool` (creating or replacing its home). Invalid for a bad user name or a
/// pool the CMS does not know. `user add` claims a home with [`claim_home`] instead, which never
/// replaces one.
pub fn set_home(db: &Database, user: &str, pool: &str) -> Result<(), PoolError> {
    crate::users::validate_name(user)?;
    let (user, pool) = (user.to_string(), pool.to_string());
    db.write(move |tx: &mut Tx<'_>| {
        check_pool_known(tx, &pool)?;
        let current = home_in(tx, &user)?;
        let row = vec![Value::Text(user.clone()), Value::Text(pool.clone())];
        match current {
            Some(p) if p == pool => {}
            Some(_) => tx.update("homes", row)?,
            None => tx.insert("homes", row)?,
        }
        Ok::<_, PoolError>(())
    })?;
    Ok(())
}

/// What [`claim_home`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Claim {
    /// The user had no home: this call homed it on the pool.
    Claimed,
    /// The user was already homed on this pool; nothing was written.
    AlreadyHere,
}

/// Homes `user` on `pool` unless it is homed on another pool, in one write transaction, so of
/// two claims of the same name for different pools exactly one succeeds. Conflict when `user`
/// is homed on another pool (the message names it); Invalid for a bad user name or a pool the
/// CMS does not know.
pub fn claim_home(db: &Database, user: &str, pool: &str) -> Result<Claim, PoolError> {
    crate::users::validate_name(user)?;
    let (user, pool) = (user.to_string(), pool.to_string());
    let done = db.write(move |tx: &mut Tx<'_>| {
        check_pool_known(tx, &pool)?;
        match home_in(tx, &user)? {
            Some(p) if p == pool => Ok(Claim::AlreadyHere),
            Some(other) => Err(PoolError::Conflict(format!(
                "user {user} is already homed on {other}"
            ))),
            None => {
                tx.insert(
                    "homes",
                    vec![Value::Text(user.clone()), Value::Text(pool.clone())],
                )?;
                Ok(Claim::Claimed)
            }
        }
    })?;
    Ok(done.value)
}

/// Removes the home of `user` only if it is `pool`: undoes a [`claim_home`] without touching a
/// home another command gave the name since. Returns whether it removed one.
pub fn release_home(db: &Database, user: &str, pool: &str) -> Result<bool, PoolError> {
    let (user, pool) = (user.to_string(), pool.to_string());
    let done = db.write(move |tx: &mut Tx<'_>| {
        let here = home_in(tx, &user)?.is_some_and(|p| p == pool);
        if here {
            tx.delete("homes", vec![Value::Text(user.clone())])?;
        }
        Ok::<_, PoolError>(here)
    })?;
    Ok(done.value)
}

/// Invalid unless the CMS knows `pool`; the message lists the pools it knows.
fn check_pool_known(tx: &Tx<'_>, pool: &str) -> Result<(), PoolError> {
    let known = tx
        .query_row("SELECT 1 FROM pools WHERE name = ?1", [pool], |_| Ok(()))?
        .is_some();
    if known {
        return Ok(());
    }
    let pools = tx.query("SELECT name FROM pools ORDER BY name", [], |r| {
        r.get::<_, String>(0)
    })?;
    Err(PoolError::Invalid(format!(
        "pool {pool:?} is not in the CMS (pools: {})",
        if pools.is_empty() {
            "none; seed the CMS first".to_string()
        } else {
            pools.join(", ")
        }
    )))
}

/// The pool `user` is homed on, read inside a write transaction.
fn home_in(tx: &Tx<'_>, user: &str) -> Result<Option<String>, PoolError> {
    Ok(
        tx.query_row("SELECT pool FROM homes WHERE user = ?1", [user], |r| {
            r.get(0)
        })?,
    )
}

/// Checks an active server list against the topology (DESIGN §6 invariant 5): chat servers
/// only, no duplicates, at most `CHAT_ACTIVE_MAX`, every one in the site of the chat database
/// copy the chat pool uses in `state` (the primary in `normal`, the backup in `failed-over`).
pub fn check_active(
    topology: &Topology,
    state: ChatPoolState,
    nodes: &[String],
) -> Result<(), PoolError> {
    let chat = topology
        .chat
        .as_ref()
        .ok_or_else(|| PoolError::Invalid("the topology has no chat pool".into()))?;
    if nodes.len() > CHAT_ACTIVE_MAX {
        return Err(PoolError::Invalid(format!(
            "{} active servers: a chat pool has at most {CHAT_ACTIVE_MAX}",
            nodes.len()
        )));
    }
    let db_node = match state {
        ChatPoolState::Normal => chat.primary.clone(),
        ChatPoolState::FailedOver => chat.backup.clone().ok_or_else(|| {
            PoolError::Invalid(
                "the chat pool is failed over but the topology names no backup".into(),
            )
        })?,
    };
    let site = topology.site_of(&db_node).unwrap_or_default().to_string();
    let mut seen = std::collections::BTreeSet::new();
    for n in nodes {
        if n.is_empty() {
            return Err(PoolError::Invalid(
                "an empty server name in the list (an empty list is `tandem chat active-servers \
                 clear`)"
                    .into(),
            ));
        }
        if !chat.servers.contains(n) {
            return Err(PoolError::Invalid(format!(
                "{n} is not a server of the chat pool (servers: {})",
                chat.servers.join(", ")
            )));
        }
        if !seen.insert(n) {
            return Err(PoolError::Invalid(format!("{n} is listed twice")));
        }
        let s = topology.site_of(n).unwrap_or_default();
        if s != site {
            return Err(PoolError::Invalid(format!(
                "{n} is in site {s}, but in state {} the chat pool uses its database in site \
                 {site} (placed on {db_node}): every active chat server must be in that site",
                state.as_str()
            )));
        }
    }
    Ok(())
}

/// Replaces the chat pool's active server list, after `check_active` against the chat pool
/// state read in the same transaction. An empty list is allowed (failback step 1).
pub fn set_chat_active(
    db: &Database,
    topology: &Topology,
    nodes: &[String],
) -> Result<(), PoolError> {
    let (topology, nodes) = (topology.clone(), nodes.to_vec());
    db.write(move |tx: &mut Tx<'_>| {
        let state = tx
            .query_row("SELECT state FROM chat WHERE id = 1", [], |r| {
                r.get::<_, String>(0)
            })?
            .ok_or_else(|| PoolError::Invalid("the CMS has no chat pool".into()))?;
        let state = if state == ChatPoolState::FailedOver.as_str() {
            ChatPoolState::FailedOver
        } else {
            ChatPoolState::Normal
        };
        check_active(&topology, state, &nodes)?;
        let current = tx.query("SELECT node FROM chat_active", [], |r| {
            r.get::<_, String>(0)
        })?;
        for n in &current {
            if !nodes.contains(n) {
                tx.delete("chat_active", vec![Value::Text(n.clone())])?;
            }
        }
        for n in &nodes {
            if !current.contains(n) {
                tx.insert("chat_active", vec![Value::Text(n.clone())])?;
            }
        }
        Ok::<_, PoolError>(())
    })?;
    Ok(())
}

/// Sets the chat pool state: which chat database copy the pool uses (the primary in `normal`,
/// the backup in `failed-over`). Refused while an active server would then be outside the
/// site of that copy (invariant 5): clear or set the active servers first.
pub fn set_chat_state(
    db: &Database,
    topology: &Topology,
    state: ChatPoolState,
) -> Result<(), PoolError> {
    let topology = topology.clone();
    db.write(move |tx: &mut Tx<'_>| {
        let current = tx
            .query_row("SELECT state FROM chat WHERE id = 1", [], |r| {
                r.get::<_, String>(0)
            })?
            .ok_or_else(|| PoolError::Invalid("the CMS has no chat pool".into()))?;
        if current == state.as_str() {
            return Ok(());
        }
        let active = tx.query("SELECT node FROM chat_active ORDER BY node", [], |r| {
            r.get::<_, String>(0)
        })?;
        check_active(&topology, state, &active).map_err(|e| {
            PoolError::Invalid(format!(
                "cannot set the chat pool {}: {e}; clear the active servers (tandem chat \
                 active-servers clear) or set servers of the right site first",
                state.as_str()
            ))
        })?;
        tx.update(
            "chat",
            vec![Value::Integer(1), Value::Text(state.as_str().into())],
        )?;
        Ok::<_, PoolError>(())
    })?;
    Ok(())
}

/// Removes the home of `user`. Returns whether it had one.
pub fn remove_home(db: &Database, user: &str) -> Result<bool, PoolError> {
    let user = user.to_string();
    let done = db.write(move |tx: &mut Tx<'_>| {
        let homed = tx
            .query_row("SELECT 1 FROM homes WHERE user = ?1", [&user], |_| Ok(()))?
            .is_some();
        if homed {
            tx.delete("homes", vec![Value::Text(user.clone())])?;
        }
        Ok::<_, PoolError>(homed)
    })?;
    Ok(done.value)
}

/// The pool `user` is homed on, if any.
pub fn home_of(db: &Database, user: &str) -> Result<Option<String>, PoolError> {
    let user = user.to_string();
    Ok(db.read(move |conn| {
        Ok(conn
            .query_row("SELECT pool FROM homes WHERE user = ?1", [&user], |r| {
                r.get(0)
            })
            .optional()?)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tandem_store::Options;

    fn topology() -> Topology {
        let text = tandem_topology::example(20000, &"ab".repeat(32));
        Topology::parse(&text, Path::new("/tmp/x/topology.toml")).unwrap()
    }

    fn cms_db(dir: &Path) -> Database {
        let db = Database::create(&dir.join("cms"), "cms", Options::default()).unwrap();
        db.migrate(CMS_SCHEMA).unwrap();
        db
    }

    /// A runtime change as a failover would write it: the chat pool fails over to `dal-fe`.
    fn fail_chat_over(db: &Database) {
        db.write(|tx: &mut Tx<'_>| {
            tx.update(
                "chat",
                vec![Value::Integer(1), Value::Text("failed-over".into())],
            )?;
            tx.delete("chat_active", vec![Value::Text("atl-fe".into())])?;
            tx.insert("chat_active", vec![Value::Text("dal-fe".into())])
        })
        .unwrap();
    }

    #[test]
    fn the_active_list_is_refused_whole_when_one_name_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        let topo = topology();
        seed(&db, &topo).unwrap();
        let set = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            set_chat_active(&db, &topo, &names).map_err(|e| e.to_string())
        };
        for (names, expect) in [
            (&["atl-fe", ""][..], "an empty server name"),
            (&["atl-fe", "atl-fe"][..], "atl-fe is listed twice"),
            (&["atl-db1"][..], "atl-db1 is not a server of the chat pool"),
            (&["dal-fe"][..], "dal-fe is in site dal"),
        ] {
            let e = set(names).unwrap_err();
            assert!(e.contains(expect), "{names:?}: {e}");
            assert_eq!(snapshot(&db).unwrap().chat.unwrap().active, vec!["atl-fe"]);
        }
        set(&[]).unwrap();
        assert!(snapshot(&db).unwrap().chat.unwrap().active.is_empty());
        set(&["atl-fe"]).unwrap();
        fail_chat_over(&db);
        set(&["dal-fe"]).unwrap();
        assert_eq!(snapshot(&db).unwrap().chat.unwrap().active, vec!["dal-fe"]);
    }

    #[test]
    fn seed_writes_the_topology_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        let topo = topology();
        assert!(seed(&db, &topo).unwrap());
        let s = snapshot(&db).unwrap();
        assert_eq!(
            s.chat,
            Some(ChatConfig {
                state: ChatPoolState::Normal,
                active: vec!["atl-fe".into()],
            })
        );
        assert_eq!(
            s.pools,
            vec![
                PoolConfig {
                    name: "pool-atl".into(),
                    site: "atl".into(),
                    pair: Some("pool-dal".into()),
                    mode: PoolMode::Normal,
                    served_by: "pool-atl".into(),
                },
                PoolConfig {
                    name: "pool-dal".into(),
                    site: "dal".into(),
                    pair: Some("pool-atl".into()),
                    mode: PoolMode::Normal,
                    served_by: "pool-dal".into(),
                },
            ]
        );
        assert_eq!(
            s.settings.get(SETTING_DEPLOYMENT).map(String::as_str),
            Some("example")
        );
        assert_eq!(s.settings.get(SETTING_DEPLOYMENT), Some(&topo.name));
        assert!(s.homes.is_empty());
    }

    #[test]
    fn seed_is_idempotent_and_never_overwrites_runtime_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        let topo = topology();
        assert!(seed(&db, &topo).unwrap());
        set_home(&db, "alice", "pool-dal").unwrap();
        fail_chat_over(&db);
        let before = snapshot(&db).unwrap();

        assert!(!seed(&db, &topo).unwrap(), "already seeded");
        assert!(!seed(&db, &topo).unwrap());
        let after = snapshot(&db).unwrap();
        assert_eq!(after, before, "nothing written: not even a new LSN");
        assert_eq!(after.chat.unwrap().state, ChatPoolState::FailedOver);
        assert_eq!(home_of(&db, "alice").unwrap().as_deref(), Some("pool-dal"));
    }

    #[test]
    fn snapshot_reflects_homes_and_the_lsn_it_was_read_at() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        seed(&db, &topology()).unwrap();
        set_home(&db, "alice", "pool-atl").unwrap();
        set_home(&db, "bob", "pool-atl").unwrap();
        set_home(&db, "bob", "pool-dal").unwrap();
        set_home(&db, "carol", "pool-atl").unwrap();
        assert!(remove_home(&db, "carol").unwrap());
        assert!(!remove_home(&db, "carol").unwrap());

        let s = snapshot(&db).unwrap();
        let id = db.identity();
        assert_eq!(s.lsn, id.lsn);
        assert_eq!(s.epoch, id.epoch);
        assert_eq!(s.database_id, id.database_id.to_hex());
        let homes: Vec<(&str, &str)> = s
            .homes
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .collect();
        assert_eq!(homes, [("alice", "pool-atl"), ("bob", "pool-dal")]);
        assert_eq!(home_of(&db, "bob").unwrap().as_deref(), Some("pool-dal"));
        assert_eq!(home_of(&db, "carol").unwrap(), None);

        // Setting the same home again writes nothing.
        set_home(&db, "alice", "pool-atl").unwrap();
        assert_eq!(db.identity().lsn, id.lsn);

        // Serializes with the names a client reads.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["chat"]["state"], "normal");
        assert_eq!(json["pools"][0]["mode"], "normal");
        let back: CmsSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_snapshot_is_of_one_commit_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        seed(&db, &topology()).unwrap();
        let base = db.identity().lsn;
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    set_home(&db, &format!("u{i}"), "pool-atl").unwrap();
                }
            })
        };
        let mut seen = 0;
        while !writer.is_finished() || seen < 200 {
            let s = snapshot(&db).unwrap();
            // Each set_home is one record: the LSN says exactly how many homes exist.
            assert_eq!(s.homes.len() as u64, s.lsn - base, "{s:?}");
            seen = s.homes.len();
        }
        writer.join().unwrap();
    }

    #[test]
    fn a_home_needs_a_known_pool_and_a_valid_user_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        let e = set_home(&db, "alice", "pool-atl").unwrap_err();
        assert!(matches!(e, PoolError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains("seed the CMS first"), "{e}");

        seed(&db, &topology()).unwrap();
        let e = set_home(&db, "alice", "pool-xyz").unwrap_err();
        assert_eq!(e.code(), "invalid");
        assert_eq!(
            e.to_string(),
            "pool \"pool-xyz\" is not in the CMS (pools: pool-atl, pool-dal)"
        );
        let e = set_home(&db, "Alice", "pool-atl").unwrap_err();
        assert!(e.to_string().contains("user name"), "{e}");
        assert!(snapshot(&db).unwrap().homes.is_empty());
    }

    #[test]
    fn a_claim_homes_a_new_name_and_never_takes_one_homed_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        seed(&db, &topology()).unwrap();
        assert_eq!(claim_home(&db, "zed", "pool-atl").unwrap(), Claim::Claimed);
        let lsn = snapshot(&db).unwrap().lsn;
        // The same pool again (a `user add` run again after its pool did not answer) is no
        // conflict and writes nothing.
        assert_eq!(
            claim_home(&db, "zed", "pool-atl").unwrap(),
            Claim::AlreadyHere
        );
        let e = claim_home(&db, "zed", "pool-dal").unwrap_err();
        assert_eq!(e.code(), "conflict");
        assert_eq!(e.to_string(), "user zed is already homed on pool-atl");
        let s = snapshot(&db).unwrap();
        assert_eq!(s.lsn, lsn, "a refused or repeated claim writes nothing");
        assert_eq!(s.homes.get("zed").map(String::as_str), Some("pool-atl"));

        let e = claim_home(&db, "amy", "pool-xyz").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool \"pool-xyz\" is not in the CMS (pools: pool-atl, pool-dal)"
        );
        let e = claim_home(&db, "Amy", "pool-atl").unwrap_err();
        assert!(e.to_string().contains("user name"), "{e}");
        assert_eq!(home_of(&db, "amy").unwrap(), None);
    }

    #[test]
    fn of_concurrent_claims_of_one_name_for_two_pools_one_pool_wins() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(cms_db(dir.path()));
        seed(&db, &topology()).unwrap();
        for round in 0..20 {
            let name = format!("zed{round}");
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let (db, start, name) = (db.clone(), start.clone(), name.clone());
                    let pool = if i % 2 == 0 { "pool-atl" } else { "pool-dal" };
                    std::thread::spawn(move || {
                        start.wait();
                        (pool, claim_home(&db, &name, pool))
                    })
                })
                .collect();
            let claims: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let home = home_of(&db, &name).unwrap().expect("one claim won");
            let mut claimed = 0;
            for (pool, result) in claims {
                match result {
                    Ok(Claim::Claimed) => {
                        assert_eq!(pool, home);
                        claimed += 1;
                    }
                    Ok(Claim::AlreadyHere) => assert_eq!(pool, home),
                    Err(e) => {
                        assert_ne!(pool, home);
                        assert_eq!(
                            e.to_string(),
                            format!("user {name} is already homed on {home}")
                        );
                    }
                }
            }
            assert_eq!(claimed, 1, "{name}: exactly one claim writes the home");
        }
    }

    #[test]
    fn a_release_removes_the_home_only_from_the_pool_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        seed(&db, &topology()).unwrap();
        claim_home(&db, "zed", "pool-atl").unwrap();
        assert!(!release_home(&db, "zed", "pool-dal").unwrap());
        assert_eq!(home_of(&db, "zed").unwrap().as_deref(), Some("pool-atl"));
        assert!(release_home(&db, "zed", "pool-atl").unwrap());
        assert_eq!(home_of(&db, "zed").unwrap(), None);
        assert!(!release_home(&db, "zed", "pool-atl").unwrap());
        // Released, the name may be claimed for the other pool.
        assert_eq!(claim_home(&db, "zed", "pool-dal").unwrap(), Claim::Claimed);
    }

    #[test]
    fn a_deployment_without_chat_has_no_chat_config() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        let mut topo = topology();
        topo.chat = None;
        assert!(seed(&db, &topo).unwrap());
        let s = snapshot(&db).unwrap();
        assert_eq!(s.chat, None);
        assert_eq!(s.pools.len(), 2);
        assert!(!seed(&db, &topo).unwrap());
    }

    #[test]
    fn stored_states_are_checked_by_the_schema_and_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = cms_db(dir.path());
        seed(&db, &topology()).unwrap();
        let e = db
            .write(|tx: &mut Tx<'_>| {
                tx.update(
                    "chat",
                    vec![Value::Integer(1), Value::Text("broken".into())],
                )
            })
            .unwrap_err();
        assert!(e.to_string().contains("CHECK"), "{e}");
        assert!(ChatPoolState::parse("broken").is_err());
        assert!(PoolMode::parse("Normal").is_err());
        for m in [PoolMode::Normal, PoolMode::FailedOver] {
            assert_eq!(PoolMode::parse(m.as_str()).unwrap(), m);
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        for s in [ChatPoolState::Normal, ChatPoolState::FailedOver] {
            assert_eq!(ChatPoolState::parse(s.as_str()).unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
