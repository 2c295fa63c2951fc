//! The user database of one front-end pool (`users-<pool>`): accounts, their passwords and the
//! bearer tokens they sign in with.
//!
//! Passwords are kept only as argon2id PHC strings, tokens only as the sha256 of their bytes: a
//! copy of the database (a mirror, a backup, the paired pool's replica) holds no credential that
//! could be replayed. Hashing, verifying and drawing random bytes happen before a write is
//! submitted, never inside the write closure, which runs on the database's single writer thread
//! and may be run more than once.

use crate::PoolError;
use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use tandem_store::rusqlite::{OptionalExtension, Row};
use tandem_store::{Database, Migration, Tx, Value};

/// The schema of a pool's user database. Apply it with `db.migrate(USERS_SCHEMA)`.
pub static USERS_SCHEMA: &[Migration] = &[Migration {
    version: 1,
    name: "users and tokens",
    sql: "CREATE TABLE users (
              name TEXT PRIMARY KEY,
              pool TEXT NOT NULL,
              password_hash TEXT,
              created_ms INTEGER NOT NULL
          ) WITHOUT ROWID;
          CREATE TABLE tokens (
              token_hash TEXT PRIMARY KEY,
              user TEXT NOT NULL,
              created_ms INTEGER NOT NULL
          ) WITHOUT ROWID;
          CREATE INDEX tokens_user ON tokens (user, created_ms);",
}];

/// Longest user name, in characters (all ASCII, so also bytes).
pub const NAME_CHARS_MAX: usize = 64;
/// Longest pool name accepted for a user, in bytes.
pub const POOL_BYTES_MAX: usize = 64;
/// Longest password accepted, in bytes. Longer ones are refused before any hashing.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Random bytes in a token; a token is their lowercase hex.
pub const TOKEN_BYTES: usize = 32;
/// Length of a token as text: hex of `TOKEN_BYTES`.
pub const TOKEN_HEX_CHARS: usize = 2 * TOKEN_BYTES;
/// Most tokens a user holds at once; a new sign-in past it drops the oldest.
pub const TOKENS_PER_USER_MAX: usize = 64;
/// Salt of a password hash, in bytes.
const SALT_BYTES: usize = 16;

/// The one answer to every refused sign-in, whatever was wrong: no user enumeration.
const LOGIN_REFUSED: &str = "wrong user name or password";

/// A user, as every copy of the pool's user database describes it. Holds no credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user's name (see [`validate_name`]).
    pub name: String,
    /// The pool the account was created on.
    pub pool: String,
    /// Whether the user can sign in with a password (`login`); otherwise only by a token.
    pub has_password: bool,
    /// Commit time of the account's creation (ms since the Unix epoch).
    pub created_ms: i64,
}

/// A user just created, with the first token it can authenticate with. The token is shown only
/// here: the database keeps its sha256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// The user's name.
    pub name: String,
    /// The pool the account was created on.
    pub pool: String,
    /// A bearer token: `TOKEN_HEX_CHARS` lowercase hex characters.
    pub token: String,
}

/// Checks a user name: 1 to 64 characters of `a-z`, `0-9`, `.`, `_`, `-`, starting with a letter
/// or a digit. The error states the rule.
pub fn validate_name(name: &str) -> Result<(), PoolError> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    let ok = !name.is_empty()
        && name.len() <= NAME_CHARS_MAX
        && name.bytes().all(allowed)
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        return Ok(());
    }
    Err(PoolError::Invalid(format!(
        "user name {} is not valid: a user name is 1 to {NAME_CHARS_MAX} characters of a-z, 0-9, \
         '.', '_' or '-', starting with a letter or digit",
        shown(name)
    )))
}

