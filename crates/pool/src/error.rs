//! The one error type of the crate: what went wrong, in a sentence an operator or a client can
//! act on, and a stable machine-readable code.

/// Why a user or CMS operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The named thing (user, home) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation would create something that already exists.
    #[error("{0}")]
    Conflict(String),
    /// A bad argument; the message states the rule it breaks.
    #[error("{0}")]
    Invalid(String),
    /// Credentials refused. The message never tells which part was wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// The database failed or refused (closed, not primary, damaged).
    #[error(transparent)]
    Store(#[from] tandem_store::StoreError),
}

impl PoolError {
    /// A stable code for the kind of error: `not_found`, `conflict`, `invalid`,
    /// `unauthorized` or `store`.
    pub fn code(&self) -> &'static str {
        match self {
            PoolError::NotFound(_) => "not_found",
            PoolError::Conflict(_) => "conflict",
            PoolError::Invalid(_) => "invalid",
            PoolError::Unauthorized(_) => "unauthorized",
            PoolError::Store(_) => "store",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_messages_are_the_sentence() {
        let cases = [
            (PoolError::NotFound("no user bob".into()), "not_found"),
            (PoolError::Conflict("user bob exists".into()), "conflict"),
            (PoolError::Invalid("bad name".into()), "invalid"),
            (PoolError::Unauthorized("no".into()), "unauthorized"),
            (
                PoolError::Store(tandem_store::StoreError::Closed("gone".into())),
                "store",
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code);
        }
        assert_eq!(
            PoolError::Invalid("bad name".into()).to_string(),
            "bad name"
        );
        let store = PoolError::from(tandem_store::StoreError::Invalid("x".into()));
        assert_eq!(store.code(), "store");
        assert_eq!(store.to_string(), "x");
    }
}
