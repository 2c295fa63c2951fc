//! `tandem chat …` as a user: rooms, members, posts, history and search through the users' API
//! of an active chat server, with the token `tandem user add` kept for `--as USER`.

use crate::deployment::{Deployment, runtime};
use crate::output::{Output, time};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::time::Duration;
use tandem_node::{Method, UserApi};

#[derive(Args)]
pub struct As {
    /// The user to act as (a user added with `tandem user add` on this deployment).
    #[arg(long = "as", value_name = "USER", id = "as_user")]
    user: String,
}

/// A change to a room's members made as a user (`--as USER`, under the room's rules) or as the
/// deployment's operator (`--as-operator`: through the internal API of the chat database's
/// primary, with the cluster secret; any room, recorded as done by `operator`).
#[derive(Args)]
pub struct AsUserOrOperator {
    /// The user to act as (a user added with `tandem user add` on this deployment).
    #[arg(
        long = "as",
        value_name = "USER",
        id = "as_user",
        required_unless_present = "as_operator"
    )]
    user: Option<String>,
    /// Act as the deployment's operator, with the cluster secret instead of a user's token:
    /// the way back for a room left without a manager or without members (a secret room whose
    /// every member was removed is seen by nobody). Recorded as done by `operator`.
    #[arg(long, conflicts_with = "as_user")]
    as_operator: bool,
}

#[derive(Subcommand)]
pub enum ChatCommand {
    /// Categories of rooms.
    #[command(subcommand)]
    Category(CategoryCommand),
    /// Rooms: create, add members, list.
    #[command(subcommand)]
    Room(RoomCommand),
    /// Post a message to a room.
    Post {
        /// The room's name.
        room: String,
        /// The message.
        text: String,
        /// The id of the message this one answers.
        #[arg(long)]
        reply_to: Option<i64>,
        #[command(flatten)]
        who: As,
    },
    /// A room's history, oldest first; the newest page unless --before or --after.
    History {
        /// The room's name.
        room: String,
        /// Events per page.
        #[arg(long, default_value_t = 50, allow_negative_numbers = true)]
        limit: usize,
        /// The page before this event id (the first id of the page shown last).
        #[arg(long, conflicts_with = "after")]
        before: Option<i64>,
        /// The page after this event id (the last id of the page shown last).
        #[arg(long)]
        after: Option<i64>,
        #[command(flatten)]
        who: As,
    },
    /// The chat pool state: which chat database copy the pool uses (operator; in the CMS).
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// The chat pool's active servers (operator; stored in the CMS).
    ActiveServers {
        #[command(subcommand)]
        action: ActiveAction,
    },
    /// Move the chat pool to the backup site (the primary site is lost): the seven steps of
    /// seed 003, each checked; reports the data loss. Resumes an interrupted run.
    Failover {
        /// Print the plan and the preconditions; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fail over even though the primary site answers (a drill): its primary is paused
        /// and its last log backup shipped first, so nothing it acknowledged is lost.
        #[arg(long)]
        force: bool,
    },
    /// Bring the chat pool home once the primary site is rebuilt: nothing written meanwhile is
    /// lost. Resumes an interrupted run.
    Failback {
        /// Print the plan and the preconditions; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Abandon a failback stopped half-way (a node lost during it): the backup site's
        /// copy of mgc takes writes again and its chat servers are made active; the pool
        /// stays failed-over. Refused once the primary site's copy is the chat's primary
        /// (from there the failback only goes forward).
        #[arg(long)]
        abort: bool,
    },
    /// Search the messages you may read.
    Search {
        /// Words that every message found contains.
        query: String,
        /// Only messages with an id below this one (the last id of the previous page).
        #[arg(long)]
        before: Option<i64>,
        /// The most messages to show, newest first (1 to 100; 20 when not given).
        #[arg(long, allow_negative_numbers = true)]
        limit: Option<usize>,
        #[command(flatten)]
        who: As,
    },
}

