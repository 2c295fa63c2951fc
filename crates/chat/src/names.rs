//! Names of rooms, categories and users, and the rule they follow.

use crate::ChatError;

/// Longest room, category or user name, in characters (all ASCII, so also bytes).
pub const NAME_CHARS_MAX: usize = 64;

/// What a name names, for the error message.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NameOf {
    Room,
    Category,
    User,
}

impl NameOf {
    fn as_str(self) -> &'static str {
        match self {
            NameOf::Room => "room",
            NameOf::Category => "category",
            NameOf::User => "user",
        }
    }
}

/// Checks a name: 1 to `NAME_CHARS_MAX` characters of `A-Z`, `a-z`, `0-9`, `.`, `_`, `-`,
/// starting with a letter or a digit. The error states the rule.
pub(crate) fn check_name(of: NameOf, name: &str) -> Result<(), ChatError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    let ok = !name.is_empty()
        && name.len() <= NAME_CHARS_MAX
        && name.bytes().all(allowed)
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        return Ok(());
    }
    let what = of.as_str();
    Err(ChatError::Invalid(format!(
        "{what} name {} is not valid: a {what} name is 1 to {NAME_CHARS_MAX} characters of \
         A-Z, a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        shown(name)
    )))
}

/// A name for a message: quoted when short, its size when too long to repeat.
pub(crate) fn shown(s: &str) -> String {
    if s.len() <= 2 * NAME_CHARS_MAX {
        format!("{s:?}")
    } else {
        format!("of {} bytes", s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule_and_the_error_states_it() {
        let long = "a".repeat(NAME_CHARS_MAX + 1);
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", "a\0", &long] {
            let e = check_name(NameOf::Room, bad).unwrap_err();
            assert_eq!(e.code(), "invalid");
            assert!(
                e.to_string().contains(
                    "a room name is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-', \
                     starting with a letter or digit"
                ),
                "{e}"
            );
        }
        for good in [
            "a",
            "0",
            "General",
            "dev.ops_team-1",
            &"z".repeat(NAME_CHARS_MAX),
        ] {
            check_name(NameOf::Category, good).unwrap();
        }
        let e = check_name(NameOf::User, &"x".repeat(1000)).unwrap_err();
        assert!(e.to_string().starts_with("user name of 1000 bytes"), "{e}");
    }
}
