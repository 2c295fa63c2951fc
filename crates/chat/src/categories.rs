//! Categories: named groups of rooms (as Persistent Chat's categories), visible to everyone.

use crate::ChatError;
use crate::names::{NameOf, check_name};
use crate::rooms::check_description;
use crate::schema::{Query, read};
use serde::{Deserialize, Serialize};
use tandem_store::{Database, Tx, Value};

/// A category of rooms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    /// The category's name (1 to `NAME_CHARS_MAX` characters of `[A-Za-z0-9._-]`).
    pub name: String,
    /// Free text, at most `DESCRIPTION_BYTES_MAX` bytes; empty when none was given.
    pub description: String,
    /// The user who created it.
    pub created_by: String,
    /// Commit time of its creation (ms since the Unix epoch).
    pub created_ms: i64,
}

/// Creates category `name`. Invalid for a bad name or a description over
/// `DESCRIPTION_BYTES_MAX` bytes; Conflict if the category exists, in any case.
pub fn add_category(
    db: &Database,
    user: &str,
    name: &str,
    description: Option<&str>,
) -> Result<Category, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Category, name)?;
    let description = description.unwrap_or("");
    check_description(description)?;
    let (user, name, description) = (user.to_string(), name.to_string(), description.to_string());
    let done = db.write(move |tx: &mut Tx<'_>| {
        // Unique whatever their case, as room names are.
        if let Some(taken) = tx.row(
            "SELECT name FROM categories WHERE name = ?1 COLLATE NOCASE",
            [&name],
            |r| r.get::<_, String>(0),
        )? {
            return Err(ChatError::Conflict(if taken == name {
                format!("category {name} already exists")
            } else {
                format!("category {name} already exists as {taken}: category names are unique whatever their case")
            }));
        }
        let category = Category {
            name: name.clone(),
            description: description.clone(),
            created_by: user.clone(),
            created_ms: tx.time_ms(),
        };
        tx.insert(
            "categories",
            vec![
                Value::Text(category.name.clone()),
                Value::Text(category.description.clone()),
                Value::Text(category.created_by.clone()),
                Value::Integer(category.created_ms),
            ],
        )?;
        Ok(category)
    })?;
    Ok(done.value)
}

/// Every category, sorted by name.
pub fn categories(db: &Database) -> Result<Vec<Category>, ChatError> {
    read(db, |c| {
        c.rows(
            "SELECT name, description, created_by, created_ms FROM categories ORDER BY name",
            [],
            |r| {
                Ok(Category {
                    name: r.get(0)?,
                    description: r.get(1)?,
                    created_by: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            },
        )
    })
}

/// Whether category `name` exists.
pub(crate) fn category_exists(q: &impl Query, name: &str) -> Result<bool, ChatError> {
    Ok(
        q.row("SELECT 1 FROM categories WHERE name = ?1", [name], |_| {
            Ok(())
        })?
        .is_some(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DESCRIPTION_BYTES_MAX;
    use crate::test_support::mgc;

    #[test]
    fn categories_are_created_once_and_listed_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        let eng = add_category(&db, "alice", "engineering", Some("builders")).unwrap();
        assert_eq!(eng.name, "engineering");
        assert_eq!(eng.description, "builders");
        assert_eq!(eng.created_by, "alice");
        assert!(eng.created_ms > 0);
        add_category(&db, "bob", "Admin", None).unwrap();
        let lsn = db.identity().lsn;
        let e = add_category(&db, "bob", "engineering", None).unwrap_err();
        assert_eq!(e.code(), "conflict");
        assert_eq!(e.to_string(), "category engineering already exists");
        let e = add_category(&db, "bob", "ENGINEERING", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "category ENGINEERING already exists as engineering: category names are unique \
             whatever their case"
        );
        assert_eq!(db.identity().lsn, lsn, "a refused add writes nothing");
        let all = categories(&db).unwrap();
        let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Admin", "engineering"]);
        assert_eq!(all[0].description, "");
        assert_eq!(all[1], eng);
    }

    #[test]
    fn bad_names_and_descriptions_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        let lsn = db.identity().lsn;
        for bad in ["", " x", "a b", "-x"] {
            assert_eq!(
                add_category(&db, "alice", bad, None).unwrap_err().code(),
                "invalid"
            );
        }
        let long = "d".repeat(DESCRIPTION_BYTES_MAX + 1);
        let e = add_category(&db, "alice", "x", Some(&long)).unwrap_err();
        assert_eq!(e.code(), "invalid");
        assert!(e.to_string().contains("1024 bytes"), "{e}");
        assert_eq!(
            add_category(&db, "no one", "x", None).unwrap_err().code(),
            "invalid"
        );
        assert_eq!(db.identity().lsn, lsn);
        add_category(&db, "alice", "x", Some(&long[1..])).unwrap();
    }
}