#[derive(Subcommand)]
pub enum StateAction {
    /// Show the state and the active servers.
    Show,
    /// `normal`: the primary chat database; `failed-over`: the backup (in the other site).
    Set {
        #[arg(value_parser = ["normal", "failed-over"])]
        state: String,
        /// Set it even though no copy of mgc in that state's site answers as a writable
        /// primary (its chat servers then refuse every post until one does).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum ActiveAction {
    /// Show the active servers (from the CMS).
    Show,
    /// Empty the list: no chat node serves (failback step 1).
    Clear,
    /// Replace the list; every server must be in the site of the chat database in use.
    Set {
        #[arg(value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum CategoryCommand {
    /// Add a category: as the deployment's operator (through the internal API, with the
    /// cluster secret; recorded as created by `operator`), or as a user with --as.
    Add {
        /// The category's name.
        name: String,
        /// What the category's rooms are for.
        #[arg(long)]
        description: Option<String>,
        /// The user to act as, instead of the operator.
        #[arg(long = "as", value_name = "USER")]
        who: Option<String>,
    },
    /// List the categories.
    List {
        #[command(flatten)]
        who: As,
    },
}

#[derive(Subcommand)]
pub enum RoomCommand {
    /// Create a room; you become its manager.
    Create {
        /// The room's name.
        room: String,
        /// The category the room is in.
        #[arg(long)]
        category: Option<String>,
        /// Who may read it: anyone (open), its members (closed), its members, and only they
        /// know it exists (secret).
        #[arg(long, default_value = "open", value_parser = ["open", "closed", "secret"])]
        privacy: String,
        /// What the room is for.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        who: As,
    },
    /// Add a member (managers; in an open room you may add yourself; the operator, any room).
    AddMember {
        /// The room's name.
        room: String,
        /// The user to add.
        user: String,
        /// Make the user a manager of the room too.
        #[arg(long)]
        manager: bool,
        #[command(flatten)]
        who: AsUserOrOperator,
    },
    /// Make a member a manager of the room (true) or a member only (false): managers, or the
    /// operator. The room's last manager stays one.
    SetManager {
        /// The room's name.
        room: String,
        /// The member.
        user: String,
        /// Whether the member manages the room.
        #[arg(action = clap::ArgAction::Set, value_parser = clap::value_parser!(bool))]
        manager: bool,
        #[command(flatten)]
        who: AsUserOrOperator,
    },
    /// The rooms you may see.
    List {
        #[command(flatten)]
        who: As,
    },
}

/// One line per item of the JSON array `v`, or `none` when it holds none.
fn lines_or(v: &Value, none: &str, line: impl Fn(&Value) -> String) -> String {
    match v.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(line).collect(),
        _ => format!("{none}\n"),
    }
}

/// An active chat server of the deployment, as the CMS says, that answers.
fn chat_server(d: &Deployment, rt: &tokio::runtime::Runtime) -> anyhow::Result<String> {
    let client = d.client();
    let (_, cms) = d.primary_address(tandem_topology::DATABASE_CMS)?;
    let timeout = Duration::from_millis(1_500);
    let active: Vec<String> = match rt.block_on(client.cms_snapshot(&cms, timeout)) {
        Ok(s) => s.chat.map(|c| c.active).unwrap_or_default(),
        // The CMS is down: any chat node's own snapshot says who is active.
        Err(_) => {
            let mut found = Vec::new();
            for n in d
                .topology
                .nodes
                .iter()
                .filter(|n| n.has(tandem_topology::Role::Chat))
            {
                if let Ok(s) = rt.block_on(client.status(&n.address, timeout))
                    && let Some(c) = s.cms
                {
                    found = c.chat_active;
                    break;
                }
            }
            found
        }
    };
    if active.is_empty() {
        bail!("the chat pool has no active server (tandem chat active-servers show)");
    }
    for name in &active {
        if let Some(n) = d.topology.node(name)
            && rt.block_on(client.healthy(&n.address, timeout))
        {
            return Ok(n.address.clone());
        }
    }
    bail!(
        "no active chat server answers (active: {})",
        active.join(", ")
    )
}

/// Who an operator's change is recorded as (a chat user name: `created_by`).
const OPERATOR: &str = "operator";

/// Runs a chat procedure as the deployment's operator: on the primary of the chat database the
/// pool uses now (the backup site's once failed over), over the internal API.
fn operator_call(
    d: &Deployment,
    rt: &tokio::runtime::Runtime,
    procedure: &str,
    args: Value,
) -> anyhow::Result<Value> {
    rt.block_on(chat_database_call(d, procedure, &args))
}

/// Runs a procedure of the chat database `mgc` on the copy the chat pool uses now: among the
/// primary site's copies, or the backup site's once the CMS says the pool is failed over (the
/// topology's primary is not asked then: it stepped down). The operator's chat commands and
/// `tandem user add|remove` (the user's rooms) go through it.
pub(crate) async fn chat_database_call<T: serde::de::DeserializeOwned>(
    d: &Deployment,
    procedure: &str,
    args: &Value,
) -> anyhow::Result<T> {
    let client = d.client();
    let (_, cms) = d.find_primary(tandem_topology::DATABASE_CMS).await?;
    let snapshot = client
        .cms_snapshot(&cms, Duration::from_millis(1_500))
        .await
        .with_context(|| format!("the CMS on {cms}"))?;
    let failed_over = snapshot
        .chat
        .is_some_and(|c| c.state == tandem_pool::cms::ChatPoolState::FailedOver);
    let candidates =
        tandem_node::locator::candidates(&d.topology, tandem_topology::DATABASE_MGC, failed_over);
    let answer = tandem_node::locator::Locator::new()
        .call::<T, _>(
            &client,
            tandem_topology::DATABASE_MGC,
            failed_over,
            &candidates,
            procedure,
            args,
        )
        .await?;
    Ok(answer.result)
}

/// Refuses, naming the fix, a user name that no pool homes (the operator's changes are checked
/// here: the chat database knows no users).
/// A change of `member`'s membership: through the users' API as `who.user` (`request`), or as
/// the operator (`procedure` on the chat database's primary, `member` checked to be a user).
fn as_user_or_operator(
    d: &Deployment,
    rt: &tokio::runtime::Runtime,
    who: AsUserOrOperator,
    member: &str,
    (method, path, body): (Method, &str, Value),
    procedure: &str,
    args: Value,
) -> anyhow::Result<Value> {
    match who.user {
        Some(u) => request(d, &As { user: u }, rt, method, path, Some(body)),
        None => {
            user_exists(d, rt, member)?;
            operator_call(d, rt, procedure, args)
        }
    }
}

fn user_exists(d: &Deployment, rt: &tokio::runtime::Runtime, user: &str) -> anyhow::Result<()> {
    tandem_pool::users::validate_name(user)?;
    let client = d.client();
    let home = rt.block_on(async {
        let (node, cms) = d.find_primary(tandem_topology::DATABASE_CMS).await?;
        client
            .call::<Value, _>(
                &cms,
                tandem_topology::DATABASE_CMS,
                "cms.home_of",
                &json!({ "user": user }),
            )
            .await
            .with_context(|| format!("the CMS on {node}"))
    })?;
    if home.result["pool"].as_str().is_none() {
        bail!(
            "no user named {user}: `tandem user add {user} --pool POOL` adds one; nothing changed"
        );
    }
    Ok(())
}

fn as_user(d: &Deployment, who: &As, rt: &tokio::runtime::Runtime) -> anyhow::Result<UserApi> {
    let tokens = d.tokens()?;
    let token = tokens.get(&who.user).with_context(|| {
        format!(
            "no token for {0} beside this topology: `tandem user add {0} --pool POOL` keeps one",
            who.user
        )
    })?;
    Ok(UserApi::new(&chat_server(d, rt)?, token))
}

/// Sends one request of the users' API as `who`, to an active chat server.
fn request(
    d: &Deployment,
    who: &As,
    rt: &tokio::runtime::Runtime,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let api = as_user(d, who, rt)?;
    Ok(rt.block_on(api.request(method, path, body.as_ref()))?)
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A user's text as a terminal line shows it: control characters (a newline, an escape
/// sequence) and the marks that reorder text written as escapes (`\n`, `\u{1b}`), so that a
/// message can neither forge another line of history nor move the terminal's cursor.
fn on_one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\t' => "\\t".to_string(),
            '\r' => "\\r".to_string(),
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                c.escape_unicode().to_string()
            }
            c => c.to_string(),
        })
        .collect()
}

