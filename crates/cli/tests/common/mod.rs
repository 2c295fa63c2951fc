//! What the CLI's multi-process tests share: running the binary, raw HTTP, stopping nodes.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long one `tandem` command of a test may run: past it the test fails instead of hanging.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(300);

/// Runs `cmd` to its end, its output captured, or kills it and fails at `COMMAND_DEADLINE`.
pub fn output_within_deadline(cmd: &mut Command) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tandem") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still ran after {COMMAND_DEADLINE:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// Runs `tandem ARGS` in `dir` (so `topology.toml` there is the deployment).
pub fn tandem(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .current_dir(dir)
        .env_remove("TANDEM_TOPOLOGY")
        .output()
        .expect("run tandem")
}

/// Runs `tandem ARGS`, which must succeed; its stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    succeeded(tandem(dir, args), args)
}

/// The stdout of `tandem ARGS`, which must have succeeded.
fn succeeded(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "tandem {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs `tandem ARGS --json`, which must succeed; its document.
pub fn json(dir: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(dir, &args)).expect("one JSON document")
}

/// Runs `tandem bench ARGS --json`, which must succeed, with `tmp` as its working and its
/// temporary directory (so its scratch directories, and its nodes' command lines, name `tmp`);
/// its document.
pub fn bench(tmp: &Path, args: &[&str]) -> Value {
    let out = output_within_deadline(
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("bench")
            .args(args)
            .arg("--json")
            .current_dir(tmp)
            .env("TMPDIR", tmp)
            .env_remove("TANDEM_TOPOLOGY"),
    );
    if !out.status.success() {
        // The nodes' logs go with `tmp` when the test fails: their ends are shown first.
        print_logs(tmp, 3);
    }
    serde_json::from_str(&succeeded(out, args)).expect("one JSON document")
}

/// Prints the last lines of every file in a `logs` directory at most `depth` levels under
/// `dir`.
fn print_logs(dir: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "logs") {
            for log in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("==== {} (last 80 lines)", log.path().display());
                for l in &lines[lines.len().saturating_sub(80)..] {
                    eprintln!("{l}");
                }
            }
        } else if depth > 0 {
            print_logs(&path, depth - 1);
        }
    }
}

/// One raw HTTP/1.1 request; the status (0 when nothing came back) and the body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> (u16, String) {
    let (code, _, body) = http_with_head(addr, method, path, headers, body);
    (code, body)
}

/// `http`, with the answer's status line and headers (as sent) in the middle.
pub fn http_with_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> (u16, String, String) {
    let body = body.as_ref();
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        // Nothing listens (a node killed by the test): no status.
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let _ = s.write_all(&bytes);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).to_string();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (code, head.to_string(), body.to_string())
}

