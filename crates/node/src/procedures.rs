//! Domain operations on hosted databases, called over the internal API — the way Persistent
//! Chat calls stored procedures: a name and arguments, never remote SQL.

use crate::db_host::{Kind, kind_of};
use crate::error::ApiError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tandem_pool::{cms, users};
use tandem_store::Database;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Call {
    pub(crate) procedure: String,
    #[serde(default)]
    pub(crate) args: Args,
}

/// A call's arguments as their JSON text: each procedure parses them into its own type once,
/// with no `Value` built in between (a batch of posts is large). None stands for `{}`.
pub(crate) type Args = Option<Box<RawValue>>;

/// Arguments in their JSON text, for a call run on this node.
pub(crate) fn args_to_json(args: &impl Serialize) -> Result<Args, ApiError> {
    serde_json::value::to_raw_value(args)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("arguments not serializable: {e}")))
}

pub(crate) fn args<T: DeserializeOwned>(procedure: &str, a: &Args) -> Result<T, ApiError> {
    let text = match a.as_deref().map(RawValue::get) {
        None | Some("null") => "{}",
        Some(t) => t,
    };
    serde_json::from_str(text)
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
            let a: AddUser = args(p, &call.args)?;
            to(serde_json::to_value(users::add(
                db,
                &a.name,
                &a.pool,
                a.password.as_deref(),
            )?))
        }
        (Kind::Users, "users.login") => {
            let a: Login = args(p, &call.args)?;
            Ok(json!({ "token": users::login(db, &a.name, &a.password)? }))
        }
        (Kind::Users, "users.authenticate") => {
            let a: Token = args(p, &call.args)?;
            to(serde_json::to_value(users::authenticate(db, &a.token)?))
        }
        (Kind::Users, "users.list") => {
            let _: Empty = args(p, &call.args)?;
            to(serde_json::to_value(users::list(db)?))
        }
        (Kind::Users, "users.remove") => {
            let a: Name = args(p, &call.args)?;
            users::remove(db, &a.name)?;
            Ok(json!({}))
        }
        (Kind::Cms, "cms.snapshot") => {
            let _: Empty = args(p, &call.args)?;
            to(serde_json::to_value(cms::snapshot(db)?))
        }
        (Kind::Cms, "cms.set_home") => {
            let a: Home = args(p, &call.args)?;
            cms::set_home(db, &a.user, &a.pool)?;
            Ok(json!({}))
        }
        (Kind::Cms, "cms.claim_home") => {
            let a: Home = args(p, &call.args)?;
            Ok(json!({ "claim": cms::claim_home(db, &a.user, &a.pool)? }))
        }
        (Kind::Cms, "cms.release_home") => {
            let a: Home = args(p, &call.args)?;
            Ok(json!({ "released": cms::release_home(db, &a.user, &a.pool)? }))
        }
        (Kind::Cms, "cms.remove_home") => {
            let a: User = args(p, &call.args)?;
            Ok(json!({ "removed": cms::remove_home(db, &a.user)? }))
        }
        (Kind::Cms, "cms.set_chat_active") => {
            let a: Active = args(p, &call.args)?;
            cms::set_chat_active(db, topology, &a.nodes)?;
            Ok(json!({}))
        }
        (Kind::Cms, "cms.set_chat_state") => {
            let a: ChatState = args(p, &call.args)?;
            cms::set_chat_state(db, topology, a.state)?;
            Ok(json!({}))
        }
        (Kind::Cms, "cms.home_of") => {
            let a: User = args(p, &call.args)?;
            Ok(json!({ "pool": cms::home_of(db, &a.user)? }))
        }
        (Kind::Chat, _) if p.starts_with("chat.") => crate::chat_procedures::run(db, p, &call.args),
        _ => Err(wrong()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Maybe {
        user: Option<String>,
    }

    fn call(body: &str) -> Call {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn arguments_are_read_from_their_json_text_absent_or_null_as_empty() {
        for body in [
            r#"{"procedure": "p"}"#,
            r#"{"procedure": "p", "args": null}"#,
            r#"{"procedure": "p", "args": {}}"#,
        ] {
            assert_eq!(
                args::<Maybe>("p", &call(body).args).unwrap(),
                Maybe { user: None }
            );
        }
        let a = call(r#"{"procedure": "p", "args": {"user": "alice"}}"#).args;
        assert_eq!(
            args::<Maybe>("p", &a).unwrap().user.as_deref(),
            Some("alice")
        );
        let a = args_to_json(&json!({ "user": "bob" })).unwrap();
        assert_eq!(args::<Maybe>("p", &a).unwrap().user.as_deref(), Some("bob"));
    }

    #[test]
    fn arguments_of_the_wrong_shape_are_refused_naming_the_procedure() {
        for (body, says) in [
            (
                r#"{"procedure": "chat.rooms", "args": "alice"}"#,
                "invalid type",
            ),
            (
                r#"{"procedure": "chat.rooms", "args": {"usr": "a"}}"#,
                "unknown field `usr`",
            ),
            (
                r#"{"procedure": "chat.rooms", "args": {"user": 3}}"#,
                "invalid type",
            ),
        ] {
            let e = args::<Maybe>("chat.rooms", &call(body).args).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(
                e.message.starts_with("chat.rooms: bad arguments: ") && e.message.contains(says),
                "{body}: {}",
                e.message
            );
        }
    }
}
