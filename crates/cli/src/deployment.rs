//! The deployment a command works on: its topology, the directory beside it (`run/`, `logs/`,
//! the users' tokens), the processes of its nodes, and the client of its internal API.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tandem_topology::Topology;

pub struct Deployment {
    pub topology: Topology,
    pub file: PathBuf,
}

impl Deployment {
    pub fn load(file: &Path) -> anyhow::Result<Deployment> {
        // Only when nothing at all is there: `exists` is false too for a symbolic link that loops
        // or leads nowhere, which `Topology::load` names as what it is.
        if matches!(std::fs::symlink_metadata(file), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            bail!(
                "no topology at {}: run `tandem init DIR` and work from DIR, or pass --topology FILE",
                file.display()
            );
        }
        let topology = Topology::load(file)?;
        let file = file
            .canonicalize()
            .with_context(|| format!("{}", file.display()))?;
        Ok(Deployment { topology, file })
    }

    pub fn dir(&self) -> &Path {
        &self.topology.dir
    }

    pub fn pid_file(&self, node: &str) -> PathBuf {
        self.dir().join("run").join(format!("{node}.pid"))
    }

    pub fn log_file(&self, node: &str) -> PathBuf {
        self.dir().join("logs").join(format!("{node}.log"))
    }

    pub fn client(&self) -> tandem_node::Client {
        tandem_node::Client::new(&self.topology.secret)
    }

    /// Node names from `--nodes`, every node when empty; unknown names are refused.
    pub fn select(&self, names: &[String]) -> anyhow::Result<Vec<String>> {
        if names.is_empty() {
            return Ok(self.topology.nodes.iter().map(|n| n.name.clone()).collect());
        }
        for n in names {
            if self.topology.node(n).is_none() {
                let known: Vec<&str> = self
                    .topology
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect();
                bail!(
                    "no node named {n} in {} (nodes: {})",
                    self.file.display(),
                    known.join(", ")
                );
            }
        }
        Ok(names.to_vec())
    }

    /// The node that holds the writable copy of `database` now (failovers move it among the
    /// copies the topology places), and its address. When no copy answers as primary, the
    /// topology's primary (so the error names it).
    pub fn primary_address(&self, database: &str) -> anyhow::Result<(String, String)> {
        runtime()?.block_on(self.find_primary(database))
    }

    /// `primary_address`, for callers already inside a runtime.
    pub async fn find_primary(&self, database: &str) -> anyhow::Result<(String, String)> {
        let candidates = tandem_node::locator::candidates(&self.topology, database, false);
        let Some(first) = candidates.first() else {
            bail!("the topology places no primary copy of database {database}")
        };
        if candidates.len() > 1
            && let Ok(n) = self.locate(database).await
        {
            return Ok((n.name, n.address));
        }
        Ok((first.name.clone(), first.address.clone()))
    }

    /// The node that holds the writable copy of `database` now, or why none does: each
    /// copy's answer (no fallback to the topology's primary).
    /// The role of `database`'s copy on every db node that answers within `timeout` and holds
    /// one, asked at once.
    pub async fn copy_roles(
        &self,
        database: &str,
        timeout: std::time::Duration,
    ) -> Vec<tandem_node::CopyRole> {
        self.client()
            .copy_roles(&self.topology, database, None, timeout)
            .await
    }

    pub async fn locate(&self, database: &str) -> Result<tandem_topology::Node, String> {
        let candidates = tandem_node::locator::candidates(&self.topology, database, false);
        tandem_node::locator::Locator::new()
            .probe_or_why(&self.client(), database, false, &candidates)
            .await
    }

    /// The pid recorded for `node`, if its process is alive and is that node's `tandem serve`.
    pub fn running_pid(&self, node: &str) -> Option<i32> {
        running_pid_in(&self.dir().join("run"), &self.file, node)
    }