/// The address of `node` in `dir/topology.toml`.
pub fn address(dir: &Path, node: &str) -> String {
    let topo = std::fs::read_to_string(dir.join("topology.toml")).unwrap();
    let at = topo.find(&format!("name = \"{node}\"")).unwrap();
    let line = topo[at..]
        .lines()
        .find(|l| l.starts_with("address"))
        .unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

/// The cluster secret in `dir/topology.toml`.
pub fn secret(dir: &Path) -> String {
    let topo = std::fs::read_to_string(dir.join("topology.toml")).unwrap();
    let line = topo.lines().find(|l| l.starts_with("secret")).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

/// The pid of `node` from `dir/run/NODE.pid`.
pub fn pid(dir: &Path, node: &str) -> i32 {
    std::fs::read_to_string(dir.join("run").join(format!("{node}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// SIGKILL to `node`, and back once it is gone: a signal is delivered after `kill` returns,
/// and a node still dying accepts connections it never answers (a command run right after
/// took it for a stopped node, now and then).
pub fn kill(dir: &Path, node: &str) {
    let pid = pid(dir, node);
    // SAFETY: a node the test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "{node} (pid {pid}) still alive 10 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` runs (exists, and is not a zombie: a zombie's files are closed).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// The pids in `dir/run/*.pid`.
pub fn pids(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir.join("run")) else {
        return vec![];
    };
    entries
        .filter_map(|e| {
            std::fs::read_to_string(e.ok()?.path())
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

/// `tandem down`, then SIGKILL to whatever it left: a test stops every node it started, also
/// when it fails.
pub fn stop_all(dir: &Path) {
    let pids = pids(dir);
    let _ = tandem(dir, &["down"]);
    for pid in pids {
        // SAFETY: processes the test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The two-site example of `tandem init` in a temporary directory, its nodes started; every
/// node of it is stopped when this goes, also when a test fails.
pub struct Deployment {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        stop_all(&self.dir);
    }
}

impl Deployment {
    /// `tandem init`, the topology changed by `edit`, then `tandem up --detach`.
    pub fn start(edit: impl FnOnce(String) -> String) -> Deployment {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        ok(tmp.path(), &["init", dir.to_str().unwrap()]);
        let file = dir.join("topology.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, edit(text)).unwrap();
        let d = Deployment { _tmp: tmp, dir };
        ok(&d.dir, &["up", "--detach"]);
        d
    }

    pub fn address(&self, node: &str) -> String {
        address(&self.dir, node)
    }

    pub fn secret(&self) -> String {
        secret(&self.dir)
    }
}

/// Every message of room `lobby` read through the user API at `addr`, oldest first: (id, text).
pub fn history(addr: &str, token: &str) -> Vec<(i64, String)> {
    let bearer = format!("Bearer {token}");
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (code, body) = http(
            addr,
            "GET",
            &format!("/api/v1/rooms/lobby/messages?after={after}&limit=500"),
            &[("authorization", &bearer)],
            "",
        );
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let page = v["events"].as_array().unwrap().clone();
        if page.is_empty() {
            return all;
        }
        for m in page {
            after = m["id"].as_i64().unwrap();
            all.push((after, m["text"].as_str().unwrap_or("").to_string()));
        }
    }
}

/// A user of `pool-atl` and the room `lobby` they created; the user's token.
pub fn user_and_room(d: &Deployment) -> String {
    let token = ok(&d.dir, &["user", "add", "alice", "--pool", "pool-atl"]);
    ok(
        &d.dir,
        &["chat", "room", "create", "lobby", "--as", "alice"],
    );
    token.trim().to_string()
}

/// An acknowledged post.
#[derive(Clone, Debug)]
pub struct Acked {
    pub id: i64,
    pub text: String,
    pub lsn: u64,
}

/// Posts one message to `lobby`: the status code and the body of the answer.
pub fn post_answer(addr: &str, token: &str, text: &str) -> (u16, String) {
    let bearer = format!("Bearer {token}");
    let body = serde_json::json!({ "text": text }).to_string();
    http(
        addr,
        "POST",
        "/api/v1/rooms/lobby/messages",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        body,
    )
}

/// Posts one message to `lobby`; what was acknowledged.
pub fn post(addr: &str, token: &str, text: &str) -> Option<Acked> {
    let (code, answer) = post_answer(addr, token, text);
    if code != 201 {
        return None;
    }
    let v: Value = serde_json::from_str(&answer).ok()?;
    Some(Acked {
        id: v["id"].as_i64()?,
        text: text.to_string(),
        lsn: v["lsn"].as_u64()?,
    })
}

/// Posters that keep posting unique texts to `lobby` and remember what was acknowledged, and
/// when.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(Acked, Instant)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: &str, token: &str, clients: usize) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let (addr, token) = (addr.to_string(), token.to_string());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        match post(&addr, &token, &format!("c{c}-{n}")) {
                            Some(a) => acked.lock().unwrap().push((a, Instant::now())),
                            None => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            threads,
        }
    }

    /// Posts acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The `n`th post acknowledged (from 0), once it is.
    pub fn nth(&self, n: usize) -> Option<Acked> {
        self.acked.lock().unwrap().get(n).map(|(a, _)| a.clone())
    }

    /// Waits (30 s at most) for a post acknowledged after `t`.
    pub fn wait_acked_since(&self, t: Instant, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.acked.lock().unwrap().iter().any(|(_, at)| *at > t) {
            assert!(Instant::now() < deadline, "no post acknowledged {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (`within` of `t` at most) for a post acknowledged after `t`; how long after `t`
    /// the first one was.
    pub fn wait_acked_within(&self, t: Instant, within: Duration, what: &str) -> Duration {
        loop {
            let first = self
                .acked
                .lock()
                .unwrap()
                .iter()
                .map(|(_, at)| *at)
                .filter(|at| *at > t)
                .min();
            if let Some(at) = first {
                let after = at.duration_since(t);
                assert!(
                    after <= within,
                    "no post acknowledged {what}: the first after {after:?}"
                );
                return after;
            }
            assert!(t.elapsed() < within, "no post acknowledged {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every poster; what was acknowledged, and when.
    pub fn stop(self) -> Vec<(Acked, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Live processes whose command line names `dir` (`--topology DIR/…`, a node's directory):
/// pid and command line, arguments separated by spaces.
pub fn processes_of(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.to_str().unwrap().as_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && cmdline.windows(dir.len()).any(|w| w == dir) {
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// Damages, in place, three of the leaf pages that hold the oldest events of the chat database
/// `file` (a running node's: its WAL is read, and left as it is).
pub fn damage_oldest_rows(file: &std::path::Path) {
    damage_pages(
        file,
        "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' \
         ORDER BY path LIMIT 3 OFFSET 1",
    );
}

/// Damages, in place, the pages of the database `file` that `pick` (a query of SQLite's
/// `dbstat` table) names; at least one.
pub fn damage_pages(file: &std::path::Path, pick: &str) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let c = tandem_store::rusqlite::Connection::open_with_flags(
        file,
        tandem_store::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let pages: Vec<i64> = c
        .prepare(pick)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(c);
    assert!(!pages.is_empty(), "no page to damage: {pick}");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    for page in pages {
        // The whole page, its b-tree header too: a leaf whose header says it holds no cell
        // would otherwise be read as an empty one, damage unseen.
        let at = (page as u64 - 1) * 4096;
        let mut bytes = vec![0u8; 4096];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut bytes).unwrap();
        for b in &mut bytes {
            *b ^= 0x5a;
        }
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&bytes).unwrap();
    }
}
