//! `Topology`: a validated deployment description — sites, nodes, pools, the chat pool, the CMS,
//! the witnesses, the share and the cluster secret — and the questions asked of it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Source, TopologyError};
use crate::file;
use crate::validate::validate;

/// The largest topology file `Topology::load` reads, in bytes.
pub const TOPOLOGY_BYTES_MAX: u64 = 1024 * 1024;

/// A deployment, as described by a `topology.toml` that passed every rule.
///
/// Guarantees, when it comes from [`Topology::load`] or [`Topology::parse`]: names of sites, nodes
/// and pools are unique; every name it holds refers to a declared site or node of the right role
/// and site (pool primaries in the pool's site, mirrors beside their primary, backups and standbys
/// in another site, active chat servers in the chat primary's site, pairs symmetric and across
/// sites); every site holding a mirrored database has a witness, a node of that site with the
/// witness role; no two nodes listen on one address (a wildcard `0.0.0.0`/`[::]` or two loopback
/// names on one port count as one); no node's data directory is inside another's or overlaps the
/// share; paths are resolved against the topology file's directory.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Topology {
    /// The deployment's name.
    pub name: String,
    /// The cluster secret nodes authenticate each other with: lowercase or uppercase hex of at
    /// least 32 bytes, as written in the file.
    pub secret: String,
    /// The share (log backups, full backups): a directory, resolved against `dir` when written as
    /// a relative path; the path of a `file://` URL.
    pub share: PathBuf,
    /// The directory of the topology file (`.` for a bare file name given to `parse`; absolute
    /// after `load`).
    pub dir: PathBuf,
    /// Site names, in file order.
    pub sites: Vec<String>,
    /// Nodes, in file order.
    pub nodes: Vec<Node>,
    /// Front-end pools, in file order.
    pub pools: Vec<Pool>,
    /// The persistent chat pool, when the deployment has one.
    pub chat: Option<ChatPool>,
    /// Where the Central Management Store lives.
    pub cms: Cms,
    /// Site name → the witness node that serves the mirroring of that site: a node of that site,
    /// present for every site that holds a mirrored database.
    pub witnesses: BTreeMap<String, String>,
    /// Settings of mirroring.
    pub mirroring: MirroringSettings,
}

/// `[mirroring]`: how mirroring behaves (every value has a default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroringSettings {
    /// Journal records a primary keeps for a mirror that is away; a mirror further behind is
    /// reseeded from a full backup when it returns.
    pub journal_records_max: u64,
}

/// Default of `mirroring.journal_records_max`.
pub const MIRROR_JOURNAL_RECORDS_DEFAULT: u64 = 1_000_000;
/// Smallest `mirroring.journal_records_max` accepted.
pub const MIRROR_JOURNAL_RECORDS_MIN: u64 = 100;

impl Default for MirroringSettings {
    fn default() -> MirroringSettings {
        MirroringSettings {
            journal_records_max: MIRROR_JOURNAL_RECORDS_DEFAULT,
        }
    }
}

/// Every field but the secret, so that a logged topology does not leak it.
impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("share", &self.share)
            .field("dir", &self.dir)
            .field("sites", &self.sites)
            .field("nodes", &self.nodes)
            .field("pools", &self.pools)
            .field("chat", &self.chat)
            .field("cms", &self.cms)
            .field("witnesses", &self.witnesses)
            .finish()
    }
}

/// One node: one `tandem serve` process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Node {
    /// Unique node name.
    pub name: String,
    /// The site it runs in (a declared site).
    pub site: String,
    /// Listen address, `host:port`, as written (port not 0; unique in the topology).
    pub address: String,
    /// Its roles: never empty.
    pub roles: BTreeSet<Role>,
    /// Its data directory, resolved against the topology's directory (default `data/<name>`).
    pub data_dir: PathBuf,
}

impl Node {
    /// Whether the node has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// What a node does. A node has one or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds copies of databases.
    Db,
    /// Serves the users homed on its pool.
    Frontend,
    /// A persistent chat server.
    Chat,
    /// Arbitrates automatic mirror failover.
    Witness,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 4] = [Role::Db, Role::Frontend, Role::Chat, Role::Witness];

    /// The role's name as written in `topology.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Db => "db",
            Role::Frontend => "frontend",
            Role::Chat => "chat",
            Role::Witness => "witness",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}; a role is one of db, frontend, chat, witness")
            })
    }
}

/// Refuses `metadata` unless it is a regular file's, saying what it is instead.
fn regular_file(path: &Path, metadata: &std::fs::Metadata) -> Result<(), TopologyError> {
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() {
        "a directory"
    } else {
        special_file(&kind)
    };
    Err(TopologyError::NotAFile {
        path: path.to_path_buf(),
        what: what.to_string(),
    })
}

