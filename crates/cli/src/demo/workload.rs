//! The demo's clients and its check: concurrent clients posting into one room, each recording
//! every post acknowledged (id, LSN, text, through which chat server, when) and every attempt
//! that was not; the room's history read back; acknowledged posts compared with it.
//!
//! A client knows the chat servers of both sites and posts through one; after an attempt that
//! was not acknowledged it tries the next (as a real client would be redirected): it finds the
//! active server whichever site it is in.

use super::{Clock, ms};
use anyhow::{Context, bail};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tandem_node::{ClientError, Method, UserApi};

/// Each client sends at most one post per interval: a steady load (≤ 100 posts/s per client)
/// that measures the gaps, without saturating the machine the nodes share.
const POST_INTERVAL_MS: u64 = 10;
/// A client's pause after a post that was not acknowledged.
pub(crate) const RETRY_PAUSE_MS: u64 = 50;
/// Posts one client sends at most.
const POSTS_PER_CLIENT_MAX: u64 = 200_000;
/// How long stopping the clients may take (each finishes the post it is sending).
const WORKLOAD_STOP_TIMEOUT_MS: u64 = tandem_node::REQUEST_TIMEOUT_MS + 5_000;
/// Attempts at one history page before the check gives up.
const PAGE_ATTEMPTS_MAX: u32 = 5;
/// History pages read at most (of `HISTORY_LIMIT_MAX` events each).
const HISTORY_PAGES_MAX: u64 = 100_000;

/// One acknowledged post.
#[derive(Clone, Debug)]
pub(crate) struct Ack {
    pub(crate) id: i64,
    /// The LSN its transaction committed at (the 201 answer says it).
    pub(crate) lsn: u64,
    pub(crate) text: String,
    /// Index of the chat server that acknowledged it, in the workload's server list.
    pub(crate) server: usize,
    /// When it was sent and acknowledged (ms since the demo began).
    pub(crate) sent_ms: u64,
    pub(crate) acked_ms: u64,
}

/// One attempt that was not acknowledged.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) text: String,
    pub(crate) reason: String,
}

#[derive(Default)]
pub(crate) struct Log {
    pub(crate) acks: Vec<Ack>,
    pub(crate) failures: Vec<Failure>,
}

/// What the clients share with the stages.
pub(crate) struct Progress {
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Posts acknowledged through each server.
    acked_by: Vec<AtomicU64>,
    /// Set by `mark`: a post sent at or after this time (ms) counts for `first_after_ms`.
    /// `u64::MAX` before.
    boundary_ms: AtomicU64,
    /// Per server, the earliest acknowledgment (ms) of a post sent after `boundary_ms`;
    /// `u64::MAX` before.
    first_after_ms: Vec<AtomicU64>,
    /// Everything recorded so far (the stages look at it while the clients post).
    log: Mutex<Log>,
}

impl Progress {
    /// From now on (`now_ms`), the first post acknowledged through each server is recorded.
    pub(crate) fn mark(&self, now_ms: u64) {
        self.boundary_ms.store(u64::MAX, Ordering::SeqCst);
        for f in &self.first_after_ms {
            f.store(u64::MAX, Ordering::SeqCst);
        }
        self.boundary_ms.store(now_ms, Ordering::SeqCst);
    }

