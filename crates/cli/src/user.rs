//! `tandem user add|list|remove`: users live in their pool's user database; the CMS records
//! which pool each user is homed on. `add` prints the user's bearer token and keeps it beside
//! the topology so that `--as USER` works in later commands.

use crate::deployment::{Deployment, runtime};
use crate::output::Output;
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_node::ClientError;
use tandem_pool::cms::Claim;
use tandem_pool::users::{NewUser, UserInfo};
use tandem_topology::DATABASE_CMS;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user homed on POOL; prints the user's bearer token.
    Add {
        /// The user's name: 1 to 64 characters of a-z, 0-9, '.', '_' or '-', starting with a
        /// letter or digit.
        name: String,
        /// The pool the user is homed on (a pool of the topology).
        #[arg(long)]
        pool: String,
        /// A password for signing in over HTTP (without one, the token is the only way in).
        #[arg(long)]
        password: Option<String>,
    },
    /// List the users of every pool, or of one.
    List {
        /// Only the users homed on this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Remove a user and every token of theirs.
    Remove {
        /// The user's name.
        name: String,
    },
}

/// A user just created, with the bearer token that `add` keeps beside the topology.
#[derive(Serialize)]
pub(crate) struct Added {
    pub(crate) user: String,
    pub(crate) pool: String,
    pub(crate) token: String,
    /// Why the token could not be kept beside the topology (the user exists all the same);
    /// absent when it was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token_not_kept: Option<String>,
    /// Why the chat rooms could not be cleared of an earlier user of the name (the chat
    /// database did not answer: a lost site before the chat failover); absent when they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rooms_not_checked: Option<String>,
}

pub fn run(d: &Deployment, cmd: UserCommand, out: &Output) -> anyhow::Result<()> {
    let rt = runtime()?;
    let client = d.client();
    match cmd {
        UserCommand::Add {
            name,
            pool,
            password,
        } => {
            let report = rt.block_on(add(d, &name, &pool, password.as_deref()))?;
            out.emit(&report, || format!("{}\n", report.token))?;
            if let Some(why) = &report.rooms_not_checked {
                out.progress(&format!("tandem: warning: {why}"));
            }
            match &report.token_not_kept {
                None => Ok(()),
                Some(why) => bail!(
                    "user {name} was created on {pool} and its token printed, but the token \
                     could not be kept beside the topology ({why}): keep the printed token \
                     yourself, or `tandem user remove {name}` and add it again once that is fixed"
                ),
            }
        }
        UserCommand::List { pool } => {
            let pools: Vec<_> = match &pool {
                Some(p) => vec![pool_named(d, p)?.clone()],
                None => d.topology.pools.clone(),
            };
            let mut all: Vec<UserInfo> = Vec::new();
            // A pool that does not answer does not hide the others' users (it did: nothing was
            // listed); it is named, and the command fails once the rest is printed.
            let mut unlisted = Vec::new();
            for p in pools {
                let db = p.users_database();
                let listed = d.primary_address(&db).and_then(|(node, addr)| {
                    rt.block_on(client.call::<Vec<UserInfo>, _>(
                        &addr,
                        &db,
                        "users.list",
                        &json!({}),
                    ))
                    .with_context(|| format!("pool {} (database {db} on {node})", p.name))
                });
                match listed {
                    Ok(r) => all.extend(r.result),
                    Err(e) => unlisted.push(format!("{e:#}")),
                }
            }
            if !unlisted.is_empty() && all.is_empty() && pool.is_some() {
                bail!("{}", unlisted.join("; "));
            }
            out.emit(&all, || {
                if all.is_empty() {
                    return match &pool {
                        Some(p) => format!("no users in {p}\n"),
                        None => "no users\n".into(),
                    };
                }
                all.iter()
                    .map(|u| {
                        format!(
                            "{:<20} {:<10} {}\n",
                            u.name,
                            u.pool,
                            if u.has_password {
                                "password"
                            } else {
                                "token only"
                            }
                        )
                    })
                    .collect()
            })?;
            if !unlisted.is_empty() {
                bail!(
                    "the users of these pools are not listed: {}",
                    unlisted.join("; ")
                );
            }
            Ok(())
        }
        UserCommand::Remove { name } => {
            let (_, cms) = d.primary_address(DATABASE_CMS)?;
            let home = rt.block_on(client.call::<serde_json::Value, _>(
                &cms,
                DATABASE_CMS,
                "cms.home_of",
                &json!({ "user": name }),
            ))?;
            let Some(pool) = home.result["pool"].as_str().map(str::to_string) else {
                bail!("no user named {name}");
            };
            // First out of every chat room (a name given again later must not find the old
            // user's rooms, secret ones included): a chat database that does not answer stops
            // the removal here, with nothing removed.
            let chat = match &d.topology.chat {
                None => Forgotten::default(),
                Some(_) => rt.block_on(forget_in_chat(d, &name)).with_context(|| {
                    format!("cannot take {name} out of its chat rooms; nothing removed")
                })?,
            };
            let db = format!("users-{pool}");
            let (node, addr) = d.primary_address(&db)?;
            let removed = rt.block_on(client.call::<serde_json::Value, _>(
                &addr,
                &db,
                "users.remove",
                &json!({ "name": name }),
            ));
            // A home without its user is what a `user add` leaves when its pool did not say
            // whether it created the user: the removal goes on to the home, so that the name
            // can be given again.
            let was_in_pool = match removed {
                Ok(_) => true,
                Err(ClientError::Api { body, .. }) if body.code == "not_found" => false,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot remove {name} from {pool} (database {db} on {node}); it is \
                             out of its chat rooms and still a user of {pool}: run `tandem user \
                             remove {name}` again once that database answers"
                        )
                    });
                }
            };
            // Only the home on this pool: never one that another command gave the name since.
            rt.block_on(client.call::<serde_json::Value, _>(
                &cms,
                DATABASE_CMS,
                "cms.release_home",
                &json!({ "user": name, "pool": pool }),
            ))
            .with_context(|| {
                format!(
                    "{name} is removed from {pool} but its home there is still in the CMS: run \
                     `tandem user remove {name}` again"
                )
            })?;
            d.save_token(&name, None)?;
            if !was_in_pool {
                return out.emit(
                    &json!({ "removed": name, "pool": pool, "rooms_left": chat.rooms,
                             "rooms_handed_over": chat.handed_over,
                             "rooms_without_members": chat.without_members,
                             "was_in_pool": false }),
                    || {
                        format!(
                            "removed the home of {name} on {pool}; {pool} held no such user (a \
                             `user add` that did not finish)\n{}",
                            chat.lines(&name)
                        )
                    },
                );
            }
            out.emit(
                &json!({ "removed": name, "pool": pool, "rooms_left": chat.rooms,
                         "rooms_handed_over": chat.handed_over,
                         "rooms_without_members": chat.without_members,
                         "was_in_pool": true }),
                || {
                    let head = match chat.rooms.len() {
                        0 => format!("removed {name} from {pool}\n"),
                        n => format!("removed {name} from {pool} and from {n} chat room(s)\n"),
                    };
                    head + &chat.lines(&name)
                },
            )
        }
    }
}

