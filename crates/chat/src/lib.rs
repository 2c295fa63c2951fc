//! The persistent chat domain (DESIGN.md §1, the `mgc` database): categories, rooms with their
//! privacy and members, and events — messages and room changes — with history, search, the live
//! feed and unread counts.
//!
//! Typed functions over a store [`tandem_store::Database`] holding [`MGC_SCHEMA`]. Every write
//! goes through the store's journal, so mirroring, log shipping and backups carry it like any
//! other record, and every copy answers reads the same (the search index, derived behind the
//! commits, follows each copy's own journal). Callers pass an already-authenticated user name: this crate knows
//! nothing of authentication, HTTP or processes.
//!
//! Every event has a global id (one sequence for all rooms) that increases in commit order, so
//! a client resumes any stream after the last id it saw. Readers see only events durable on the
//! copy they read.

#![warn(missing_docs)]

mod access;
mod categories;
mod error;
mod events;
mod members;
mod messages;
mod names;
mod rooms;
mod schema;
mod search;
mod search_words;
mod unread;

#[cfg(test)]
mod test_support;

pub use access::{can_read, check_readable};
pub use categories::{Category, add_category, categories};
pub use error::ChatError;
pub use events::{Event, EventKind};
pub use members::{
    Forgotten, Handover, Member, add_member, add_member_as_operator, forget_user, members,
    remove_member, set_manager, set_manager_as_operator,
};
pub use messages::{
    FEED_LIMIT_MAX, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, HistoryQuery, NewPost,
    POST_KEY_BYTES_MAX, POST_KEY_KEPT_MS, POST_KEYS_EXPIRED_MAX, Page, TEXT_BYTES_MAX,
    expire_post_keys, feed, history, last_event_id, post, post_async, post_with,
};
pub use names::NAME_CHARS_MAX;
pub use rooms::{
    DESCRIPTION_BYTES_MAX, NewRoom, Privacy, Room, RoomUpdate, create_room, room, rooms,
    update_room,
};
pub use schema::{MGC_SCHEMA, prepare};
pub use search::{
    SEARCH, SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX, SEARCH_QUERY_BYTES_MAX, SEARCH_WAIT, search,
};
pub use unread::{UNREAD_COUNT_MAX, mark_read, unread};