    /// What brings back `node`, which does not answer: started when its process is gone;
    /// continued when it is stopped (SIGSTOP, a debugger); restarted when it runs but does not
    /// answer (`tandem up` refuses a node already running).
    pub fn revive_advice(&self, node: &str) -> String {
        match self.running_pid(node) {
            None => format!("start it (`tandem up --detach --nodes {node}`)"),
            Some(pid) if process_stopped(pid) => {
                format!("its process (pid {pid}) is stopped: continue it (`kill -CONT {pid}`)")
            }
            Some(pid) => format!(
                "its process (pid {pid}) runs but does not answer: restart it (`tandem down \
                 --nodes {node}`, then `tandem up --detach --nodes {node}`)"
            ),
        }
    }

    fn tokens_file(&self) -> PathBuf {
        self.dir().join(".tandem").join("tokens.json")
    }

    /// The users' tokens kept beside the topology (none yet: empty). A file that does not read
    /// is an error naming it (chat commands said "no token for USER", and the advice they gave,
    /// `tandem user add`, was refused: the user exists).
    pub fn tokens(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let file = self.tokens_file();
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} does not read as the users' tokens (a JSON object of user to token): \
                     move it aside, and the next `tandem user add` starts a new one",
                    file.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }

    /// Keeps (or, with None, forgets) a user's token beside the topology, readable by its owner
    /// only. Commands run at once (a script adding users in parallel) each read the file, change
    /// it and put it back: under the deployment's tokens lock, so none puts back a file without
    /// another's token, and through a temporary file of this process's own, renamed into place,
    /// so none renames away the half-written file of another.
    pub fn save_token(&self, user: &str, token: Option<&str>) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _lock = self.lock_tokens()?;
        let file = self.tokens_file();
        let mut all = self.tokens()?;
        match token {
            Some(t) => all.insert(user.to_string(), t.to_string()),
            None => all.remove(user),
        };
        let tmp = file.with_file_name(format!("tokens.json.{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&all)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            Ok::<_, anyhow::Error>(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", file.display()));
        }
        Ok(())
    }

    /// Takes the deployment's tokens lock (`.tandem/tokens.lock`), waiting up to
    /// `TOKENS_LOCK_WAIT_MS` for the command that holds it: a holder changes one small file and
    /// lets go at once, and the kernel lets go for a holder that dies.
    fn lock_tokens(&self) -> anyhow::Result<std::fs::File> {
        let path = self.dir().join(".tandem").join("tokens.lock");
        let deadline = Instant::now() + Duration::from_millis(TOKENS_LOCK_WAIT_MS);
        loop {
            if let Some(file) = try_lock(&path)? {
                return Ok(file);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} is still held after {} s by another tandem command keeping a user's \
                     token: find it (`fuser {}`), let it end or stop it, then run this again",
                    path.display(),
                    TOKENS_LOCK_WAIT_MS / 1000,
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(TOKENS_LOCK_POLL_MS));
        }
    }
}

/// Longest wait for the tokens lock: many times what a holder needs (read, change and write
/// back one small file), short enough that a stuck holder is reported.
const TOKENS_LOCK_WAIT_MS: u64 = 10_000;
/// How often a command waiting for the tokens lock tries it again.
const TOKENS_LOCK_POLL_MS: u64 = 5;

/// True when `pid` is alive (not a zombie) and its command line is `tandem serve --node NODE`.
pub fn is_node_process(pid: i32, node: &str) -> bool {
    if pid <= 0 || !alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter().any(|a| *a == b"serve")
        && args
            .windows(2)
            .any(|w| w[0] == b"--node" && w[1] == node.as_bytes())
}

/// True when the process is stopped by a signal (SIGSTOP) or traced (its state in
/// `/proc/PID/stat`: `T` or `t`).
pub fn process_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold any byte.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t")
    })
}