/// The topology's pool `pool`, or an error that lists the pools there are.
fn pool_named<'a>(d: &'a Deployment, pool: &str) -> anyhow::Result<&'a tandem_topology::Pool> {
    d.topology.pool(pool).with_context(|| {
        let pools: Vec<&str> = d.topology.pools.iter().map(|p| p.name.as_str()).collect();
        format!("no pool named {pool} (pools: {})", pools.join(", "))
    })
}

/// The CMS's answer to `cms.claim_home`.
#[derive(Deserialize)]
struct Claimed {
    claim: Claim,
}

/// Creates `name` homed on `pool` and keeps its token beside the topology (`token_not_kept`
/// says why not, the user created all the same).
///
/// The home is claimed in the CMS first, in one transaction that refuses a name homed on
/// another pool: of two commands adding one name to two pools at once, one claims it and the
/// other stops there with nothing written. (Reading the home, then setting it, let both
/// through: each pool held the user, and the token of the one not homed signed in nobody.)
/// A claim this command made is taken back when the pool surely did not create the user; of
/// two commands adding one name to the same pool, the pool's user database refuses the second.
pub(crate) async fn add(
    d: &Deployment,
    name: &str,
    pool: &str,
    password: Option<&str>,
) -> anyhow::Result<Added> {
    let p = pool_named(d, pool)?;
    tandem_pool::users::validate_name(name)?;
    // The pool checks the password too, but only after the home is claimed: checked here, a
    // password it would refuse never gives the name a home, not even for a moment.
    if let Some(password) = password {
        tandem_pool::users::validate_password(password)?;
    }
    let client = d.client();
    let (cms_node, cms) = d.find_primary(DATABASE_CMS).await?;
    let users_db = p.users_database();
    let (users_node, users) = d.find_primary(&users_db).await?;
    let claim = client
        .call::<Claimed, _>(
            &cms,
            DATABASE_CMS,
            "cms.claim_home",
            &json!({ "user": name, "pool": pool }),
        )
        .await;
    let claimed = match claim {
        Ok(answer) => answer.result.claim == Claim::Claimed,
        Err(ClientError::Api { body, .. }) if body.code == "conflict" => bail!(
            "{}: choose another name, or remove that user first (`tandem user remove {name}`); \
             nothing changed",
            body.message
        ),
        Err(e) => return Err(e).with_context(|| format!("the CMS on {cms_node}")),
    };
    // A name given again starts with nothing of the user that had it before — also what the
    // removal could not take back: a room that a chat node, still following a CMS that homed
    // the removed user, added it to just after. Taken before the new user exists.
    // A chat database that does not answer (its site lost, the chat not failed over yet) does
    // not stop the add: the user is created, and the report says what was not checked.
    let rooms_not_checked = match d.topology.chat {
        Some(_) if claimed => forget_in_chat(d, name).await.err().map(|e| {
            format!(
                "the chat rooms were not cleared of any earlier user named {name} ({e:#}): if \
                 one was removed in the last seconds, `tandem user remove {name}` and add it \
                 again once the chat database answers"
            )
        }),
        _ => None,
    };
    let added = client
        .call::<NewUser, _>(
            &users,
            &users_db,
            "users.add",
            &json!({ "name": name, "pool": pool, "password": password }),
        )
        .await;
    let added = match added {
        Ok(r) => r.result,
        // The user is there already (another command added it first): the home is its.
        Err(ClientError::Api { body, .. }) if body.code == "conflict" => {
            bail!("{} on {pool}: nothing changed", body.message)
        }
        Err(e) if surely_not_done(&e) => {
            let refused = format!("{users_db} on {users_node} did not create {name}: {e}");
            if !claimed {
                bail!("{refused}; nothing changed");
            }
            return Err(take_back(d, (&cms_node, &cms), name, pool, refused).await);
        }
        Err(e) => bail!(
            "{users_db} on {users_node} did not answer whether it created {name} ({e}); {name} \
             stays homed on {pool} in the CMS: run this `tandem user add` again (it finishes, \
             or says the user exists), or `tandem user remove {name}`"
        ),
    };
    let token = tandem_node::user_token(&added.name, &added.token);
    let token_not_kept = d
        .save_token(&added.name, Some(&token))
        .err()
        .map(|e| format!("{e:#}"));
    Ok(Added {
        user: added.name,
        pool: added.pool,
        token,
        token_not_kept,
        rooms_not_checked,
    })
}

