//! `tandem bench chat`: chat posts through the HTTP API of a real chat node in front of a real
//! db node (no mirror), from concurrent clients in this process:
//! (a) the most posts/s into one room and into many rooms;
//! (b) post latency at a fixed offered rate (open loop, default 5,000/s for 20 s);
//! (c) history pages of 100 from a room of many messages (default 1,000,000, loaded through the
//!     chat domain before the nodes start).

use super::Latency;
use crate::output::{Output, count};
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tandem_node::{Method, UserApi};
use tandem_store::{Database, Options};

#[derive(Args)]
pub struct ChatArgs {
    /// Messages loaded into the history room before the nodes start.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=20_000_000))]
    history_messages: u64,
    /// Seconds each throughput run lasts.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Concurrent HTTP clients of the throughput runs (each waits for its answer before its
    /// next post): 256, as the store and mirror benches' concurrent writers.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    clients: u64,
    /// Seconds the latency run lasts: a p99 needs many samples, and a single pause of the
    /// server (a long group commit) weighs on 5 s far more than on the steady state.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    rate_seconds: u64,
    /// Offered rate of the latency run, posts per second.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// WebSocket sessions of live events opened on the chat node at the end, to measure its
    /// memory with them and one post's fan-out to all (0 skips).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    websockets: u64,
}

#[derive(Serialize)]
struct Throughput {
    rooms: usize,
    clients: u64,
    posts: u64,
    errors: u64,
    seconds: f64,
    per_second: f64,
    latency: Latency,
}

#[derive(Serialize)]
struct Paced {
    offered_per_second: u64,
    seconds: u64,
    posts: u64,
    errors: u64,
    achieved_per_second: f64,
    latency: Latency,
}

#[derive(Serialize)]
struct History {
    room_messages: u64,
    pages: u64,
    page_size: u64,
    latency: Latency,
}

#[derive(Serialize)]
struct Memory {
    posts: u64,
    chat_node_mb: Option<f64>,
    db_node_mb: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    one_room: Throughput,
    many_rooms: Throughput,
    paced: Paced,
    history: History,
    /// The nodes' resident memory (MB) once every post and page above is answered: what the
    /// load left behind.
    memory: Memory,
    /// None with `--websockets 0`.
    sessions: Option<super::sessions::Sessions>,
    load_seconds: f64,
}

const USER: &str = "bench";
const ROOMS: usize = 64;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn topology(chat_port: u16, db_port: u16) -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("random secret");
    let secret = hex::encode(raw);
    format!(
        r#"[deployment]
name = "bench-chat"
secret = "{secret}"
share = "share"

[[site]]
name = "s"

[[node]]
name = "chat"
site = "s"
address = "127.0.0.1:{chat_port}"
roles = ["frontend", "chat"]

[[node]]
name = "db"
site = "s"
address = "127.0.0.1:{db_port}"
roles = ["db"]

[[pool]]
name = "pool-s"
site = "s"
frontends = ["chat"]
primary = "db"

[chat]
servers = ["chat"]
active = ["chat"]
primary = "db"

[cms]
primary = "db"
"#
    )
}

/// Loads `n` messages into room `big` (and creates the bench rooms) before any node runs.
pub(super) fn preload(mgc: &Path, n: u64, out: &Output) -> anyhow::Result<f64> {
    let started = Instant::now();
    let db = Database::create(mgc, "mgc", Options::default())?;
    tandem_chat::prepare(&db)?;
    let room = |name: &str| tandem_chat::NewRoom {
        name: name.to_string(),
        category: None,
        description: None,
        privacy: tandem_chat::Privacy::Open,
    };
    tandem_chat::create_room(&db, USER, &room("big"))?;
    for r in 0..ROOMS {
        tandem_chat::create_room(&db, USER, &room(&format!("room-{r}")))?;
    }
    out.progress(&format!(
        "loading {} messages into room big…",
        count(n as f64)
    ));
    let next = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (db, next) = (db.clone(), next.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    tandem_chat::post(
                        &db,
                        USER,
                        "big",
                        &format!("history message {i} about failover and journals"),
                        None,
                    )?;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("loader")?;
    }
    // The search index is derived behind the commits: built now, it is not built by the db
    // node while the bench measures it.
    db.wait_followed(
        tandem_chat::SEARCH.name,
        db.durable_lsn(),
        std::time::Duration::from_secs(600),
    )?;
    Ok(started.elapsed().as_secs_f64())
}

