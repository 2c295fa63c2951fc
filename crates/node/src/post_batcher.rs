//! A chat node's posts to the chat database, batched: requests wait in a queue; a few sender
//! tasks each take what is queued (up to `POST_BATCH_MAX`) and send it as one `chat.post_batch`
//! call, which the db node commits as one group. While a batch is in flight the next one grows,
//! so batches follow the load the way group commit does.

use crate::chat_api::Raw;
use crate::chat_procedures::{POST_BATCH_MAX, Post};
use crate::error::{ApiError, ErrorBody};
use crate::server::NodeState;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Weak};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Batches in flight at once per chat node (bench chat: 4 gave p99 10–13 ms at 5,000 posts/s,
/// 8 gives 7–9 ms: at moderate load a post waits less for a free sender).
const SENDERS: usize = 8;
/// Posts waiting at most; a post past it waits for room.
const QUEUED_POSTS_MAX: usize = 8_192;

type Reply = oneshot::Sender<Result<Raw, ApiError>>;

pub(crate) struct PostBatcher {
    queue: mpsc::Sender<(Post, Reply)>,
}

impl PostBatcher {
    /// Starts the senders; they stop when the node (its last strong reference) goes.
    pub(crate) fn start(node: Weak<NodeState>) -> PostBatcher {
        let (queue, rx) = mpsc::channel(QUEUED_POSTS_MAX);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..SENDERS {
            tokio::spawn(sender(node.clone(), rx.clone()));
        }
        PostBatcher { queue }
    }

    /// Posts through the next batch; the answer is this post's own (its event's JSON, or its
    /// error).
    pub(crate) async fn post(&self, post: Post) -> Result<Raw, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((post, tx))
            .await
            .map_err(|_| ApiError::unavailable("the node is stopping"))?;
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::unavailable(
                "the post was dropped: the node is stopping",
            ))
        })
    }
}

/// A batch's posts at most, as the db node reads them: its request body is bounded
/// (`REQUEST_BYTES_MAX`), and 512 posts of 8 KiB would be four times that — every post of the
/// batch refused, 413, for a body no client sent (by hand: 1,231 of 1,500 concurrent 8 KB posts).
const BATCH_BYTES_MAX: usize = crate::server::REQUEST_BYTES_MAX / 2;

/// The most bytes a post takes in a batch's JSON: its strings, each byte that JSON escapes
/// counted as the six of `\u00XX`, and the field names and punctuation.
fn encoded_bytes_max(p: &Post) -> usize {
    let escaped = |s: &str| {
        s.len()
            + 5 * s
                .bytes()
                .filter(|&b| b < 0x20 || b == b'"' || b == b'\\')
                .count()
    };
    let key = p.key.as_deref().map_or(0, escaped);
    escaped(&p.text) + escaped(&p.user) + escaped(&p.room) + key + 128
}

async fn sender(node: Weak<NodeState>, rx: Arc<Mutex<mpsc::Receiver<(Post, Reply)>>>) {
    // A post that did not fit in the last batch: the first of the next.
    let mut carried: Option<(Post, Reply)> = None;
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            match carried.take() {
                Some(first) => batch.push(first),
                None => match rx.recv().await {
                    Some(first) => batch.push(first),
                    None => return,
                },
            }
            let mut bytes = encoded_bytes_max(&batch[0].0);
            while batch.len() < POST_BATCH_MAX {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += encoded_bytes_max(&p.0);
                        if bytes > BATCH_BYTES_MAX {
                            carried = Some(p);
                            break;
                        }
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
        }
        let Some(node) = node.upgrade() else { return };
        let (posts, replies): (Vec<Post>, Vec<Reply>) = batch.into_iter().unzip();
        match send(&node, &posts).await {
            Ok(items) if items.len() == replies.len() => {
                for (item, reply) in items.into_iter().zip(replies) {
                    let _ = reply.send(answer(item));
                }
            }
            Ok(items) => {
                let msg = format!(
                    "the chat database answered {} results for {} posts",
                    items.len(),
                    replies.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(ApiError::unavailable(msg.clone())));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(ApiError::new(e.status, e.code, e.message.clone())));
                }
            }
        }
    }
}