#[cfg(unix)]
fn special_file(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn special_file(_kind: &std::fs::FileType) -> &'static str {
    "not a file"
}

/// `error` from following `path`, said more plainly when `path` is a symbolic link to nothing
/// (the operating system only says that nothing was found).
fn explain_dangling_link(path: &Path, error: std::io::Error) -> std::io::Error {
    if error.kind() != std::io::ErrorKind::NotFound {
        return error;
    }
    match std::fs::read_link(path) {
        Ok(target) => std::io::Error::new(
            error.kind(),
            format!(
                "it is a symbolic link to {}, which does not exist",
                target.display()
            ),
        ),
        Err(_) => error,
    }
}

/// A front-end pool: the front ends of one site and the db node(s) holding its users' database.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pool {
    /// Unique pool name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Its front-end nodes: at least one, each with the `frontend` role, in `site`, in no other
    /// pool.
    pub frontends: Vec<String>,
    /// The paired pool, in another site, whose `pair` names this pool back.
    pub pair: Option<String>,
    /// The db node holding the primary copy of the pool's user database, in `site`.
    pub primary: String,
    /// The db node holding its synchronous mirror, in the primary's site, not the primary.
    pub mirror: Option<String>,
}

impl Pool {
    /// The name of the pool's user database: `users-<pool>`.
    pub fn users_database(&self) -> String {
        users_database(&self.name)
    }
}

/// The name of pool `pool`'s user database.
pub(crate) fn users_database(pool: &str) -> String {
    format!("users-{pool}")
}

/// The persistent chat pool and the placement of its databases `mgc` and `mgccomp`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatPool {
    /// Chat nodes: 1 to `CHAT_SERVERS_MAX`, each with the `chat` role, no duplicates.
    pub servers: Vec<String>,
    /// The initially active servers: at most `CHAT_ACTIVE_MAX`, a subset of `servers`, all in the
    /// site of `primary`.
    pub active: Vec<String>,
    /// The db node holding the primary copies of `mgc` and `mgccomp`.
    pub primary: String,
    /// Their synchronous mirror, in the primary's site.
    pub mirror: Option<String>,
    /// The log-shipping secondary of `mgc`, in another site than the primary.
    pub backup: Option<String>,
    /// The mirror of the secondary, in the backup's site (only with a backup).
    pub backup_mirror: Option<String>,
    /// How often a chat node pings each WebSocket session; a session that has not answered for
    /// `CHAT_SESSION_SILENT_PINGS` pings is ended (its client is gone without closing), and so is
    /// one whose client took in nothing for as long (a frame not handed over: it stopped reading).
    pub session_ping_ms: u64,
}

/// At most this many chat servers in the chat pool.
pub const CHAT_SERVERS_MAX: usize = 8;
/// Default of `chat.session_ping_ms`.
pub const CHAT_SESSION_PING_MS_DEFAULT: u64 = 30_000;
/// Least `chat.session_ping_ms` accepted.
pub const CHAT_SESSION_PING_MS_MIN: u64 = 100;
/// Most `chat.session_ping_ms` accepted.
pub const CHAT_SESSION_PING_MS_MAX: u64 = 600_000;
/// Pings a session may leave unanswered before it is ended.
pub const CHAT_SESSION_SILENT_PINGS: u32 = 3;
/// At most this many active chat servers.
pub const CHAT_ACTIVE_MAX: usize = 4;

/// Where the Central Management Store's copies live.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cms {
    /// The db node holding the writable copy.
    pub primary: String,
    /// Its synchronous mirror, in the primary's site.
    pub mirror: Option<String>,
    /// The standby copy, in another site.
    pub standby: Option<String>,
}