struct Nodes {
    children: Vec<std::process::Child>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.children {
            crate::deployment::signal(c.id() as i32, libc::SIGTERM);
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// One keep-alive HTTP/1.1 connection that sends posts as raw bytes: the load generator
/// shares the machine with the nodes, so it spends as little as a `wrk` would.
pub(super) struct RawPoster {
    conn: tokio::io::BufReader<tokio::net::TcpStream>,
    host: String,
    token: String,
    request: Vec<u8>,
    line: String,
}

impl RawPoster {
    pub(super) async fn connect(addr: &str, token: &str) -> std::io::Result<RawPoster> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawPoster {
            conn: tokio::io::BufReader::new(stream),
            host: addr.to_string(),
            token: token.to_string(),
            request: Vec::with_capacity(512),
            line: String::new(),
        })
    }

    /// Posts `text` to `room`; the HTTP status.
    pub(super) async fn post(&mut self, room: &str, text: &str) -> std::io::Result<u16> {
        use std::io::Write as _;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let body = json!({ "text": text }).to_string();
        self.request.clear();
        write!(
            self.request,
            "POST /api/v1/rooms/{room}/messages HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.host,
            self.token,
            body.len()
        )?;
        self.conn.get_mut().write_all(&self.request).await?;
        self.line.clear();
        self.conn.read_line(&mut self.line).await?;
        let status = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            self.line.clear();
            if self.conn.read_line(&mut self.line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if self.line == "\r\n" {
                break;
            }
            if let Some((k, v)) = self.line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        self.conn.read_exact(&mut body).await?;
        Ok(status)
    }
}

async fn post_loop(
    addr: String,
    token: String,
    rooms: Vec<String>,
    stop: Arc<AtomicBool>,
    k: usize,
) -> (Vec<u32>, u64) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut poster = match RawPoster::connect(&addr, &token).await {
        Ok(p) => p,
        Err(_) => return (lat, 1),
    };
    let mut i = k;
    while !stop.load(Ordering::Relaxed) {
        let room = &rooms[i % rooms.len()];
        i += 1;
        let t0 = Instant::now();
        match poster.post(room, &format!("bench post {i}")).await {
            Ok(201) => lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                match RawPoster::connect(&addr, &token).await {
                    Ok(p) => poster = p,
                    Err(_) => return (lat, errors),
                }
            }
        }
    }
    (lat, errors)
}