/// Creates user `name` on pool `pool`, with a password when one is given, and issues its first
/// token. Conflict if the user exists; Invalid for a bad name, pool or password (1 to
/// `PASSWORD_BYTES_MAX` bytes).
pub fn add(
    db: &Database,
    name: &str,
    pool: &str,
    password: Option<&str>,
) -> Result<NewUser, PoolError> {
    validate_name(name)?;
    validate_pool(pool)?;
    // Slow and random work first, off the writer thread.
    let password_hash = match password {
        Some(p) => {
            validate_password(p)?;
            Some(hash_password(p))
        }
        None => None,
    };
    let token = new_token();
    let token_hash = token_hash(&token).expect("a token this module made is well formed");
    let (owned_name, owned_pool) = (name.to_string(), pool.to_string());
    db.write(move |tx: &mut Tx<'_>| {
        if user_exists(tx, &owned_name)? {
            return Err(PoolError::Conflict(format!(
                "user {owned_name} already exists"
            )));
        }
        let now = tx.time_ms();
        tx.insert(
            "users",
            vec![
                Value::Text(owned_name.clone()),
                Value::Text(owned_pool.clone()),
                password_hash.clone().map_or(Value::Null, Value::Text),
                Value::Integer(now),
            ],
        )?;
        insert_token(tx, &token_hash, &owned_name)?;
        Ok(())
    })?;
    Ok(NewUser {
        name: name.to_string(),
        pool: pool.to_string(),
        token,
    })
}

/// Signs user `name` in with its password and returns a new token. Every refusal — unknown
/// user, wrong password, user without a password — is the same `Unauthorized` error with the
/// same message, after the same argon2 work, so a caller learns nothing about which users exist.
/// A user holds at most `TOKENS_PER_USER_MAX` tokens: the oldest are dropped.
pub fn login(db: &Database, name: &str, password: &str) -> Result<String, PoolError> {
    let refused = || PoolError::Unauthorized(LOGIN_REFUSED.to_string());
    if password.len() > PASSWORD_BYTES_MAX || validate_name(name).is_err() {
        // No such password or user can exist; spend the same time as a real check anyway.
        let _ = verify_password(password.get(..PASSWORD_BYTES_MAX).unwrap_or(""), None);
        return Err(refused());
    }
    let owned = name.to_string();
    let stored: Option<String> = db
        .read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT password_hash FROM users WHERE name = ?1",
                    [&owned],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()?)
        })?
        .flatten();
    if !verify_password(password, stored.as_deref()) {
        return Err(refused());
    }
    let verified = stored.expect("a verified password has a stored hash");
    issue_token(db, name, verified)
}

/// Issues a new token to `name`, provided its password hash is still `verified` (the account
/// may have been removed or recreated since the hash was read and checked).
fn issue_token(db: &Database, name: &str, verified: String) -> Result<String, PoolError> {
    let token = new_token();
    let token_hash = token_hash(&token).expect("a token this module made is well formed");
    let owned = name.to_string();
    db.write(move |tx: &mut Tx<'_>| {
        let current: Option<Option<String>> = tx.query_row(
            "SELECT password_hash FROM users WHERE name = ?1",
            [&owned],
            |r| r.get(0),
        )?;
        if current.flatten().as_deref() != Some(verified.as_str()) {
            return Err(PoolError::Unauthorized(LOGIN_REFUSED.to_string()));
        }
        drop_oldest_tokens(tx, &owned)?;
        insert_token(tx, &token_hash, &owned)?;
        Ok(())
    })?;
    Ok(token)
}

/// The user a token belongs to; `None` for a token that is unknown, revoked or not
/// `TOKEN_HEX_CHARS` hex characters.
pub fn authenticate(db: &Database, token: &str) -> Result<Option<UserInfo>, PoolError> {
    let Some(hash) = token_hash(token) else {
        return Ok(None);
    };
    Ok(db.read(move |conn| {
        Ok(conn
            .query_row(
                "SELECT u.name, u.pool, u.password_hash IS NOT NULL, u.created_ms \
                 FROM tokens t JOIN users u ON u.name = t.user WHERE t.token_hash = ?1",
                [&hash],
                user_info,
            )
            .optional()?)
    })?)
}

/// Every user of the database, sorted by name.
pub fn list(db: &Database) -> Result<Vec<UserInfo>, PoolError> {
    Ok(db.read(|conn| {
        let mut stmt = conn.prepare(
            "SELECT name, pool, password_hash IS NOT NULL, created_ms FROM users ORDER BY name",
        )?;
        let rows = stmt.query_map([], user_info)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })?)
}