/// The pid `run/NODE.pid` records, if its process is alive and is `node`'s `tandem serve` for
/// the topology `file` (canonical); also when that topology no longer loads (`down`).
pub fn running_pid_in(run: &Path, file: &Path, node: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(run.join(format!("{node}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (is_node_process(pid, node) && serves_topology(pid, file)).then_some(pid)
}

/// True when the `tandem serve` process `pid` runs with the topology `file` (canonical): its
/// `--topology` argument, else its `TANDEM_TOPOLOGY`, else `topology.toml`, from its working
/// directory. Every deployment has nodes of the same names: a pid file copied with a
/// deployment, or a pid reused by another deployment's node, is not this one's.
pub fn serves_topology(pid: i32, file: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let from_args = args.windows(2).find_map(|w| {
        if w[0] == b"--topology" {
            return Some(w[1].to_vec());
        }
        w[0].strip_prefix(b"--topology=").map(<[u8]>::to_vec)
    });
    let from_env = || {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(b"TANDEM_TOPOLOGY=").map(<[u8]>::to_vec))
            .filter(|v| !v.is_empty())
    };
    let named = from_args
        .or_else(from_env)
        .unwrap_or_else(|| b"topology.toml".to_vec());
    let named =
        PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(named));
    let path = if named.is_absolute() {
        named
    } else {
        match std::fs::read_link(format!("/proc/{pid}/cwd")) {
            Ok(cwd) => cwd.join(named),
            Err(_) => return false,
        }
    };
    path.canonicalize().is_ok_and(|p| p == file)
}

/// True when the process exists and has not exited (a zombie has exited).
pub fn alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(tandem_store::process_running)
}

/// Raises this process's soft limit on open files to its hard limit (as servers do: the soft
/// limit is often 1,024, far below what a chat node with thousands of WebSocket sessions
/// needs); the processes it starts next inherit it. Returns the limit now in force.
pub fn raise_open_files() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: sending a signal to a pid we checked is one of our node processes.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Asks a node process to stop (SIGTERM), waits up to `grace`, then kills it (SIGKILL).
/// Returns true when it stopped cleanly.
pub fn stop(pid: i32, grace: Duration) -> bool {
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A runtime for a command that talks to nodes.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Takes the lock of the file at `path` (made if missing, its parent too): the file, or None
/// while another process holds it. The kernel drops the lock with its holder.
pub fn try_lock(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| path.display().to_string())?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example deployment in `dir`, nothing of it started.
    fn example_in(dir: &Path) -> Deployment {
        let file = dir.join("topology.toml");
        let text = tandem_topology::example(20000, &"ab".repeat(32));
        Deployment {
            topology: Topology::parse(&text, &file).unwrap(),
            file,
        }
    }

    #[test]
    fn tokens_saved_at_once_are_all_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let d = std::sync::Arc::new(example_in(tmp.path()));
        d.save_token("gone", Some("gone.0")).unwrap();
        // Each thread opens the lock file itself: the kernel's file locks are held by an open
        // file, so threads exclude each other as the processes of parallel commands do.
        let threads = 16;
        let start = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
        let savers: Vec<_> = (0..threads)
            .map(|i| {
                let (d, start) = (d.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    d.save_token(&format!("tok{i}"), Some(&format!("tok{i}.{i}")))
                })
            })
            .collect();
        start.wait();
        d.save_token("gone", None).unwrap();
        for (i, saver) in savers.into_iter().enumerate() {
            saver
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("tok{i}: {e:#}"));
        }
        let expected: BTreeMap<String, String> = (0..threads)
            .map(|i| (format!("tok{i}"), format!("tok{i}.{i}")))
            .collect();
        assert_eq!(d.tokens().unwrap(), expected);
        let left: Vec<_> = std::fs::read_dir(tmp.path().join(".tandem"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn a_tokens_file_that_does_not_read_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let d = example_in(tmp.path());
        let file = tmp.path().join(".tandem").join("tokens.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"{\"alice\": \"alice.1\"").unwrap();
        let e = d.save_token("bob", Some("bob.1")).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not read as the users' tokens"),
            "{e:#}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"{\"alice\": \"alice.1\"");
        // Nor read as holding no token (a chat command said "no token for alice").
        let e = d.tokens().unwrap_err();
        assert!(
            format!("{e:#}").contains("tokens.json does not read"),
            "{e:#}"
        );
    }

    #[test]
    fn a_stopped_process_is_told_from_a_running_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let state_is = |stopped: bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while process_stopped(pid) != stopped {
                assert!(std::time::Instant::now() < deadline, "stopped: {stopped}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        state_is(false);
        signal(pid, libc::SIGSTOP);
        state_is(true);
        signal(pid, libc::SIGCONT);
        state_is(false);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process_stopped(pid));
    }
}
