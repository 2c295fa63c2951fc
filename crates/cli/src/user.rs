//! `tandem user add|list|remove`: users live in their pool's user database; the CMS records
//! which pool each user is homed on. `add` prints the user's bearer token and keeps it beside
//! the topology so that `--as USER` works in later commands.

use crate::deployment::{Deployment, runtime};
use crate::output::Output;
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;
use serde_json::json;
use tandem_pool::users::{NewUser, UserInfo};
use tandem_topology::{DATABASE_CMS, DATABASE_MGC};

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
            out.emit(&report, || format!("{}\n", report.token))
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
            let rooms = match &d.topology.chat {
                None => Vec::new(),
                Some(_) => {
                    let (mgc_node, mgc) = d.primary_address(DATABASE_MGC)?;
                    let r = rt
                        .block_on(client.call::<serde_json::Value, _>(
                            &mgc,
                            DATABASE_MGC,
                            "chat.forget_user",
                            &json!({ "member": name }),
                        ))
                        .with_context(|| {
                            format!(
                                "cannot take {name} out of its chat rooms (mgc on {mgc_node}); \
                                 nothing removed"
                            )
                        })?;
                    r.result["rooms"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default()
                }
            };
            let db = format!("users-{pool}");
            let (_, addr) = d.primary_address(&db)?;
            rt.block_on(async {
                client
                    .call::<serde_json::Value, _>(
                        &addr,
                        &db,
                        "users.remove",
                        &json!({ "name": name }),
                    )
                    .await?;
                client
                    .call::<serde_json::Value, _>(
                        &cms,
                        DATABASE_CMS,
                        "cms.remove_home",
                        &json!({ "user": name }),
                    )
                    .await?;
                Ok::<_, anyhow::Error>(())
            })?;
            d.save_token(&name, None)?;
            out.emit(
                &json!({ "removed": name, "pool": pool, "rooms_left": rooms }),
                || match rooms.len() {
                    0 => format!("removed {name} from {pool}\n"),
                    n => format!("removed {name} from {pool} and from {n} chat room(s)\n"),
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

/// Creates `name` homed on `pool` (recording the home in the CMS first, undone when the pool
/// refuses the user) and keeps its token beside the topology.
pub(crate) async fn add(
    d: &Deployment,
    name: &str,
    pool: &str,
    password: Option<&str>,
) -> anyhow::Result<Added> {
    let p = pool_named(d, pool)?;
    tandem_pool::users::validate_name(name)?;
    let client = d.client();
    let (cms_node, cms) = d.find_primary(DATABASE_CMS).await?;
    let users_db = p.users_database();
    let (_, users) = d.find_primary(&users_db).await?;
    let home = client
        .call::<serde_json::Value, _>(&cms, DATABASE_CMS, "cms.home_of", &json!({ "user": name }))
        .await
        .with_context(|| format!("the CMS on {cms_node}"))?;
    if let Some(other) = home.result["pool"].as_str()
        && other != pool
    {
        bail!("{name} is already homed on {other}");
    }
    client
        .call::<serde_json::Value, _>(
            &cms,
            DATABASE_CMS,
            "cms.set_home",
            &json!({ "user": name, "pool": pool }),
        )
        .await
        .with_context(|| format!("the CMS on {cms_node}"))?;
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
        Err(e) => {
            // No user, no home: undo the home this command just recorded.
            if home.result["pool"].as_str().is_none() {
                let _ = client
                    .call::<serde_json::Value, _>(
                        &cms,
                        DATABASE_CMS,
                        "cms.remove_home",
                        &json!({ "user": name }),
                    )
                    .await;
            }
            return Err(e.into());
        }
    };
    let token = tandem_node::user_token(&added.name, &added.token);
    d.save_token(&added.name, Some(&token))?;
    Ok(Added {
        user: added.name,
        pool: added.pool,
        token,
    })
}