/// Removes user `name` and every token it holds, in one transaction. NotFound if there is no
/// such user.
pub fn remove(db: &Database, name: &str) -> Result<(), PoolError> {
    let owned = name.to_string();
    db.write(move |tx: &mut Tx<'_>| {
        if !user_exists(tx, &owned)? {
            return Err(PoolError::NotFound(format!(
                "no user named {}",
                shown(&owned)
            )));
        }
        let tokens = tx.query(
            "SELECT token_hash FROM tokens WHERE user = ?1",
            [&owned],
            |r| r.get::<_, String>(0),
        )?;
        for hash in tokens {
            tx.delete("tokens", vec![Value::Text(hash)])?;
        }
        tx.delete("users", vec![Value::Text(owned.clone())])?;
        Ok(())
    })?;
    Ok(())
}

fn user_info(r: &Row<'_>) -> tandem_store::rusqlite::Result<UserInfo> {
    Ok(UserInfo {
        name: r.get(0)?,
        pool: r.get(1)?,
        has_password: r.get(2)?,
        created_ms: r.get(3)?,
    })
}

fn user_exists(tx: &Tx<'_>, name: &str) -> Result<bool, PoolError> {
    Ok(tx
        .query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))?
        .is_some())
}

fn insert_token(tx: &mut Tx<'_>, token_hash: &str, user: &str) -> Result<(), PoolError> {
    debug_assert!(is_token_hash(token_hash), "tokens are stored as sha256 hex");
    // After the user's newest token, even within one millisecond: the oldest are the first
    // made, which `drop_oldest_tokens` removes (a tie was broken by the hash: a new token could
    // go before an older one).
    let newest = tx
        .query_row(
            "SELECT MAX(created_ms) FROM tokens WHERE user = ?1",
            [user],
            |r| r.get::<_, Option<i64>>(0),
        )?
        .flatten();
    let now = tx.time_ms().max(newest.map_or(i64::MIN, |t| t + 1));
    tx.insert(
        "tokens",
        vec![
            Value::Text(token_hash.to_string()),
            Value::Text(user.to_string()),
            Value::Integer(now),
        ],
    )?;
    Ok(())
}

/// Makes room for one more token of `user`: drops its oldest past `TOKENS_PER_USER_MAX - 1`.
fn drop_oldest_tokens(tx: &mut Tx<'_>, user: &str) -> Result<(), PoolError> {
    let held = tx
        .query_row("SELECT COUNT(*) FROM tokens WHERE user = ?1", [user], |r| {
            r.get::<_, i64>(0)
        })?
        .unwrap_or(0) as usize;
    let excess = (held + 1).saturating_sub(TOKENS_PER_USER_MAX);
    if excess == 0 {
        return Ok(());
    }
    let oldest = tx.query(
        "SELECT token_hash FROM tokens WHERE user = ?1 ORDER BY created_ms, token_hash LIMIT ?2",
        (user, excess as i64),
        |r| r.get::<_, String>(0),
    )?;
    for hash in oldest {
        tx.delete("tokens", vec![Value::Text(hash)])?;
    }
    Ok(())
}

fn validate_pool(pool: &str) -> Result<(), PoolError> {
    let ok = !pool.is_empty()
        && pool.len() <= POOL_BYTES_MAX
        && pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        return Ok(());
    }
    Err(PoolError::Invalid(format!(
        "pool name {} is not valid: a pool name is 1 to {POOL_BYTES_MAX} ASCII letters, digits, \
         '-' or '_'",
        shown(pool)
    )))
}

/// Checks a password: 1 to `PASSWORD_BYTES_MAX` bytes. The error states the rule.
pub fn validate_password(password: &str) -> Result<(), PoolError> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(PoolError::Invalid(format!(
            "a password is 1 to {PASSWORD_BYTES_MAX} bytes; this one has {}",
            password.len()
        )));
    }
    Ok(())
}

