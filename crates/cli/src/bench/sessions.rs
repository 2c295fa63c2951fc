//! `bench chat`'s last part: WebSocket sessions of live room events, opened on the chat node
//! all at once, to measure its resident memory with them (DESIGN.md §8: 10,000 sessions under
//! 500 MB) and how long one post takes to reach every one of them.

use super::Latency;
use crate::output::count;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// Sessions opening at the same time.
const OPENING_AT_ONCE: usize = 64;
/// How long opening every session, or the post's reaching every one, may take.
const DEADLINE: Duration = Duration::from_secs(120);
/// Open files this process and the chat node need beside their sessions' sockets.
const FILES_BESIDE_SESSIONS: u64 = 1_000;

#[derive(Serialize)]
pub(super) struct Sessions {
    sessions: u64,
    room: String,
    /// The chat node's resident memory (`VmRSS`) before the sessions opened, and with all of
    /// them open after the post reached them (None where /proc is not there to read).
    chat_node_rss_before_mb: Option<f64>,
    chat_node_rss_mb: Option<f64>,
    /// Opening them all, each until its `ready`.
    open_seconds: f64,
    /// From one post's send to its event on each session.
    fanout: Latency,
}

impl Sessions {
    /// The line of `bench chat`'s report.
    pub(super) fn human(&self) -> String {
        let mb = |m: Option<f64>| m.map_or("?".into(), |m| format!("{m:.1}"));
        format!(
            "{:<34}{:>10} open      chat node {} MB resident ({} MB before; opened in {:.1} s); one post reached all: p50 {:.2} ms, max {:.2} ms  (target < 500 MB)\n",
            "WebSocket sessions",
            count(self.sessions as f64),
            mb(self.chat_node_rss_mb),
            mb(self.chat_node_rss_before_mb),
            self.open_seconds,
            self.fanout.p50_ms,
            self.fanout.max_ms
        )
    }
}

/// Lets this process (and the nodes it starts next, which inherit it) open what `sessions`
/// WebSocket sessions need: the soft limit on open files is raised to the hard one, which must
/// be enough. Call it before the nodes start.
pub(super) fn allow_open_files(sessions: u64) -> anyhow::Result<()> {
    if sessions == 0 {
        return Ok(());
    }
    let needed = sessions + FILES_BESIDE_SESSIONS;
    let limit =
        crate::deployment::raise_open_files().context("cannot raise the limit on open files")?;
    if limit < needed {
        bail!(
            "--websockets {sessions} needs {needed} open files in this process and in the chat \
             node, and this process may open at most {limit} (ulimit -Hn): give fewer sessions, \
             or raise the limit"
        );
    }
    Ok(())
}

/// A process's resident memory in MB, from `/proc/PID/status`.
pub(super) fn resident_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Opens `n` sessions on `room` through the chat node at `addr` (its process `pid`), posts one
/// message, waits until every session has it, reads the node's memory, and closes them all.
pub(super) async fn run(
    addr: &str,
    token: &str,
    room: &str,
    n: u64,
    pid: u32,
) -> anyhow::Result<Sessions> {
    let rss_before = resident_mb(pid);
    let url = format!("ws://{addr}/api/v1/events?rooms={room}&token={token}");
    let marker = format!("reaches every session {:016x}", rand_u64());
    let (stop_tx, stop) = watch::channel(false);
    // Each session says when the post reached it, or why it ended first.
    let (got_tx, mut got) = mpsc::unbounded_channel::<Result<Instant, String>>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..n {
        if opening.len() >= OPENING_AT_ONCE {
            let ws = open_one(&mut opening, started).await?;
            tasks.push(listen(ws, &marker, &stop, &got_tx));
        }
        let url = url.clone();
        opening.spawn(async move {
            open(&url)
                .await
                .with_context(|| format!("session {} of {n}", i + 1))
        });
    }
    while !opening.is_empty() {
        let ws = open_one(&mut opening, started).await?;
        tasks.push(listen(ws, &marker, &stop, &got_tx));
    }
    let open_seconds = started.elapsed().as_secs_f64();

    let mut poster = super::chat::RawPoster::connect(addr, token).await?;
    let sent = Instant::now();
    let status = poster.post(room, &marker).await?;
    if status != 201 {
        bail!("the post meant to reach every session was refused: HTTP {status}");
    }
    let mut samples = Vec::with_capacity(n as usize);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while (samples.len() as u64) < n {
        match tokio::time::timeout_at(deadline, got.recv()).await {
            Ok(Some(Ok(at))) => {
                samples.push(at.saturating_duration_since(sent).as_micros() as u32);
            }
            Ok(Some(Err(why))) => bail!(
                "a session ended before the post reached it ({} of {n} had it): {why}",
                samples.len()
            ),
            Ok(None) | Err(_) => bail!(
                "the post reached {} of {n} sessions within {} s",
                samples.len(),
                DEADLINE.as_secs()
            ),
        }
    }
    let rss = resident_mb(pid);
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.context("a session's task")??;
    }
    Ok(Sessions {
        sessions: n,
        room: room.to_string(),
        chat_node_rss_before_mb: rss_before,
        chat_node_rss_mb: rss,
        open_seconds,
        fanout: Latency::of(samples),
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Waits for one of the sessions being opened; fails when the whole opening is late.
async fn open_one(
    opening: &mut tokio::task::JoinSet<anyhow::Result<Ws>>,
    started: Instant,
) -> anyhow::Result<Ws> {
    let left = DEADLINE.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, opening.join_next()).await {
        Ok(Some(ws)) => ws.context("a session's opening task")?,
        Ok(None) => bail!("no session was being opened"),
        Err(_) => bail!(
            "the sessions were not all open within {} s",
            DEADLINE.as_secs()
        ),
    }
}

/// Connects and reads up to the session's `ready`: from then on it gets every new event.
async fn open(url: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("the WebSocket was refused")?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t)?;
                if v["type"] == "ready" {
                    return Ok(ws);
                }
            }
            Some(Ok(Message::Close(f))) => bail!("the chat node closed the session: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the session ended before it was ready"),
        }
    }
}

/// A session's task: reports when the marked post's event arrives, then reads on until told
/// to stop, and closes.
fn listen(
    mut ws: Ws,
    marker: &str,
    stop: &watch::Receiver<bool>,
    got: &mpsc::UnboundedSender<Result<Instant, String>>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (marker, mut stop, got) = (marker.to_string(), stop.clone(), got.clone());
    tokio::spawn(async move {
        let mut seen = false;
        let ended = loop {
            tokio::select! {
                _ = stop.changed() => break None,
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if !seen && t.contains(&marker) {
                            seen = true;
                            let _ = got.send(Ok(Instant::now()));
                        }
                    }
                    Some(Ok(Message::Close(f))) => break Some(format!("the chat node closed it: {f:?}")),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some("its connection ended".to_string()),
                }
            }
        };
        match ended {
            None => {
                let _ = ws.send(Message::Close(None)).await;
                Ok(())
            }
            Some(why) => {
                let _ = got.send(Err(why.clone()));
                bail!("a session ended while it was expected open: {why}")
            }
        }
    })
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random bytes");
    u64::from_le_bytes(b)
}