#[derive(Serialize)]
struct PostBatch<'a> {
    posts: &'a [Post],
}

/// One post's answer in a batch's (`chat_procedures`' `BatchItem`): `{"ok": event}` or
/// `{"error": {code, message}, "status": n}`.
#[derive(Deserialize)]
struct BatchItem {
    ok: Option<Raw>,
    error: Option<ErrorBody>,
    status: Option<u16>,
}

async fn send(node: &NodeState, posts: &[Post]) -> Result<Vec<BatchItem>, ApiError> {
    crate::chat_api::mgc(node, "chat.post_batch", PostBatch { posts }).await
}

fn answer(item: BatchItem) -> Result<Raw, ApiError> {
    if let Some(ok) = item.ok {
        return Ok(ok);
    }
    let error = item.error.unwrap_or(ErrorBody {
        code: String::new(),
        message: "the chat database answered neither an event nor an error".into(),
    });
    Err(ApiError::relayed(item.status.unwrap_or(502), error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat_procedures::BatchItem as Written;
    use axum::http::StatusCode;
    use tandem_chat::{Event, EventKind};

    fn read(item: &Written) -> Result<Raw, ApiError> {
        let text = serde_json::to_string(item).unwrap();
        answer(serde_json::from_str::<BatchItem>(&text).unwrap())
    }

    /// The bound a batch is cut by is never below what the post takes in the batch's JSON:
    /// every byte JSON escapes, quotes, backslashes, any other character.
    #[test]
    fn a_posts_bound_covers_its_json() {
        let texts = [
            "plain words".to_string(),
            "\u{1}\u{1f}\n\t\"\\".repeat(1000),
            "é 👋 مرحبا \u{202e}".repeat(300),
            "x".repeat(8192),
        ];
        for text in texts {
            let post = Post {
                user: "alice".into(),
                room: "lobby".into(),
                text,
                reply_to: Some(i64::MAX),
                key: Some("k\"\u{7}".repeat(20)),
            };
            let alone = serde_json::to_vec(&PostBatch {
                posts: std::slice::from_ref(&post),
            })
            .unwrap()
            .len();
            assert!(alone <= encoded_bytes_max(&post), "{alone} bytes");
        }
        // 8 KiB posts: a batch of them stays within half the request bound.
        let post = Post {
            user: "alice".into(),
            room: "lobby".into(),
            text: "x".repeat(8192),
            reply_to: None,
            key: None,
        };
        assert!(BATCH_BYTES_MAX / encoded_bytes_max(&post) >= 60);
    }

    #[test]
    fn a_batch_answer_gives_each_post_its_event_text_or_its_error() {
        let event = Event {
            id: 7,
            room: "lobby".into(),
            kind: EventKind::Message,
            sender: "alice".into(),
            time_ms: 1_700_000_000_000,
            text: "hi \"there\" é".into(),
            subject: None,
            reply_to: Some(3),
            lsn: 42,
        };
        let ok = read(&Written::Ok { ok: event.clone() }).unwrap();
        assert_eq!(ok.get(), serde_json::to_string(&event).unwrap());

        let refused = read(&Written::Err {
            error: ErrorBody {
                code: "forbidden".into(),
                message: "bob is not a member of lobby".into(),
            },
            status: 403,
        })
        .unwrap_err();
        assert_eq!(
            (refused.status, refused.code, refused.message.as_str()),
            (
                StatusCode::FORBIDDEN,
                "forbidden",
                "bob is not a member of lobby"
            )
        );

        let unknown = read(&Written::Err {
            error: ErrorBody {
                code: "teapot".into(),
                message: "?".into(),
            },
            status: 1000,
        })
        .unwrap_err();
        assert_eq!(
            (unknown.status, unknown.code),
            (StatusCode::BAD_GATEWAY, "upstream")
        );
    }
}