fn event_line(e: &Value) -> String {
    let kind = e["kind"].as_str().unwrap_or("");
    let head = format!(
        "#{:<6} {} {:<10}",
        e["id"].as_i64().unwrap_or(0),
        time(e["time_ms"].as_i64().unwrap_or(0)),
        on_one_line(e["sender"].as_str().unwrap_or(""))
    );
    let text = on_one_line(e["text"].as_str().unwrap_or(""));
    if kind == "message" {
        let reply = e["reply_to"]
            .as_i64()
            .map(|r| format!("(re #{r}) "))
            .unwrap_or_default();
        format!("{head} {reply}{text}\n")
    } else {
        format!("{head} * {text}\n")
    }
}

/// Applies an operator change to the chat pool in the CMS (if any), then shows the chat pool.
fn chat_pool(
    d: &Deployment,
    change: Option<(&str, Value)>,
    out: &Output,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let client = d.client();
    let cms_db = tandem_topology::DATABASE_CMS;
    // No copy answering as master (its node lost): said so, with the copies and the failover
    // that makes the standby master — not what the topology's first copy, a standby now, says.
    let (cms_node, cms) = match rt.block_on(d.locate(cms_db)) {
        Ok(n) => (n.name, n.address),
        Err(_) => {
            crate::chat_dr::cms_reachable(d)?;
            d.primary_address(cms_db)?
        }
    };
    if let Some((procedure, args)) = change {
        rt.block_on(client.call::<Value, _>(&cms, cms_db, procedure, &args))
            .with_context(|| format!("the CMS on {cms_node}"))?;
    }
    let snap = rt
        .block_on(client.cms_snapshot(&cms, Duration::from_millis(2_000)))
        .with_context(|| format!("the CMS on {cms_node}"))?;
    let chat = snap.chat.context("the CMS has no chat pool")?;
    let report = json!({ "state": chat.state, "active": chat.active, "cms_lsn": snap.lsn });
    out.emit(&report, || {
        format!(
            "chat pool {}; active servers: {}\n",
            chat.state.as_str(),
            if chat.active.is_empty() {
                "none".to_string()
            } else {
                chat.active.join(", ")
            }
        )
    })
}

