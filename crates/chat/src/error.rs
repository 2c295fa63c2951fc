//! The one error type of the crate: what went wrong, in a sentence a user or an operator can act
//! on, and a stable machine-readable code.

/// Why a chat operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The named room, category, member or event does not exist — or is a secret room the user
    /// does not belong to: the message is the same in both cases, so a secret room's existence
    /// is never revealed by this error.
    #[error("{0}")]
    NotFound(String),
    /// The user may see the thing but not do this to it (post without membership, manage a
    /// room without being one of its managers, read a closed room without membership).
    #[error("{0}")]
    Forbidden(String),
    /// A bad argument; the message states the rule it breaks.
    #[error("{0}")]
    Invalid(String),
    /// The operation would create something that already exists, or break a rule of the
    /// room's current state.
    #[error("{0}")]
    Conflict(String),
    /// The database failed or refused (closed, not primary, damaged).
    #[error(transparent)]
    Store(#[from] tandem_store::StoreError),
}

impl ChatError {
    /// A stable code for the kind of error: `not_found`, `forbidden`, `invalid`, `conflict` or
    /// `store`.
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::NotFound(_) => "not_found",
            ChatError::Forbidden(_) => "forbidden",
            ChatError::Invalid(_) => "invalid",
            ChatError::Conflict(_) => "conflict",
            ChatError::Store(_) => "store",
        }
    }
}

impl From<tandem_store::rusqlite::Error> for ChatError {
    fn from(e: tandem_store::rusqlite::Error) -> ChatError {
        ChatError::Store(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_messages_are_the_sentence() {
        let cases = [
            (ChatError::NotFound("no room named x".into()), "not_found"),
            (ChatError::Forbidden("join first".into()), "forbidden"),
            (ChatError::Invalid("bad name".into()), "invalid"),
            (ChatError::Conflict("room x exists".into()), "conflict"),
            (
                ChatError::Store(tandem_store::StoreError::Closed("gone".into())),
                "store",
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code);
        }
        assert_eq!(
            ChatError::Invalid("bad name".into()).to_string(),
            "bad name"
        );
        let store = ChatError::from(tandem_store::StoreError::Invalid("x".into()));
        assert_eq!(store.code(), "store");
        assert_eq!(store.to_string(), "x");
        let sqlite = ChatError::from(tandem_store::rusqlite::Error::QueryReturnedNoRows);
        assert_eq!(sqlite.code(), "store");
    }
}
