//! The domain of users and of the Central Management Store (DESIGN.md §1, §3).
//!
//! - [`users`]: the user database of one front-end pool (`users-<pool>`): accounts, argon2
//!   password hashes, bearer tokens stored only as their sha256.
//! - [`cms`]: the CMS database `cms`: the deployment's runtime configuration — chat pool state
//!   and active servers, pool modes and who serves them, which pool each user is homed on,
//!   settings — seeded once from the topology and read as one consistent [`cms::CmsSnapshot`].
//!
//! Typed functions over a store [`tandem_store::Database`]; every write goes through the store's
//! journal, so mirroring, log shipping and the backup service carry it like any other record.
//! Slow work (argon2, randomness) is done before a write is submitted, never on the database's
//! writer thread. No HTTP, no processes.

#![warn(missing_docs)]

mod error;

pub mod cms;
pub mod users;

pub use error::PoolError;