impl Topology {
    /// Reads and validates the topology at `path`.
    ///
    /// `path` is made absolute first (against the current directory), so `dir`, `share` and every
    /// node's `data_dir` in the result are absolute. Refuses anything but a regular file (before
    /// opening it), files over [`TOPOLOGY_BYTES_MAX`] and text that is not UTF-8.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let read_error = |error| TopologyError::Read {
            path: path.to_path_buf(),
            error,
        };
        let absolute = std::path::absolute(path).map_err(read_error)?;
        // Look before opening: opening a FIFO for reading waits for a writer that may never come,
        // and a device such as /dev/zero reads without end.
        let metadata = std::fs::metadata(&absolute)
            .map_err(|error| read_error(explain_dangling_link(&absolute, error)))?;
        regular_file(path, &metadata)?;
        let file = std::fs::File::open(&absolute).map_err(read_error)?;
        // The path may have been replaced between the look and the open: check what was opened.
        let opened = file.metadata().map_err(read_error)?;
        regular_file(path, &opened)?;
        let mut bytes = Vec::new();
        file.take(TOPOLOGY_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > TOPOLOGY_BYTES_MAX {
            return Err(TopologyError::TooLarge {
                path: path.to_path_buf(),
                bytes: opened.len().max(bytes.len() as u64),
                max: TOPOLOGY_BYTES_MAX,
            });
        }
        let text = String::from_utf8(bytes).map_err(|error| {
            let valid = error.utf8_error().valid_up_to();
            let before = &error.as_bytes()[..valid];
            TopologyError::NotUtf8 {
                path: path.to_path_buf(),
                line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
                offset: valid + 1,
            }
        })?;
        Topology::parse(&text, &absolute)
    }

    /// Parses and validates `text`, the contents of the file at `path`.
    ///
    /// `path` is only named in errors and its parent directory resolves the relative paths of the
    /// topology (the share, data directories); nothing is read or created. The first rule broken,
    /// in file order of sections, is the error returned.
    pub fn parse(text: &str, path: &Path) -> Result<Topology, TopologyError> {
        let source = Source { text, path };
        let document = toml::Deserializer::parse(text).map_err(|e| source.toml(&e, None))?;
        // Through serde_path_to_error, so that a value of the wrong type is reported with its key:
        // TOML's own error names only the value.
        let file: file::File = serde_path_to_error::deserialize(document)
            .map_err(|e| source.toml(e.inner(), Some(e.path())))?;
        validate(file, &source)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// The site of node `node`.
    pub fn site_of(&self, node: &str) -> Option<&str> {
        self.node(node).map(|node| node.site.as_str())
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|pool| pool.name == name)
    }

    /// The nodes of site `site`, in file order (none for an unknown site).
    pub fn nodes_in_site(&self, site: &str) -> Vec<&Node> {
        self.nodes.iter().filter(|node| node.site == site).collect()
    }

    /// The nodes that have `role`, in file order.
    pub fn nodes_with(&self, role: Role) -> Vec<&Node> {
        self.nodes.iter().filter(|node| node.has(role)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// `Topology::load(path)`'s message, failing the test (not hanging it) if it does not answer.
    fn load_error(path: &Path) -> String {
        let (tx, rx) = mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(Topology::load(&path).map(|_| ()));
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => panic!("accepted"),
            Ok(Err(error)) => {
                let message = error.to_string();
                // One line, and no cause that a caller printing the chain would repeat.
                assert!(!message.contains('\n'), "{message}");
                assert!(std::error::Error::source(&error).is_none(), "{message}");
                message
            }
            Err(_) => panic!("Topology::load did not answer in 10 s"),
        }
    }

    #[test]
    #[cfg(unix)]
    fn load_refuses_what_is_not_a_regular_file_without_opening_it() {
        let temp = tempfile::tempdir().unwrap();
        let message = load_error(temp.path());
        assert!(
            message.ends_with("the topology is a directory, not a regular file: pass the path of the topology.toml file"),
            "{message}"
        );
        let message = load_error(Path::new("/dev/zero"));
        assert!(
            message
                .starts_with("/dev/zero: the topology is a character device, not a regular file"),
            "{message}"
        );
        let fifo = temp.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let message = load_error(&fifo);
        assert!(
            message.contains("the topology is a FIFO (named pipe), not a regular file"),
            "{message}"
        );
    }

    #[test]
    #[cfg(unix)]
    fn load_says_what_a_broken_symbolic_link_is() {
        let temp = tempfile::tempdir().unwrap();
        let (loop1, loop2) = (temp.path().join("loop1"), temp.path().join("loop2"));
        std::os::unix::fs::symlink(&loop2, &loop1).unwrap();
        std::os::unix::fs::symlink(&loop1, &loop2).unwrap();
        let message = load_error(&loop1);
        assert!(
            message.contains("loop1: cannot read the topology: Too many levels of symbolic links"),
            "{message}"
        );
        let dangling = temp.path().join("dangling.toml");
        std::os::unix::fs::symlink(temp.path().join("gone.toml"), &dangling).unwrap();
        let message = load_error(&dangling);
        assert!(
            message.contains("cannot read the topology: it is a symbolic link to ")
                && message.ends_with("gone.toml, which does not exist"),
            "{message}"
        );
    }

    #[test]
    fn load_names_the_line_of_the_first_byte_that_is_not_utf8() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("topology.toml");
        let mut bytes = crate::example(7100, SECRET).into_bytes();
        let at = bytes.windows(4).position(|w| w == b"atl\"").unwrap();
        bytes[at] = 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        let message = load_error(&path);
        assert!(
            message.ends_with(&format!(
                "topology.toml:{line}: byte {} is not UTF-8; a topology is UTF-8 text: is this the right file?",
                at + 1
            )),
            "{message}"
        );
    }
}
