//! A tandem node: one `tandem serve` process with the roles the topology gives it (DESIGN.md
//! §3). It serves `/health`, `/metrics`, the internal API (cluster secret required) that nodes
//! and the CLI use, and the users' API on frontends. Databases are the store's; what they mean
//! is the domain crates'; this crate only hosts and transports.

mod auth;
mod chat_api;
mod chat_feed;
mod chat_procedures;
mod client;
mod cms_follower;
mod db_host;
mod db_ops;
mod epoch_mark;
mod error;
mod expiry;
mod frontend;
mod http_serve;
mod json_body;
pub mod locator;
pub mod log_shipping;
mod metrics;
pub mod mirroring;
pub mod offline_recovery;
mod openapi;
mod post_batcher;
mod procedures;
mod scrub;
mod server;
mod sign_in;
pub mod standby;
mod status;
pub mod witness;

pub use client::{
    CallAnswer, Client, ClientError, CopyRole, NO_ANSWER, NODE_HEADER, REQUEST_TIMEOUT_MS,
    SECRET_HEADER, UserApi,
};
pub use error::ErrorBody;
pub use frontend::user_token;
pub use openapi::document_value as openapi_document;
pub use reqwest::Method;
pub use server::{REQUEST_BYTES_MAX, runtime, serve};
pub use status::{CmsView, DatabaseStatus, NodeStatus};