    /// When the first post sent after the last `mark` was acknowledged through `server`.
    pub(crate) fn first_after(&self, server: usize) -> Option<u64> {
        match self.first_after_ms[server].load(Ordering::SeqCst) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    pub(crate) fn acked_by(&self, server: usize) -> u64 {
        self.acked_by[server].load(Ordering::SeqCst)
    }

    /// The posts acknowledged so far.
    pub(crate) fn acks(&self) -> Vec<Ack> {
        self.log.lock().expect("log").acks.clone()
    }
}

pub(crate) struct Workload {
    pub(crate) progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Waits up to `first_post_timeout_ms` for a first acknowledged post (`what` names it in
    /// the error), then until `warmup_ms` have passed since the call: the load is steady.
    pub(crate) async fn warm_up(
        &self,
        what: &str,
        first_post_timeout_ms: u64,
        warmup_ms: u64,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        super::until(what, first_post_timeout_ms, async || {
            match self.progress.acked.load(Ordering::SeqCst) {
                0 => Err(format!(
                    "{} attempts failed",
                    self.progress.failed.load(Ordering::SeqCst)
                )),
                n => Ok(n),
            }
        })
        .await?;
        tokio::time::sleep(ms(warmup_ms).saturating_sub(started.elapsed())).await;
        Ok(())
    }

    /// One task per entry of `clients`, client k posting "{prefix}k-1", "{prefix}k-2", … into
    /// `room`; each entry holds the client's API at every server (the same order for all).
    pub(crate) fn start(
        room: &str,
        prefix: &str,
        clients: Vec<Vec<UserApi>>,
        clock: Clock,
    ) -> Workload {
        let servers = clients.first().map(|c| c.len()).unwrap_or(0);
        assert!(servers > 0 && clients.iter().all(|c| c.len() == servers));
        let progress = Arc::new(Progress {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            acked_by: (0..servers).map(|_| AtomicU64::new(0)).collect(),
            boundary_ms: AtomicU64::new(u64::MAX),
            first_after_ms: (0..servers).map(|_| AtomicU64::new(u64::MAX)).collect(),
            log: Mutex::new(Log::default()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(k, apis)| {
                tokio::spawn(post_loop(
                    format!("{prefix}{k}"),
                    format!("/api/v1/rooms/{room}/messages"),
                    apis,
                    clock,
                    progress.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Workload {
            progress,
            stop,
            tasks,
        }
    }

    /// Stops the clients (each finishes the post it is sending); what they recorded.
    pub(crate) async fn stop(self) -> anyhow::Result<Log> {
        self.stop.store(true, Ordering::SeqCst);
        let joined = tokio::time::timeout(
            ms(WORKLOAD_STOP_TIMEOUT_MS),
            futures_util::future::join_all(self.tasks),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!("the clients did not stop within {WORKLOAD_STOP_TIMEOUT_MS} ms")
        })?;
        for j in joined {
            j.context("a client task failed")?;
        }
        let mut log = self.progress.log.lock().expect("log");
        Ok(std::mem::take(&mut *log))
    }
}

async fn post_loop(
    name: String,
    path: String,
    apis: Vec<UserApi>,
    clock: Clock,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) {
    let mut at = 0;
    for i in 1..=POSTS_PER_CLIENT_MAX {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let text = format!("{name}-{i}");
        let began = Instant::now();
        let sent_ms = clock.ms();
        let answer = apis[at]
            .request(Method::POST, &path, Some(&json!({ "text": text })))
            .await;
        let acked_ms = clock.ms();
        let posted = match answer {
            Ok(v) => match (v["id"].as_i64(), v["lsn"].as_u64()) {
                (Some(id), Some(lsn)) => Ok((id, lsn)),
                _ => Err(format!("201 without an id and an LSN: {v}")),
            },
            Err(e) => Err(reason(&e)),
        };
        match posted {
            Ok((id, lsn)) => {
                progress.acked.fetch_add(1, Ordering::SeqCst);
                progress.acked_by[at].fetch_add(1, Ordering::SeqCst);
                if sent_ms >= progress.boundary_ms.load(Ordering::SeqCst) {
                    progress.first_after_ms[at].fetch_min(acked_ms, Ordering::SeqCst);
                }
                progress.log.lock().expect("log").acks.push(Ack {
                    id,
                    lsn,
                    text,
                    server: at,
                    sent_ms,
                    acked_ms,
                });
                tokio::time::sleep(ms(POST_INTERVAL_MS).saturating_sub(began.elapsed())).await;
            }
            Err(reason) => {
                progress.failed.fetch_add(1, Ordering::SeqCst);
                progress
                    .log
                    .lock()
                    .expect("log")
                    .failures
                    .push(Failure { text, reason });
                // The next attempt goes to the next server: this one may be down or inactive.
                at = (at + 1) % apis.len();
                tokio::time::sleep(ms(RETRY_PAUSE_MS)).await;
            }
        }
    }
}

/// Why a post was not acknowledged, in few enough words to count them by.
fn reason(e: &ClientError) -> String {
    match e {
        ClientError::Unreachable { sent: false, .. } => "not sent (no connection)".into(),
        ClientError::Unreachable { sent: true, .. } => "no answer".into(),
        ClientError::Api { status, body } => format!("HTTP {status} {}", body.code),
        other => other.to_string(),
    }
}

/// A room's events, read back in pages from the first.
pub(crate) struct History {
    pub(crate) events: u64,
    /// Message id → text.
    pub(crate) messages: HashMap<i64, String>,
}

pub(crate) async fn read_history(api: &UserApi, room: &str) -> anyhow::Result<History> {
    let limit = tandem_chat::HISTORY_LIMIT_MAX;
    let mut history = History {
        events: 0,
        messages: HashMap::new(),
    };
    let mut after = 0i64;
    for _ in 0..HISTORY_PAGES_MAX {
        let path = format!("/api/v1/rooms/{room}/messages?after={after}&limit={limit}");
        let mut attempt = 0;
        let page = loop {
            attempt += 1;
            match api.request(Method::GET, &path, None).await {
                Ok(p) => break p,
                Err(e) if attempt < PAGE_ATTEMPTS_MAX => {
                    tracing::debug!("history page after {after}: {e}; again");
                    tokio::time::sleep(ms(RETRY_PAUSE_MS * 4)).await;
                }
                Err(e) => return Err(e).context(format!("reading room {room} after id {after}")),
            }
        };
        let events = page["events"]
            .as_array()
            .with_context(|| format!("a history page without events: {page}"))?;
        for e in events {
            let id = e["id"].as_i64().context("an event without an id")?;
            if id <= after {
                bail!("the history page after id {after} holds id {id}: pages overlap");
            }
            after = id;
            history.events += 1;
            if e["kind"] == "message" {
                let text = e["text"].as_str().unwrap_or_default().to_string();
                history.messages.insert(id, text);
            }
        }
        if page["more"] != true {
            return Ok(history);
        }
    }
    bail!("room {room} holds more than {HISTORY_PAGES_MAX} pages of events")
}

#[derive(Debug, PartialEq)]
pub(crate) struct Check {
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) failed_but_stored: u64,
}

/// Every post of `acks` must be in the history under its id with its text, and its text there
/// once; failed attempts may be there or not (their answer was lost, not their commit).
pub(crate) fn check<'a>(
    acks: impl IntoIterator<Item = &'a Ack>,
    failures: &[Failure],
    history: &History,
) -> Check {
    let texts = texts(history);
    let (mut lost, mut duplicated) = (0, 0);
    for a in acks {
        if history.messages.get(&a.id) != Some(&a.text) {
            lost += 1;
        }
        if texts.get(a.text.as_str()).copied().unwrap_or(0) > 1 {
            duplicated += 1;
        }
    }
    let failed_but_stored = failures
        .iter()
        .filter(|f| texts.contains_key(f.text.as_str()))
        .count() as u64;
    Check {
        lost,
        duplicated,
        failed_but_stored,
    }
}

/// How many times each text is in the history.
pub(crate) fn texts(history: &History) -> HashMap<&str, u32> {
    let mut texts: HashMap<&str, u32> = HashMap::new();
    for t in history.messages.values() {
        *texts.entry(t.as_str()).or_insert(0) += 1;
    }
    texts
}

/// The longest time between two consecutive acknowledgments, and when it began (ms).
pub(crate) fn longest_gap(acks: &[Ack]) -> (u64, u64) {
    let mut times: Vec<u64> = acks.iter().map(|a| a.acked_ms).collect();
    times.sort_unstable();
    times
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ack(id: i64, text: &str, acked_ms: u64) -> Ack {
        Ack {
            id,
            lsn: id as u64,
            text: text.into(),
            server: 0,
            sent_ms: acked_ms,
            acked_ms,
        }
    }

    fn history(messages: &[(i64, &str)]) -> History {
        History {
            events: messages.len() as u64,
            messages: messages.iter().map(|(i, t)| (*i, t.to_string())).collect(),
        }
    }

    #[test]
    fn the_check_finds_lost_changed_and_duplicated_posts() {
        let acks = vec![ack(3, "c0-1", 10), ack(4, "c1-1", 11), ack(6, "c0-2", 20)];
        let failures = vec![
            Failure {
                text: "c1-2".into(),
                reason: "no answer".into(),
            },
            Failure {
                text: "c1-3".into(),
                reason: "no answer".into(),
            },
        ];
        let all = history(&[(3, "c0-1"), (4, "c1-1"), (5, "c1-2"), (6, "c0-2")]);
        assert_eq!(
            check(&acks, &failures, &all),
            Check {
                lost: 0,
                duplicated: 0,
                failed_but_stored: 1
            }
        );
        // Missing, under another text, twice.
        let bad = history(&[(3, "c0-1"), (4, "c0-1"), (7, "c0-2")]);
        assert_eq!(
            check(&acks, &failures, &bad),
            Check {
                lost: 2,
                duplicated: 1,
                failed_but_stored: 0
            }
        );
    }

    #[test]
    fn the_longest_gap_is_between_acknowledgments_in_time_order() {
        let acks = [
            ack(1, "a", 100),
            ack(2, "b", 2_500),
            ack(3, "c", 120),
            ack(4, "d", 2_600),
        ];
        assert_eq!(longest_gap(&acks), (2_380, 120));
        assert_eq!(longest_gap(&[]), (0, 0));
    }

    #[test]
    fn a_mark_restarts_the_first_acknowledgment_after_it() {
        let w = Progress {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            acked_by: vec![AtomicU64::new(0), AtomicU64::new(0)],
            boundary_ms: AtomicU64::new(u64::MAX),
            first_after_ms: vec![AtomicU64::new(5), AtomicU64::new(u64::MAX)],
            log: Mutex::new(Log::default()),
        };
        assert_eq!(w.first_after(0), Some(5));
        w.mark(100);
        assert_eq!(w.first_after(0), None);
        assert_eq!(w.boundary_ms.load(Ordering::SeqCst), 100);
    }
}