async fn throughput(
    addr: &str,
    token: &str,
    rooms: Vec<String>,
    clients: u64,
    seconds: u64,
) -> Throughput {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients as usize)
        .map(|k| {
            let rooms = if rooms.len() == 1 {
                rooms.clone()
            } else {
                vec![rooms[k % rooms.len()].clone()]
            };
            tokio::spawn(post_loop(
                addr.to_string(),
                token.to_string(),
                rooms,
                stop.clone(),
                k,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("client task");
        samples.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    Throughput {
        rooms: rooms.len().min(clients as usize),
        clients,
        posts: samples.len() as u64,
        errors,
        seconds: secs,
        per_second: samples.len() as f64 / secs,
        latency: Latency::of(samples),
    }
}

/// Open loop: a post is sent every 1/rate seconds whatever the answers do; latency is measured
/// from the scheduled send time, so a slow server cannot hide queueing (waiting for one of the
/// pooled connections counts too).
async fn paced(addr: &str, token: &str, rate: u64, seconds: u64) -> anyhow::Result<Paced> {
    const CONNECTIONS: usize = 64;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (give, take) = tokio::sync::mpsc::channel(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        give.send(RawPoster::connect(addr, token).await?).await?;
    }
    let take = Arc::new(tokio::sync::Mutex::new(take));
    let start = tokio::time::Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..total {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        let (give, take, tx) = (give.clone(), take.clone(), tx.clone());
        tokio::spawn(async move {
            let mut poster = take
                .lock()
                .await
                .recv()
                .await
                .expect("the pool outlives its users");
            let room = format!("room-{}", i as usize % ROOMS);
            let ok = matches!(poster.post(&room, &format!("paced {i}")).await, Ok(201));
            let _ = give.send(poster).await;
            let _ = tx.send(ok.then(|| at.elapsed().as_micros().min(u32::MAX as u128) as u32));
        });
    }
    drop(tx);
    let mut samples = Vec::new();
    let mut errors = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Some(l) => samples.push(l),
            None => errors += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Paced {
        offered_per_second: rate,
        seconds,
        posts: samples.len() as u64,
        errors,
        achieved_per_second: samples.len() as f64 / secs,
        latency: Latency::of(samples),
    })
}

async fn history(addr: &str, token: &str, room_messages: u64) -> anyhow::Result<History> {
    let api = UserApi::new(addr, token);
    let pages = 2_000u64;
    let newest = api
        .request(Method::GET, "/api/v1/rooms/big/messages?limit=1", None)
        .await?;
    let last = newest["events"][0]["id"]
        .as_i64()
        .context("room big has no message")? as u64;
    let mut samples = Vec::with_capacity(pages as usize);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..pages {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A cursor among the loaded messages with at least a page before it.
        let before = last + 1 - x % (room_messages - 100);
        let t0 = Instant::now();
        let page = api
            .request(
                Method::GET,
                &format!("/api/v1/rooms/big/messages?limit=100&before={before}"),
                None,
            )
            .await?;
        samples.push(t0.elapsed().as_micros() as u32);
        if page["events"].as_array().map(|a| a.len()).unwrap_or(0) != 100 {
            bail!("a history page before {before} did not hold 100 events: {page}");
        }
    }
    Ok(History {
        room_messages,
        pages,
        page_size: 100,
        latency: Latency::of(samples),
    })
}

pub fn run(a: ChatArgs, out: &Output) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("tandem-bench-chat-")
        .tempdir()?;
    let dir = tmp.path();
    // Before the nodes start: they inherit it.
    super::sessions::allow_open_files(a.websockets)?;
    let (chat_port, db_port) = (free_port()?, free_port()?);
    std::fs::write(dir.join("topology.toml"), topology(chat_port, db_port))?;
    let d = crate::deployment::Deployment::load(&dir.join("topology.toml"))?;
    let db_node = d
        .topology
        .node("db")
        .expect("in the bench topology")
        .clone();
    let load_seconds = preload(
        &db_node.data_dir.join("databases").join("mgc"),
        a.history_messages,
        out,
    )?;
    out.progress("starting a db node and a chat node…");
    let exe = std::env::current_exe()?;
    let mut nodes = Nodes {
        children: Vec::new(),
    };
    for n in ["db", "chat"] {
        let log = std::fs::File::create(dir.join(format!("{n}.log")))?;
        let mut node = std::process::Command::new(&exe);
        // A bench killed leaves no node behind.
        crate::runbook::dies_with_this_process(&mut node);
        nodes.children.push(
            node.args(["serve", "--node", n, "--topology"])
                .arg(&d.file)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {n}"))?,
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let chat_addr = d
        .topology
        .node("chat")
        .expect("in the bench topology")
        .address
        .clone();
    let client = d.client();
    let token = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        for n in [&db_node.address, &chat_addr] {
            while !client.healthy(n, Duration::from_millis(500)).await {
                if Instant::now() > deadline {
                    bail!("the bench nodes did not start; see {}", dir.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        client
            .call::<serde_json::Value, _>(
                &db_node.address,
                "cms",
                "cms.set_home",
                &json!({ "user": USER, "pool": "pool-s" }),
            )
            .await?;
        let added = client
            .call::<tandem_pool::users::NewUser, _>(
                &db_node.address,
                "users-pool-s",
                "users.add",
                &json!({ "name": USER, "pool": "pool-s", "password": null }),
            )
            .await?;
        Ok(tandem_node::user_token(USER, &added.result.token))
    })?;
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("room-{r}")).collect();
    out.progress(&format!(
        "posting into one room: {} clients, {} s…",
        a.clients, a.seconds
    ));
    let one_room = rt.block_on(throughput(
        &chat_addr,
        &token,
        vec!["room-0".into()],
        a.clients,
        a.seconds,
    ));
    out.progress(&format!(
        "posting into {ROOMS} rooms: {} clients, {} s…",
        a.clients, a.seconds
    ));
    let many_rooms = rt.block_on(throughput(&chat_addr, &token, rooms, a.clients, a.seconds));
    out.progress(&format!(
        "posting at {} posts/s, {} s…",
        a.rate, a.rate_seconds
    ));
    let paced = rt.block_on(paced(&chat_addr, &token, a.rate, a.rate_seconds))?;
    for (what, posts, errors) in [
        ("posting into one room", one_room.posts, one_room.errors),
        (
            "posting into many rooms",
            many_rooms.posts,
            many_rooms.errors,
        ),
        ("posting at a fixed rate", paced.posts, paced.errors),
    ] {
        if posts == 0 {
            bail!(
                "{what}: no post was acknowledged ({errors} failed); the chat node's log ends \
                 with: {}",
                log_tail(&dir.join("chat.log"))
            );
        }
    }
    out.progress("history pages of 100…");
    let history = rt.block_on(history(&chat_addr, &token, a.history_messages))?;
    let memory = Memory {
        posts: one_room.posts + many_rooms.posts + paced.posts,
        chat_node_mb: super::sessions::resident_mb(nodes.children[1].id()),
        db_node_mb: super::sessions::resident_mb(nodes.children[0].id()),
    };
    let sessions = if a.websockets > 0 {
        out.progress(&format!(
            "{} WebSocket sessions on room-0, one post to all of them…",
            a.websockets
        ));
        let chat_pid = nodes.children[1].id();
        Some(rt.block_on(super::sessions::run(
            &chat_addr,
            &token,
            "room-0",
            a.websockets,
            chat_pid,
        ))?)
    } else {
        None
    };
    drop(nodes);
    let report = Report {
        one_room,
        many_rooms,
        paced,
        history,
        memory,
        sessions,
        load_seconds,
    };
    out.emit(&report, || human(&report))
}

/// The last lines of a node's log, for an error that the bench's removed directory would hide.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        return "(nothing)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn human(r: &Report) -> String {
    let t = |name: &str, t: &Throughput| {
        format!(
            "{:<34}{:>10} posts/s   p50 {:.2} ms  p99 {:.2} ms  ({} clients, {} errors)\n",
            name,
            count(t.per_second),
            t.latency.p50_ms,
            t.latency.p99_ms,
            t.clients,
            t.errors
        )
    };
    let mut s =
        String::from("tandem bench chat — HTTP API of one chat node, one db node, no mirror\n\n");
    s.push_str(&t("posts, one room", &r.one_room));
    s.push_str(&t(
        &format!("posts, {} rooms", r.many_rooms.rooms),
        &r.many_rooms,
    ));
    s.push_str(&format!(
        "{:<34}{:>10} posts/s   p50 {:.2} ms  p99 {:.2} ms  (offered {}/s for {} s, max {:.1} ms; target p99 < 10 ms)\n",
        "posts at a fixed rate",
        count(r.paced.achieved_per_second),
        r.paced.latency.p50_ms,
        r.paced.latency.p99_ms,
        count(r.paced.offered_per_second as f64),
        r.paced.seconds,
        r.paced.latency.max_ms
    ));
    s.push_str(&format!(
        "{:<34}{:>10} pages     p50 {:.2} ms  p99 {:.2} ms  (room of {} messages; target p99 < 5 ms)\n",
        "history page of 100",
        r.history.pages,
        r.history.latency.p50_ms,
        r.history.latency.p99_ms,
        count(r.history.room_messages as f64)
    ));
    let mb = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1}"));
    s.push_str(&format!(
        "{:<34}{:>10} MB chat node, {} MB db node, resident after {} posts  (target: db node < 300 MB)\n",
        "memory after the load",
        mb(r.memory.chat_node_mb),
        mb(r.memory.db_node_mb),
        count(r.memory.posts as f64)
    ));
    if let Some(w) = &r.sessions {
        s.push_str(&w.human());
    }
    s.push_str("\ntarget: ≥ 20,000 posts/s\n");
    s
}