/// What `chat.forget_user` did: the rooms left, those whose management passed to another
/// member (the user was their last manager), those left without any member. A node of an
/// older build answers `rooms` only.
#[derive(Default, Deserialize, Serialize)]
struct Forgotten {
    rooms: Vec<String>,
    #[serde(default)]
    handed_over: Vec<Handover>,
    #[serde(default)]
    without_members: Vec<String>,
}

#[derive(Deserialize, Serialize)]
struct Handover {
    room: String,
    manager: String,
}

impl Forgotten {
    /// A line per room whose management changed hands or that no one is left in.
    fn lines(&self, name: &str) -> String {
        let mut s = String::new();
        for h in &self.handed_over {
            s.push_str(&format!(
                "room {}: {} manages it now ({name} was its last manager)\n",
                h.room, h.manager
            ));
        }
        for room in &self.without_members {
            s.push_str(&format!(
                "room {room}: no member left ({name} was the last); `tandem chat room add-member \
                 {room} USER --manager --as-operator` gives it a manager\n"
            ));
        }
        s
    }
}

/// Takes `name` out of every chat room (`chat.forget_user`), handing the rooms it was the last
/// manager of to another member: on the copy of mgc the chat pool uses now, the backup site's
/// once failed over (until session 34 the topology's primary was asked, and a failed-over pool
/// refused every removal: "mgc on atl-db1 is standby").
async fn forget_in_chat(d: &Deployment, name: &str) -> anyhow::Result<Forgotten> {
    crate::chat::chat_database_call(d, "chat.forget_user", &json!({ "member": name })).await
}

/// The error of an add refused after its home was claimed, once the home is taken back (or
/// saying how to take it back).
async fn take_back(
    d: &Deployment,
    (cms_node, cms): (&str, &str),
    name: &str,
    pool: &str,
    refused: String,
) -> anyhow::Error {
    let released = d
        .client()
        .call::<serde_json::Value, _>(
            cms,
            DATABASE_CMS,
            "cms.release_home",
            &json!({ "user": name, "pool": pool }),
        )
        .await;
    match released {
        Ok(_) => anyhow::anyhow!("{refused}; its home in the CMS was taken back: nothing changed"),
        Err(r) => anyhow::anyhow!(
            "{refused}; the home this command gave it in the CMS could not be taken back (the \
             CMS on {cms_node}: {r}): `tandem user remove {name}` removes it"
        ),
    }
}

/// True when a call that failed surely changed nothing: the node answered with a refusal, or
/// the request never reached it. A request sent without an answer may have been carried out.
fn surely_not_done(e: &ClientError) -> bool {
    match e {
        ClientError::Api { .. } => true,
        ClientError::Unreachable { sent, .. } => !sent,
        ClientError::Decode { .. } | ClientError::Local { .. } => false,
    }
}
