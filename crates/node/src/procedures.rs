//! Domain operations on hosted databases, called over the internal API — the way Persistent
//! Chat calls stored procedures: a name and arguments, never remote SQL.

use crate::db_host::{Kind, kind_of};
use crate::error::ApiError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tandem_pool::{cms, users};
use tandem_store::Database;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Call {
    pub(crate) procedure: String,
    #[serde(default)]
    pub(crate) args: Value,
}

/// `args` of a borrowed value: no copy of it (a batch of posts is large).
pub(crate) fn args_of<T: DeserializeOwned>(procedure: &str, v: &Value) -> Result<T, ApiError> {
    let r = if v.is_null() {
        T::deserialize(&json!({}))
    } else {
        T::deserialize(v)
    };
    r.map_err(|e| ApiError::bad_request(format!("{procedure}: bad arguments: {e}")))
}

pub(crate) fn args<T: DeserializeOwned>(procedure: &str, v: Value) -> Result<T, ApiError> {
    let v = if v.is_null() { json!({}) } else { v };
    serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("{procedure}: bad arguments: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddUser {
    name: String,
    pool: String,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Home {
    user: String,
    pool: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatState {
    state: cms::ChatPoolState,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Active {
    nodes: Vec<String>,
}

/// Runs `call` on `db` (named `database`). Blocking: run it off the async runtime.
pub(crate) fn run(
    database: &str,
    db: &Database,
    call: Call,
    topology: &tandem_topology::Topology,
) -> Result<Value, ApiError> {
    let p = call.procedure.as_str();
    let kind = kind_of(database);
    let wrong = || {
        ApiError::bad_request(format!(
            "procedure {p} does not exist on database {database}"
        ))
    };
    let to =
        |v: Result<Value, serde_json::Error>| v.map_err(|e| ApiError::bad_request(e.to_string()));
    match (kind, p) {
        (Kind::Users, "users.add") => {
            let a: AddUser = args(p, call.args)?;
            to(serde_json::to_value(users::add(
                db,
                &a.name,
                &a.pool,
                a.password.as_deref(),
            )?))
        }
        (Kind::Users, "users.login") => {
            let a: Login = args(p, call.args)?;
            Ok(json!({ "token": users::login(db, &a.name, &a.password)? }))
        }
        (Kind::Users, "users.authenticate") => {
            let a: Token = args(p, call.args)?;
            to(serde_json::to_value(users::authenticate(db, &a.token)?))
        }
        (Kind::Users, "users.list") => {
            let _: Empty = args(p, call.args)?;
            to(serde_json::to_value(users::list(db)?))
        }
        (Kind::Users, "users.remove") => {
            let a: Name = args(p, call.args)?;
            users::remove(db, &a.name)?;
            Ok(json!({}))
        }
        (Kind::Cms, "cms.snapshot") => {
            let _: Empty = args(p, call.args)?;
            to(serde_json::to_value(cms::snapshot(db)?))
        }
        (Kind::Cms, "cms.set_home") => {
            let a: Home = args(p, call.args)?;
            cms::set_home(db, &a.user, &a.pool)?;
            Ok(json!({}))
        }
        (Kind::Cms, "cms.remove_home") => {
            let a: User = args(p, call.args)?;
            Ok(json!({ "removed": cms::remove_home(db, &a.user)? }))
        }
        (Kind::Cms, "cms.set_chat_active") => {
            let a: Active = args(p, call.args)?;
            cms::set_chat_active(db, topology, &a.nodes)?;
            Ok(json!({}))
        }
        (Kind::Cms, "cms.set_chat_state") => {
            let a: ChatState = args(p, call.args)?;
            cms::set_chat_state(db, topology, a.state)?;
            Ok(json!({}))
        }
        (Kind::Cms, "cms.home_of") => {
            let a: User = args(p, call.args)?;
            Ok(json!({ "pool": cms::home_of(db, &a.user)? }))
        }
        (Kind::Chat, _) if p.starts_with("chat.") => crate::chat_procedures::run(db, p, call.args),
        _ => Err(wrong()),
    }
}
