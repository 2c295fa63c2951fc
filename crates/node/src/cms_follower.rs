//! Every node follows the CMS: it polls the node holding the writable CMS copy, keeps the last
//! snapshot in memory and in `DATA/cms-snapshot.json`, and starts from that file when the CMS
//! does not answer — so a node comes up with the last configuration it knew.

use crate::status::CmsView;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tandem_pool::cms::CmsSnapshot;

/// How often a node asks the CMS for changes (a change reaches every node within about this).
pub(crate) const CMS_FOLLOW_INTERVAL_MS: u64 = 300;
/// Deadline of one snapshot request.
pub(crate) const CMS_REQUEST_TIMEOUT_MS: u64 = 1_000;
const SNAPSHOT_FILE: &str = "cms-snapshot.json";

struct State {
    snapshot: Option<CmsSnapshot>,
    live: bool,
    last_heard: Option<Instant>,
}

pub(crate) struct CmsFollower {
    file: PathBuf,
    state: RwLock<State>,
    /// Counts the newer snapshots heard: what was checked against the CMS (a token's user and
    /// home) holds while it has not moved.
    changes: AtomicU64,
}

impl CmsFollower {
    /// Starts from the snapshot file in `data_dir`, if there is one.
    pub(crate) fn load(data_dir: &Path) -> CmsFollower {
        let file = data_dir.join(SNAPSHOT_FILE);
        let snapshot = std::fs::read(&file)
            .ok()
            .and_then(|b| match serde_json::from_slice::<CmsSnapshot>(&b) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "unreadable local CMS snapshot; ignored");
                    None
                }
            });
        if let Some(s) = &snapshot {
            tracing::info!(
                lsn = s.lsn,
                epoch = s.epoch,
                "starting from the local CMS snapshot"
            );
        }
        CmsFollower {
            file,
            state: RwLock::new(State {
                snapshot,
                live: false,
                last_heard: None,
            }),
            changes: AtomicU64::new(0),
        }
    }

    /// The chat pool's configuration alone (cheaper than the whole snapshot).
    pub(crate) fn chat(&self) -> Option<tandem_pool::cms::ChatConfig> {
        self.state
            .read()
            .expect("cms state")
            .snapshot
            .as_ref()
            .and_then(|s| s.chat.clone())
    }

    /// The pool `user` is homed on, per the snapshot.
    pub(crate) fn home_of(&self, user: &str) -> Option<String> {
        self.state
            .read()
            .expect("cms state")
            .snapshot
            .as_ref()
            .and_then(|s| s.homes.get(user).cloned())
    }

    /// How many newer snapshots this node has heard: it moves with every change of the CMS
    /// (an operator's: users added or removed, the chat pool's state or active servers).
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    pub(crate) fn has_snapshot(&self) -> bool {
        self.state.read().expect("cms state").snapshot.is_some()
    }

    /// Records a snapshot just read from the CMS; persists it when it is new. Never goes back
    /// to an older snapshot of the same copy.
    pub(crate) fn heard(&self, s: CmsSnapshot) {
        let changed = {
            let mut st = self.state.write().expect("cms state");
            st.live = true;
            st.last_heard = Some(Instant::now());
            let newer = match &st.snapshot {
                None => true,
                Some(old) => {
                    old.database_id != s.database_id || (s.epoch, s.lsn) > (old.epoch, old.lsn)
                }
            };
            if newer {
                st.snapshot = Some(s.clone());
                self.changes.fetch_add(1, Ordering::SeqCst);
            }
            newer
        };
        if changed {
            tracing::info!(lsn = s.lsn, epoch = s.epoch, "CMS snapshot updated");
            if let Err(e) = self.persist(&s) {
                tracing::warn!(file = %self.file.display(), error = %e, "cannot save the CMS snapshot");
            }
        }
    }

    fn persist(&self, s: &CmsSnapshot) -> std::io::Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(s).expect("snapshot serializes"),
        )?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.file)
    }

    pub(crate) fn view(&self) -> Option<CmsView> {
        let st = self.state.read().expect("cms state");
        let s = st.snapshot.as_ref()?;
        Some(CmsView {
            source: if st.live { "live" } else { "local" }.to_string(),
            lsn: s.lsn,
            epoch: s.epoch,
            last_heard_ms: st.last_heard.map(|t| t.elapsed().as_millis() as u64),
            chat_state: s.chat.as_ref().map(|c| c.state.as_str().to_string()),
            chat_active: s
                .chat
                .as_ref()
                .map(|c| c.active.clone())
                .unwrap_or_default(),
        })
    }
}