/// A name for a message: quoted when short, its size when too long to repeat.
fn shown(s: &str) -> String {
    if s.len() <= 2 * NAME_CHARS_MAX {
        format!("{s:?}")
    } else {
        format!("of {} bytes", s.len())
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source");
    b
}

/// A new bearer token: `TOKEN_BYTES` random bytes as lowercase hex.
fn new_token() -> String {
    hex::encode(random_bytes::<TOKEN_BYTES>())
}

/// The stored form of a token: sha256 of its bytes, as hex. `None` when `token` is not
/// `TOKEN_HEX_CHARS` hex characters (so never a token this module issued).
fn token_hash(token: &str) -> Option<String> {
    if token.len() != TOKEN_HEX_CHARS {
        return None;
    }
    let bytes = hex::decode(token).ok()?;
    Some(hex::encode(Sha256::digest(&bytes)))
}

/// The refusal of a sign-in for a name no pool homes, after the argon2 work a real check
/// does: a frontend that answered such names at once (in under a millisecond against about
/// twenty) told anyone which users exist.
pub fn refuse_unknown_user(password: &str) -> PoolError {
    let _ = verify_password(password.get(..PASSWORD_BYTES_MAX).unwrap_or(""), None);
    PoolError::Unauthorized(LOGIN_REFUSED.to_string())
}

fn is_token_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An argon2id PHC string of `password` with a fresh random salt.
fn hash_password(password: &str) -> String {
    let salt = random_bytes::<SALT_BYTES>();
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password of bounded length")
        .to_string()
}

/// Whether `password` matches the PHC string `stored`. Without a stored hash, a hash of the same
/// cost is verified anyway and the answer is no: refusals take the same time.
fn verify_password(password: &str, stored: Option<&str>) -> bool {
    static DECOY: OnceLock<String> = OnceLock::new();
    match stored {
        Some(hash) => Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok(),
        None => {
            let decoy = DECOY.get_or_init(|| hash_password(&hex::encode(random_bytes::<16>())));
            let _ = Argon2::default().verify_password(password.as_bytes(), decoy.as_str());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_store::Options;

    fn users_db(dir: &std::path::Path) -> Database {
        let db = Database::create(
            &dir.join("users-pool-atl"),
            "users-pool-atl",
            Options::default(),
        )
        .unwrap();
        db.migrate(USERS_SCHEMA).unwrap();
        db
    }

    fn all_rows(db: &Database, table: &'static str) -> Vec<Vec<String>> {
        db.read(move |conn| {
            let mut stmt = conn.prepare(&format!("SELECT * FROM {table}"))?;
            let n = stmt.column_count();
            let rows = stmt.query_map([], |r| {
                (0..n)
                    .map(|i| Ok(format!("{:?}", r.get::<_, Value>(i)?)))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .unwrap()
    }

    #[test]
    fn add_login_authenticate_list_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());

        let alice = add(&db, "alice", "pool-atl", Some("correct horse")).unwrap();
        assert_eq!(
            (alice.name.as_str(), alice.pool.as_str()),
            ("alice", "pool-atl")
        );
        assert_eq!(alice.token.len(), TOKEN_HEX_CHARS);
        let bot = add(&db, "bot-1", "pool-atl", None).unwrap();

        let who = authenticate(&db, &alice.token).unwrap().unwrap();
        assert_eq!(who.name, "alice");
        assert_eq!(who.pool, "pool-atl");
        assert!(who.has_password);
        assert!(who.created_ms > 0);
        let who = authenticate(&db, &bot.token).unwrap().unwrap();
        assert_eq!(who.name, "bot-1");
        assert!(!who.has_password);

        let second = login(&db, "alice", "correct horse").unwrap();
        assert_ne!(second, alice.token);
        assert_eq!(authenticate(&db, &second).unwrap().unwrap().name, "alice");
        // The first token still works: a sign-in does not sign other sessions out.
        assert_eq!(
            authenticate(&db, &alice.token).unwrap().unwrap().name,
            "alice"
        );

        let names: Vec<String> = list(&db).unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["alice", "bot-1"]);

        remove(&db, "alice").unwrap();
        assert_eq!(authenticate(&db, &alice.token).unwrap(), None);
        assert_eq!(authenticate(&db, &second).unwrap(), None);
        assert!(
            all_rows(&db, "tokens").len() == 1,
            "only bot-1's token is left"
        );
        let names: Vec<String> = list(&db).unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["bot-1"]);
        assert_eq!(remove(&db, "alice").unwrap_err().code(), "not_found");
        assert_eq!(
            login(&db, "alice", "correct horse").unwrap_err().code(),
            "unauthorized"
        );
    }

    #[test]
    fn list_is_sorted_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());
        for name in ["zoe", "0day", "mike", "a.b"] {
            add(&db, name, "pool-atl", None).unwrap();
        }
        let names: Vec<String> = list(&db).unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["0day", "a.b", "mike", "zoe"]);
    }

    #[test]
    fn a_duplicate_user_is_a_conflict_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());
        add(&db, "alice", "pool-atl", Some("one")).unwrap();
        let lsn = db.identity().lsn;
        let err = add(&db, "alice", "pool-dal", Some("two")).unwrap_err();
        assert!(matches!(err, PoolError::Conflict(_)), "{err:?}");
        assert_eq!(err.to_string(), "user alice already exists");
        assert_eq!(db.identity().lsn, lsn, "a refused add writes nothing");
        assert_eq!(list(&db).unwrap()[0].pool, "pool-atl");
        login(&db, "alice", "one").unwrap();
    }

    #[test]
    fn every_refused_login_looks_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());
        add(&db, "alice", "pool-atl", Some("secret")).unwrap();
        add(&db, "bot", "pool-atl", None).unwrap();
        let lsn = db.identity().lsn;
        let long = "x".repeat(PASSWORD_BYTES_MAX + 1);
        let refusals = [
            login(&db, "alice", "Secret"),
            login(&db, "alice", ""),
            login(&db, "nobody", "secret"),
            login(&db, "bot", "secret"),
            login(&db, "bot", ""),
            login(&db, "Not A Name", "secret"),
            login(&db, "alice", &long),
            // A frontend's refusal of a name no pool homes.
            Err(refuse_unknown_user("secret")),
            Err(refuse_unknown_user(&long)),
        ];
        for r in refusals {
            let e = r.unwrap_err();
            assert!(matches!(e, PoolError::Unauthorized(_)), "{e:?}");
            assert_eq!(e.to_string(), "wrong user name or password");
        }
        assert_eq!(db.identity().lsn, lsn, "a refused login writes nothing");
    }

    #[test]
    fn credentials_are_stored_only_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());
        let password = "hunter2-hunter2";
        let new = add(&db, "alice", "pool-atl", Some(password)).unwrap();
        let second = login(&db, "alice", password).unwrap();

        let tokens = all_rows(&db, "tokens");
        assert_eq!(tokens.len(), 2);
        let users = all_rows(&db, "users");
        let everything = format!("{tokens:?} {users:?}");
        for secret in [new.token.as_str(), second.as_str(), password] {
            assert!(!everything.contains(secret), "{secret} stored in clear");
        }
        for t in [&new.token, &second] {
            let h = token_hash(t).unwrap();
            assert!(everything.contains(&h), "token stored as its sha256");
        }
        assert!(users[0][2].contains("$argon2id$"), "{:?}", users[0]);
        // The journal, which every copy receives, does not hold them either.
        let journal = format!("{:?}", db.read_journal(1, 1000, 1 << 20).unwrap());
        assert!(!journal.contains(&new.token) && !journal.contains(password));
    }

    #[test]
    fn malformed_or_unknown_tokens_authenticate_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());
        let new = add(&db, "alice", "pool-atl", None).unwrap();
        let upper = new.token.to_uppercase();
        assert_eq!(
            authenticate(&db, &upper).unwrap().unwrap().name,
            "alice",
            "hex is read in either case"
        );
        let unknown = "0".repeat(TOKEN_HEX_CHARS);
        let too_long = format!("{}0", new.token);
        let not_hex = format!("{}zz", &new.token[..TOKEN_HEX_CHARS - 2]);
        let hashed = token_hash(&new.token).unwrap();
        for t in ["", &new.token[1..], &too_long, &not_hex, &unknown, &hashed] {
            if t == hashed {
                // The stored hash is itself 64 hex characters: presenting it must not work.
                assert_ne!(token_hash(t).unwrap(), hashed);
            }
            assert_eq!(authenticate(&db, t).unwrap(), None, "{t:?}");
        }
    }

    #[test]
    fn invalid_names_and_passwords_are_refused_with_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());
        let long = "a".repeat(NAME_CHARS_MAX + 1);
        for bad in [
            "", "Alice", "-alice", ".alice", "_a", "al ice", "al/ice", "é", &long,
        ] {
            let e = add(&db, bad, "pool-atl", None).unwrap_err();
            assert!(matches!(e, PoolError::Invalid(_)), "{bad:?}: {e:?}");
            assert!(
                e.to_string()
                    .contains("1 to 64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"),
                "{e}"
            );
        }
        for good in ["a", "0", "a.b_c-d", &"z".repeat(NAME_CHARS_MAX)] {
            validate_name(good).unwrap();
        }
        let e = add(&db, "alice", "", None).unwrap_err();
        assert!(e.to_string().contains("pool name"), "{e}");
        let e = add(&db, "alice", "pool-atl", Some("")).unwrap_err();
        assert!(
            e.to_string().contains("a password is 1 to 1024 bytes"),
            "{e}"
        );
        let long_pw = "p".repeat(PASSWORD_BYTES_MAX + 1);
        let e = add(&db, "alice", "pool-atl", Some(&long_pw)).unwrap_err();
        assert_eq!(e.code(), "invalid");
        add(
            &db,
            "alice",
            "pool-atl",
            Some(&"p".repeat(PASSWORD_BYTES_MAX)),
        )
        .unwrap();
        assert_eq!(list(&db).unwrap().len(), 1);
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_tokens_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());
        let first = add(&db, "alice", "pool-atl", None).unwrap().token;
        // Sign-ins without argon2 work: the same write `login` makes after a verified password.
        let mut newest = String::new();
        for _ in 0..TOKENS_PER_USER_MAX + 5 {
            let token = new_token();
            let hash = token_hash(&token).unwrap();
            db.write(move |tx: &mut Tx<'_>| {
                drop_oldest_tokens(tx, "alice")?;
                insert_token(tx, &hash, "alice")
            })
            .unwrap();
            newest = token;
        }
        assert_eq!(all_rows(&db, "tokens").len(), TOKENS_PER_USER_MAX);
        assert_eq!(authenticate(&db, &first).unwrap(), None, "the oldest went");
        assert!(
            authenticate(&db, &newest).unwrap().is_some(),
            "the newest stays"
        );
    }

    #[test]
    fn a_user_recreated_between_verify_and_write_gets_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(dir.path());
        let stored_hash = |db: &Database| {
            db.read(|c| {
                Ok(c.query_row("SELECT password_hash FROM users", [], |r| {
                    r.get::<_, String>(0)
                })?)
            })
            .unwrap()
        };
        add(&db, "alice", "pool-atl", Some("old")).unwrap();
        let verified = stored_hash(&db);
        assert!(verify_password("old", Some(&verified)));
        remove(&db, "alice").unwrap();
        add(&db, "alice", "pool-atl", Some("old")).unwrap();
        assert_ne!(stored_hash(&db), verified, "a new salt for every hash");
        let lsn = db.identity().lsn;
        let e = issue_token(&db, "alice", verified.clone()).unwrap_err();
        assert_eq!(e.to_string(), "wrong user name or password");
        remove(&db, "alice").unwrap();
        let e = issue_token(&db, "alice", verified).unwrap_err();
        assert_eq!(e.code(), "unauthorized");
        assert_eq!(db.identity().lsn, lsn + 1, "only the remove was written");
    }
}
