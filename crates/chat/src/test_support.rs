//! Helpers of the unit tests.

use crate::events::{EventKind, NewEvent, append};
use crate::{ChatError, NewRoom, Privacy};
use std::path::Path;
use tandem_store::{Database, Options, Tx};

/// A new `mgc` database in `dir`, with its schema.
pub(crate) fn mgc(dir: &Path) -> Database {
    let db = Database::create(&dir.join("mgc"), "mgc", Options::default()).unwrap();
    crate::prepare(&db).unwrap();
    db
}

/// A room without category or description.
pub(crate) fn new_room(name: &str, privacy: Privacy) -> NewRoom {
    NewRoom {
        name: name.to_string(),
        category: None,
        description: None,
        privacy,
    }
}

/// Appends `n` messages to `room` in one transaction (one fsync), as `post` stores them.
pub(crate) fn bulk_post(db: &Database, room: &str, sender: &str, n: usize) {
    let (room, sender) = (room.to_string(), sender.to_string());
    db.write(move |tx: &mut Tx<'_>| {
        for i in 0..n {
            append(
                tx,
                NewEvent {
                    room: &room,
                    kind: EventKind::Message,
                    sender: &sender,
                    text: format!("message {i} from {sender}"),
                    subject: None,
                    reply_to: None,
                },
            )?;
        }
        Ok::<_, ChatError>(())
    })
    .unwrap();
}

/// A standby copy of `db` in `dir`, ready as every copy is (`prepare`: its search index), made
/// by applying `db`'s whole journal in batches of `batch` records.
pub(crate) fn replayed(db: &Database, dir: &Path, batch: usize) -> Database {
    let id = db.identity();
    let copy = Database::create_copy(
        &dir.join("copy"),
        "mgc",
        id.database_id,
        tandem_store::Role::Standby,
        Options::default(),
    )
    .unwrap();
    crate::prepare(&copy).unwrap();
    let mut from = 1;
    while from <= id.lsn {
        let applied = copy
            .apply(db.read_journal(from, batch, 1 << 20).unwrap(), None)
            .unwrap();
        from = applied.lsn + 1;
    }
    assert_eq!(copy.identity().chain, id.chain);
    copy
}