pub fn run(d: &Deployment, cmd: ChatCommand, out: &Output) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        ChatCommand::ActiveServers { action } => {
            let change = match action {
                ActiveAction::Show => None,
                ActiveAction::Clear => Some(("cms.set_chat_active", json!({ "nodes": [] }))),
                ActiveAction::Set { nodes } => {
                    Some(("cms.set_chat_active", json!({ "nodes": nodes })))
                }
            };
            chat_pool(d, change, out, &rt)
        }
        ChatCommand::Failover { dry_run, force } => {
            crate::chat_dr::failover(d, dry_run, force, out)
        }
        ChatCommand::Failback { dry_run, abort } => {
            crate::chat_dr::failback(d, dry_run, abort, out)
        }
        ChatCommand::State { action } => {
            let change = match action {
                StateAction::Show => None,
                StateAction::Set { state, force } => {
                    if !force {
                        crate::chat_dr::state_has_a_primary(d, &state)?;
                    }
                    Some(("cms.set_chat_state", json!({ "state": state })))
                }
            };
            chat_pool(d, change, out, &rt)
        }
        ChatCommand::Category(CategoryCommand::Add {
            name,
            description,
            who,
        }) => {
            let c = match who {
                Some(user) => request(
                    d,
                    &As { user },
                    &rt,
                    Method::POST,
                    "/api/v1/categories",
                    Some(json!({ "name": name, "description": description })),
                )?,
                None => operator_call(
                    d,
                    &rt,
                    "chat.add_category",
                    json!({ "user": OPERATOR, "name": name, "description": description }),
                )?,
            };
            out.emit(&c, || format!("category {name} added\n"))
        }
        ChatCommand::Category(CategoryCommand::List { who }) => {
            let c = request(d, &who, &rt, Method::GET, "/api/v1/categories", None)?;
            out.emit(&c, || {
                lines_or(&c, "no categories", |c| {
                    format!(
                        "{}\t{}\n",
                        c["name"].as_str().unwrap_or(""),
                        c["description"].as_str().unwrap_or("")
                    )
                })
            })
        }
        ChatCommand::Room(RoomCommand::Create {
            room,
            category,
            privacy,
            description,
            who,
        }) => {
            let r = request(
                d,
                &who,
                &rt,
                Method::POST,
                "/api/v1/rooms",
                Some(
                    json!({ "name": room, "category": category, "privacy": privacy, "description": description }),
                ),
            )?;
            out.emit(&r, || {
                format!("room {room} created ({privacy}); {} manages it\n", who.user)
            })
        }
        ChatCommand::Room(RoomCommand::AddMember {
            room,
            user,
            manager,
            who,
        }) => {
            let r = as_user_or_operator(
                d,
                &rt,
                who,
                &user,
                (
                    Method::POST,
                    &format!("/api/v1/rooms/{}/members", enc(&room)),
                    json!({ "user": user, "manager": manager }),
                ),
                "chat.operator_add_member",
                json!({ "room": room, "member": user, "manager": manager }),
            )?;
            out.emit(&r, || {
                format!(
                    "{user} is a {} of {room}\n",
                    if manager { "manager" } else { "member" }
                )
            })
        }
        ChatCommand::Room(RoomCommand::SetManager {
            room,
            user,
            manager,
            who,
        }) => {
            let r = as_user_or_operator(
                d,
                &rt,
                who,
                &user,
                (
                    Method::PATCH,
                    &format!("/api/v1/rooms/{}/members/{}", enc(&room), enc(&user)),
                    json!({ "manager": manager }),
                ),
                "chat.operator_set_manager",
                json!({ "room": room, "member": user, "manager": manager }),
            )?;
            out.emit(&r, || {
                format!(
                    "{user} is a {} of {room}\n",
                    if manager {
                        "manager"
                    } else {
                        "member, not a manager,"
                    }
                )
            })
        }
        ChatCommand::Room(RoomCommand::List { who }) => {
            let r = request(d, &who, &rt, Method::GET, "/api/v1/rooms", None)?;
            out.emit(&r, || {
                lines_or(&r, "no rooms that you may see", |r| {
                    let members = r["members"].as_u64().unwrap_or(0);
                    format!(
                        "{:<20} {:<7} {:>4} member{}{}{}\n",
                        r["name"].as_str().unwrap_or(""),
                        r["privacy"].as_str().unwrap_or(""),
                        members,
                        if members == 1 { " " } else { "s" },
                        r["category"]
                            .as_str()
                            .map(|c| format!("  category {c}"))
                            .unwrap_or_default(),
                        if r["member"] == true {
                            "  (member)"
                        } else {
                            ""
                        }
                    )
                })
            })
        }
        ChatCommand::Post {
            room,
            text,
            reply_to,
            who,
        } => {
            let e = request(
                d,
                &who,
                &rt,
                Method::POST,
                &format!("/api/v1/rooms/{}/messages", enc(&room)),
                Some(json!({ "text": text, "reply_to": reply_to })),
            )?;
            out.emit(&e, || {
                format!("posted #{} to {room}\n", e["id"].as_i64().unwrap_or(0))
            })
        }
        ChatCommand::History {
            room,
            limit,
            before,
            after,
            who,
        } => {
            let mut q = format!("limit={limit}");
            if let Some(b) = before {
                q.push_str(&format!("&before={b}"));
            }
            if let Some(a) = after {
                q.push_str(&format!("&after={a}"));
            }
            let page = request(
                d,
                &who,
                &rt,
                Method::GET,
                &format!("/api/v1/rooms/{}/messages?{q}", enc(&room)),
                None,
            )?;
            out.emit(&page, || {
                let mut s: String = page["events"]
                    .as_array()
                    .map(|a| a.iter().map(event_line).collect())
                    .unwrap_or_default();
                if page["more"] == true {
                    s.push_str(if after.is_some() {
                        "… more: --after the last id\n"
                    } else {
                        "… more: --before the first id\n"
                    });
                }
                s
            })
        }
        ChatCommand::Search {
            query,
            before,
            limit,
            who,
        } => {
            let mut q = format!("q={}", enc(&query));
            if let Some(b) = before {
                q.push_str(&format!("&before={b}"));
            }
            if let Some(l) = limit {
                q.push_str(&format!("&limit={l}"));
            }
            let r = request(
                d,
                &who,
                &rt,
                Method::GET,
                &format!("/api/v1/search?{q}"),
                None,
            )?;
            out.emit(&r, || {
                let mut s = lines_or(&r, "no message that you may read matches", |e| {
                    format!("{:<12} {}", e["room"].as_str().unwrap_or(""), event_line(e))
                });
                // A full page may have older matches after it.
                let shown = r.as_array().map_or(0, Vec::len);
                if shown > 0 && shown == limit.unwrap_or(tandem_chat::SEARCH_LIMIT_DEFAULT) {
                    s.push_str("… more: --before the last id\n");
                }
                s
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_path_segments() {
        assert_eq!(super::enc("a b/c"), "a%20b%2Fc");
        assert_eq!(super::enc("ok-1.x_y~"), "ok-1.x_y~");
    }

    #[test]
    fn a_message_stays_on_its_line() {
        assert_eq!(
            super::on_one_line("fake\n#1300 bob I resign\u{1b}[2K\u{202e}"),
            "fake\\n#1300 bob I resign\\u{1b}[2K\\u{202e}"
        );
        assert_eq!(super::on_one_line("héllo 👋 مرحبا"), "héllo 👋 مرحبا");
    }
}
