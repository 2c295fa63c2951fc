//! What a node says about itself: `GET /internal/v1/status`, read by `tandem status`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub site: String,
    pub roles: Vec<String>,
    pub version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub databases: Vec<DatabaseStatus>,
    pub cms: Option<CmsView>,
    /// On a witness: what it holds for each mirrored database.
    #[serde(default)]
    pub witness: Option<Vec<crate::witness::WitnessRecord>>,
    /// Conditions of the node itself an operator should know about (its copies have their own).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One database copy the topology places on this node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatabaseStatus {
    pub database: String,
    /// The role the topology gives this copy (primary, mirror, backup, …).
    pub placement: String,
    /// Whether the copy exists and is open here.
    pub open: bool,
    /// The copy's own role, epoch and position, when open.
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub lsn: Option<u64>,
    pub durable_lsn: Option<u64>,
    /// The copy's followers (the chat's search index): the LSN up to which each holds every
    /// acknowledged record.
    #[serde(default)]
    pub followers: std::collections::BTreeMap<String, u64>,
    pub warnings: Vec<String>,
    /// Why the copy refuses new writes for now (a planned failover pauses its primary).
    #[serde(default)]
    pub paused: Option<String>,
    /// The copy's mirroring, when it is mirrored.
    #[serde(default)]
    pub mirroring: Option<crate::mirroring::LinkStatus>,
    /// On a standby: the primary it follows and how far behind it is.
    #[serde(default)]
    pub standby: Option<crate::standby::StandbyStatus>,
    /// On a primary: the standbys (in other sites) that pull from it.
    #[serde(default)]
    pub replicas: Vec<crate::standby::ReplicaSeen>,
    /// Commit time of the copy's last record (ms since the Unix epoch).
    #[serde(default)]
    pub last_time_ms: Option<i64>,
    /// The copy's log-shipping jobs on this node (backup on the primary; copy and restore on
    /// the secondary), when it runs any.
    #[serde(default)]
    pub log_shipping: Option<crate::log_shipping::CopyJobs>,
}

/// The node's copy of the CMS: where it came from and how fresh it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CmsView {
    /// `live` (followed from the CMS master), or `local` (read from this node's own snapshot
    /// file because the CMS has not answered since the node started).
    pub source: String,
    pub lsn: u64,
    pub epoch: u64,
    /// Time since the CMS last answered, if it ever did since start.
    pub last_heard_ms: Option<u64>,
    pub chat_state: Option<String>,
    pub chat_active: Vec<String>,
}
