//! Forgetting what is kept only for a time: the keys clients give their posts
//! (`Idempotency-Key`), kept `tandem_chat::POST_KEY_KEPT_MS` after their message. The node
//! holding the chat database's primary forgets the older ones every `EXPIRE_EVERY`, at most
//! `POST_KEYS_EXPIRED_MAX` in a transaction, posts committing between them; the deletes reach
//! every copy through the journal. Without it the keys grew with every keyed post for good.

use crate::db_host::{Kind, kind_of};
use crate::server::NodeState;
use std::time::Duration;
use tandem_chat::{POST_KEY_KEPT_MS, POST_KEYS_EXPIRED_MAX, expire_post_keys};
use tandem_store::Role;

const EXPIRE_EVERY: Duration = Duration::from_secs(60);

pub(crate) fn start(node: &crate::server::Shared) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(std::sync::Arc::downgrade(node)))
}

async fn run(node: std::sync::Weak<NodeState>) {
    loop {
        tokio::time::sleep(EXPIRE_EVERY).await;
        let Some(names) = node.upgrade().map(|n| n.host.names()) else {
            return;
        };
        for name in names.into_iter().filter(|n| kind_of(n) == Kind::Chat) {
            let Some(db) = node.upgrade().and_then(|n| n.host.get(&name)) else {
                continue;
            };
            if db.identity().role != Role::Primary {
                continue;
            }
            let before = crate::log_shipping::now_ms() - POST_KEY_KEPT_MS;
            let mut forgotten = 0;
            loop {
                let d = db.clone();
                let r = crate::mirroring::blocking(move || {
                    expire_post_keys(&d, before).map_err(|e| e.to_string())
                })
                .await;
                match r {
                    Ok(n) => {
                        forgotten += n;
                        if n < POST_KEYS_EXPIRED_MAX {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(database = %name, error = %e, "forgetting old post keys failed; tried again in a minute");
                        break;
                    }
                }
            }
            if forgotten > 0 {
                tracing::info!(database = %name, forgotten, "old post keys forgotten");
            }
        }
    }
}
