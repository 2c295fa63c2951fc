//! Files on the share: names, listings, the lock, JSON progress files.

use super::*;

/// Writes `value` as JSON under a temporary name, then renames it: readers see the old or the
/// new document, never a part. `durable` also fsyncs the file and the directory. The file's
/// directory is made if its own parent is there (a database's directory on the share, never
/// the share itself: see `share_present`).
pub(crate) fn write_json<T: Serialize>(
    path: &FsPath,
    value: &T,
    durable: bool,
) -> Result<(), String> {
    let dir = path.parent().expect("a file in a directory");
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(format!("{}: {e}", dir.display()));
        }
        _ => {}
    }
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value).expect("serializes");
    let r = (|| {
        std::fs::write(&tmp, &bytes)?;
        if durable {
            std::fs::File::open(&tmp)?.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })();
    r.map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &FsPath) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub(crate) fn read_config(dir: &FsPath) -> Result<Option<Config>, String> {
    read_json(&dir.join(CONFIG_FILE))
}

pub(super) fn write_config(dir: &FsPath, config: &Config) -> Result<(), String> {
    let mut c = config.clone();
    c.updated_ms = now_ms();
    write_json(&dir.join(CONFIG_FILE), &c, true)
}

/// The share directory's lock, held while a node writes backups or the configuration there.
pub(super) struct ShareLock(#[allow(dead_code)] std::fs::File);

/// The share's root, which nodes never create: a share that is not mounted would otherwise get
/// a new log chain in a local directory, which the other site never sees.
pub fn share_present(root: &FsPath) -> Result<(), String> {
    if root.is_dir() {
        Ok(())
    } else if root.exists() {
        Err(format!(
            "the share {} is not a directory: the topology's `share` names a directory both \
             sites reach",
            root.display()
        ))
    } else {
        Err(format!(
            "the share {} is missing (not mounted?; nodes do not create it, `mkdir` it for a \
             new deployment)",
            root.display()
        ))
    }
}

/// The file at the share's root naming the deployment that uses it.
pub const OWNER_FILE: &str = "tandem-share.json";

#[derive(Serialize, Deserialize)]
struct Owner {
    deployment: String,
    since_ms: i64,
}

/// The deployment a topology describes, as its share's owner file names it: derived from the
/// cluster secret, which every node of one deployment holds and no other does.
pub fn deployment_of(topology: &Topology) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("tandem share\0{}", topology.secret).as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The share of `topology` is there and is this deployment's: claimed on first use. Two
/// deployments given one share (a copied topology, a mistyped path) each took the other's
/// backups for a stale chain, set them aside and began their own, and a secondary was seeded
/// with the other deployment's database — refused now, naming the file.
/// Only a node's log-shipping jobs claim it (`share_claimed_by`); everything else only checks.
pub fn share_ours(topology: &Topology) -> Result<(), String> {
    share_claimed(&topology.share, &deployment_of(topology), None)
}

/// `share_ours` for a node's jobs: an unclaimed share is claimed — unless `memory` (a file of
/// the node's own) says this node found the share claimed before. A share that is not mounted
/// often leaves an empty directory at its path: the nodes took it for a new share, started a
/// chain there and seeded the secondary from it (until session 34).
pub(crate) fn share_claimed_by(topology: &Topology, memory: &FsPath) -> Result<(), String> {
    share_claimed(&topology.share, &deployment_of(topology), Some(memory))
}

/// What a node remembers of the share it uses.
#[derive(Serialize, Deserialize)]
struct Remembered {
    share: PathBuf,
    deployment: String,
    since_ms: i64,
}

fn remember(memory: &FsPath, root: &FsPath, deployment: &str) {
    let known = read_json::<Remembered>(memory)
        .ok()
        .flatten()
        .is_some_and(|r| r.share == root && r.deployment == deployment);
    if !known {
        let r = Remembered {
            share: root.to_path_buf(),
            deployment: deployment.to_string(),
            since_ms: now_ms(),
        };
        if let Err(e) = write_json(memory, &r, true) {
            tracing::warn!(error = %e, "cannot remember the share's owner");
        }
    }
}

pub(crate) fn share_claimed(
    root: &FsPath,
    deployment: &str,
    memory: Option<&FsPath>,
) -> Result<(), String> {
    share_present(root)?;
    let path = root.join(OWNER_FILE);
    let mut tries = 0;
    loop {
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Owner>(&bytes) {
                Ok(o) if o.deployment == deployment => {
                    if let Some(m) = memory {
                        remember(m, root, deployment);
                    }
                    return Ok(());
                }
                Ok(o) => {
                    return Err(format!(
                        "the share {} belongs to another deployment: its {OWNER_FILE} names \
                         deployment {}, and this topology's cluster secret makes {deployment}. \
                         Give each deployment a share of its own (if this deployment's secret \
                         was changed, remove {} to claim the share again)",
                        root.display(),
                        o.deployment,
                        path.display()
                    ));
                }
                // Being written by the node that claims it: read again.
                Err(_) if tries < 20 => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(memory) = memory else {
                    return Err(format!(
                        "the share {} holds no {OWNER_FILE}: not claimed yet (the node of the \
                         primary claims it as its jobs start) — or not the share (is it \
                         mounted?)",
                        root.display()
                    ));
                };
                if let Ok(Some(r)) = read_json::<Remembered>(memory)
                    && r.share == root
                    && r.deployment == deployment
                {
                    return Err(format!(
                        "the share {} holds no {OWNER_FILE}, though this node found it claimed \
                         there before (since {}): not mounted? An empty directory at its path \
                         is not the share. If it is a new share on purpose, write \
                         {{\"deployment\": \"{deployment}\", \"since_ms\": 0}} into {}",
                        root.display(),
                        r.since_ms,
                        path.display()
                    ));
                }
                let owner = Owner {
                    deployment: deployment.to_string(),
                    since_ms: now_ms(),
                };
                let bytes = serde_json::to_vec_pretty(&owner).expect("serializes");
                let made = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .and_then(|mut f| {
                        use std::io::Write;
                        f.write_all(&bytes)?;
                        f.sync_all()
                    });
                match made {
                    Ok(()) => {
                        if let Ok(d) = std::fs::File::open(root) {
                            let _ = d.sync_all();
                        }
                        remember(memory, root, deployment);
                        return Ok(());
                    }
                    // Claimed by another node meanwhile: read what it wrote.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                }
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        tries += 1;
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// Bytes that may still be written on the share (what `df` calls available).
pub fn share_room(root: &FsPath) -> Result<u64, String> {
    tandem_store::free_bytes(root).map_err(|e| e.to_string())
}

/// How long a job or an operation waits for the share's lock of a database. A node stopped
/// (SIGSTOP, a hung host) in the middle of a round holds it until it is continued or killed:
/// without a bound, a failover's first step waited on it for good — and, once the node was
/// continued, acted long after its caller had given up.
const SHARE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl ShareLock {
    /// Locks a database's directory on the share, made if needed (not the share itself), for
    /// `holder` (a node's name: written in the lock file, so that a wait that times out names
    /// who holds it).
    pub(super) fn acquire(
        dir: &FsPath,
        holder: &str,
        deployment: &str,
    ) -> Result<ShareLock, String> {
        ShareLock::acquire_within(dir, holder, deployment, SHARE_LOCK_WAIT)
    }

    fn acquire_within(
        dir: &FsPath,
        holder: &str,
        deployment: &str,
        wait: std::time::Duration,
    ) -> Result<ShareLock, String> {
        share_claimed(
            dir.parent().expect("a database's directory on the share"),
            deployment,
            None,
        )?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match f.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let held = std::fs::read_to_string(&path).unwrap_or_default();
                    let held = held.trim();
                    return Err(format!(
                        "{}: held by {} for over {:.1} s; a node stopped in the middle of a round \
                         holds it until it is continued or killed",
                        path.display(),
                        if held.is_empty() { "another job" } else { held },
                        wait.as_secs_f64()
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(format!("{}: {e}", path.display()));
                }
            }
        }
        use std::io::Write;
        let _ = f
            .set_len(0)
            .and_then(|()| write!(f, "{holder} (pid {})", std::process::id()));
        Ok(ShareLock(f))
    }
}

/// The backup files of a directory, from their names, in LSN order.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub(super) files: Vec<(String, FileName)>,
}

impl Listing {
    pub(super) fn read(dir: &FsPath) -> Result<Listing, String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(parsed) = tandem_store::parse_file_name(&name) {
                files.push((name, parsed));
            }
        }
        files.sort_by_key(|(name, f)| (order(f), name.clone()));
        Ok(Listing { files })
    }

    pub(super) fn logs(&self) -> impl Iterator<Item = (&str, Lsn, Lsn)> {
        self.files.iter().filter_map(|(n, f)| match f {
            FileName::Log {
                first_lsn,
                last_lsn,
            } => Some((n.as_str(), *first_lsn, *last_lsn)),
            _ => None,
        })
    }

    /// The newest full backup: highest LSN, then latest taken.
    pub(super) fn newest_full(&self) -> Option<(&str, Lsn)> {
        self.files
            .iter()
            .filter_map(|(n, f)| match f {
                FileName::Full {
                    lsn, created_ms, ..
                } => Some((n.as_str(), *lsn, *created_ms)),
                _ => None,
            })
            .max_by_key(|(_, lsn, created)| (*lsn, *created))
            .map(|(n, lsn, _)| (n, lsn))
    }

    /// The file that holds the highest LSN (a log backup over a full backup of the same LSN).
    pub(super) fn newest(&self) -> Option<(&str, Lsn)> {
        self.files.last().map(|(n, f)| (n.as_str(), f.lsn()))
    }

    /// The log backup that ends the highest.
    pub(super) fn newest_log(&self) -> Option<(&str, Lsn)> {
        self.files
            .iter()
            .rev()
            .find(|(_, f)| matches!(f, FileName::Log { .. }))
            .map(|(n, f)| (n.as_str(), f.lsn()))
    }

    /// Where the log chain goes on from: the end of its newest log backup or, before the first
    /// one, the full backup the chain started with (the oldest). A full backup taken since is
    /// a point to restore from, not part of the log chain: the next log backup follows the last
    /// log backup, never a later full backup, or the records between them would be in no log
    /// backup at all — and a secondary that restores logs would wait for them for good.
    pub(super) fn chain_end(&self) -> Option<(&str, Lsn)> {
        self.newest_log().or_else(|| {
            self.files
                .iter()
                .find(|(_, f)| matches!(f, FileName::Full { .. }))
                .map(|(n, f)| (n.as_str(), f.lsn()))
        })
    }
}

/// Sort key: by last LSN; a full backup before a log backup that ends at the same LSN.
pub(super) fn order(f: &FileName) -> (Lsn, u8, i64) {
    match f {
        FileName::Full {
            lsn, created_ms, ..
        } => (*lsn, 0, *created_ms),
        FileName::Log { last_lsn, .. } => (*last_lsn, 1, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_too_long_is_refused_naming_its_holder() {
        let share = tempfile::tempdir().unwrap();
        let dir = share.path().join("mgc");
        share_claimed(share.path(), "d1", Some(&share.path().join("memory.json"))).unwrap();
        let held = ShareLock::acquire(&dir, "atl-db1", "d1").unwrap();
        let wait = std::time::Duration::from_millis(200);
        let e = ShareLock::acquire_within(&dir, "dal-db1", "d1", wait)
            .err()
            .expect("refused while held");
        assert!(
            e.contains("held by atl-db1 (pid") && e.contains("for over 0.2 s"),
            "{e}"
        );
        drop(held);
        ShareLock::acquire_within(&dir, "dal-db1", "d1", wait).expect("free once let go");
    }

    #[test]
    fn a_share_is_claimed_by_the_first_deployment_and_refused_to_another() {
        let share = tempfile::tempdir().unwrap();
        let root = share.path();
        let memory = root.join("node-memory").join("share.json");
        std::fs::create_dir_all(memory.parent().unwrap()).unwrap();
        let other_memory = root.join("node-memory").join("other.json");
        // Only a node's jobs claim it.
        let e = share_claimed(root, "d1", None).unwrap_err();
        assert!(e.contains("not claimed yet"), "{e}");
        share_claimed(root, "d1", Some(&memory)).expect("claimed on first use");
        share_claimed(root, "d1", None).expect("its own");
        let e = share_claimed(root, "d2", Some(&other_memory)).unwrap_err();
        assert!(
            e.contains("belongs to another deployment")
                && e.contains("names deployment d1")
                && e.contains(OWNER_FILE),
            "{e}"
        );
        let e = ShareLock::acquire(&root.join("mgc"), "atl-db1", "d2")
            .err()
            .expect("no lock on another deployment's share");
        assert!(e.contains("belongs to another deployment"), "{e}");
        assert!(!root.join("mgc").exists(), "nothing made on it");
        // The owner file gone (an empty directory where the share is not mounted): a node that
        // found the share claimed before does not claim it again.
        std::fs::remove_file(root.join(OWNER_FILE)).unwrap();
        let e = share_claimed(root, "d1", Some(&memory)).unwrap_err();
        assert!(e.contains("not mounted?"), "{e}");
        assert!(!root.join(OWNER_FILE).exists());
        // A share that is not there is not claimed (nor made).
        let gone = root.join("gone");
        assert!(
            share_claimed(&gone, "d1", Some(&memory))
                .unwrap_err()
                .contains("missing")
        );
        assert!(!gone.exists());
        // A file is not a share, nor said to be missing.
        let file = root.join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(
            share_claimed(&file, "d1", None)
                .unwrap_err()
                .contains("is not a directory")
        );
        // Damage is named.
        std::fs::write(root.join(OWNER_FILE), b"{").unwrap();
        assert!(
            share_claimed(root, "d1", None)
                .unwrap_err()
                .contains(OWNER_FILE)
        );
    }

    #[test]
    fn a_deployment_is_named_by_its_secret() {
        let topology = |secret: &str| {
            let text = tandem_topology::example(41000, secret);
            Topology::parse(&text, FsPath::new("/tmp/topology.toml")).unwrap()
        };
        let a = deployment_of(&topology(&"ab".repeat(32)));
        assert_eq!(a, deployment_of(&topology(&"ab".repeat(32))));
        assert_ne!(a, deployment_of(&topology(&"cd".repeat(32))));
        assert_eq!(a.len(), 32);
    }
}
