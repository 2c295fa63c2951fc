//! tandem's deployment description, `topology.toml` (DESIGN.md §3): sites, nodes and their roles,
//! front-end pools and their pairs, the persistent chat pool, the Central Management Store, the
//! witnesses, the share and the cluster secret.
//!
//! [`Topology::load`] / [`Topology::parse`] read the file and check every rule of a deployment;
//! a refused file gets a [`TopologyError`] that names the file, the line of the offending value,
//! and the rule it breaks. A [`Topology`] that exists has passed them all. [`example`] is the
//! two-site deployment `tandem init` writes.
//!
//! No networking, no processes, no store: this crate only describes.

#![warn(missing_docs)]

mod error;
mod example;
mod file;
mod placement;
mod topology;
mod validate;

pub use error::TopologyError;
pub use example::example;
pub use placement::{DATABASE_CMS, DATABASE_MGC, DATABASE_MGCCOMP, Placement, PlacementRole};
pub use topology::{
    CHAT_ACTIVE_MAX, CHAT_SERVERS_MAX, CHAT_SESSION_PING_MS_DEFAULT, CHAT_SESSION_PING_MS_MAX,
    CHAT_SESSION_PING_MS_MIN, CHAT_SESSION_SILENT_PINGS, ChatPool, Cms,
    MIRROR_JOURNAL_RECORDS_DEFAULT, MIRROR_JOURNAL_RECORDS_MIN, MirroringSettings, Node, Pool,
    Role, TOPOLOGY_BYTES_MAX, Topology,
};
