//! The rules of a deployment. `validate` turns the file as TOML read it into a `Topology`, or
//! refuses it with the first rule broken, naming the line of the offending value.
//!
//! Checks run section by section in file order (deployment, sites, nodes, pools, chat, CMS,
//! witnesses); a reference is checked where it is written, so its line is the one reported.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Bound;
use std::path::{Component, Path, PathBuf};

use crate::error::{Source, TopologyError, cut};
use crate::file::{self, Text};
use crate::topology::{
    CHAT_ACTIVE_MAX, CHAT_SERVERS_MAX, CHAT_SESSION_PING_MS_DEFAULT, CHAT_SESSION_PING_MS_MAX,
    CHAT_SESSION_PING_MS_MIN, ChatPool, Cms, Node, Pool, Role, Topology,
};

/// Names of sites, nodes, pools and the deployment are at most this long (they become file and
/// directory names).
pub(crate) const NAME_BYTES_MAX: usize = 63;
/// The cluster secret has at least this many bytes.
pub(crate) const SECRET_BYTES_MIN: usize = 32;
/// ... and at most this many.
pub(crate) const SECRET_BYTES_MAX: usize = 1024;
/// Paths written in the topology (share, data directories) are at most this long.
pub(crate) const PATH_BYTES_MAX: usize = 4096;

type Result<T> = std::result::Result<T, TopologyError>;

#[cfg(test)]
mod tests;

/// Applies every rule to `file`, read from `source`.
pub(crate) fn validate(file: file::File, source: &Source) -> Result<Topology> {
    let dir = directory_of(source.path);
    let Some(deployment) = file.deployment else {
        return Err(source.rule(
            0..0,
            "deployment",
            "the file has no [deployment] section",
            "a topology starts with [deployment] and its name, secret and share",
        ));
    };
    check_name(source, &deployment.name, "deployment.name")?;
    check_secret(source, &deployment.secret)?;
    let share = check_share(source, &deployment.share, &dir)?;
    let sites = check_sites(source, &file.site)?;
    let nodes = check_nodes(source, &file.node, &sites, &dir, &share)?;
    let refs = Refs {
        source,
        nodes: &nodes,
    };
    let pools = check_pools(&refs, &file.pool, &sites)?;
    let chat = file
        .chat
        .as_ref()
        .map(|chat| check_chat(&refs, chat))
        .transpose()?;
    let Some(cms) = file.cms.as_ref() else {
        // Point at the last line, where the section would be added.
        let end = source.text.trim_end().len();
        return Err(source.rule(
            end..end,
            "cms",
            "the file has no [cms] section",
            "every deployment has a Central Management Store: add [cms] with primary = \"<db node>\"",
        ));
    };
    let cms = check_cms(&refs, cms)?;
    let witnesses = check_witnesses(&refs, &file.witness, &sites)?;
    check_witnessed(
        &refs,
        &file.pool,
        file.chat.as_ref(),
        file.cms.as_ref(),
        &witnesses,
    )?;
    let mut mirroring = crate::topology::MirroringSettings::default();
    if let Some(n) = file
        .mirroring
        .as_ref()
        .and_then(|m| m.journal_records_max.as_ref())
    {
        let min = crate::topology::MIRROR_JOURNAL_RECORDS_MIN;
        if *n.get_ref() < min as i64 {
            return Err(source.rule(
                n.span(),
                "mirroring.journal_records_max",
                format!("{} records is too few", n.get_ref()),
                format!(
                    "keep at least {min} journal records for a mirror that is away (it is reseeded when further behind)"
                ),
            ));
        }
        mirroring.journal_records_max = *n.get_ref() as u64;
    }
    Ok(Topology {
        name: deployment.name.into_inner(),
        secret: deployment.secret.into_inner(),
        share,
        dir,
        sites,
        nodes,
        pools,
        chat,
        cms,
        witnesses,
        mirroring,
    })
}

/// The directory relative paths of the topology are resolved against: the file's parent, or `.`.
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn resolve(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

fn check_name(source: &Source, name: &Text, key: &str) -> Result<()> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text.len() <= NAME_BYTES_MAX
        && text.as_bytes()[0].is_ascii_alphanumeric()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        return Ok(());
    }
    let problem = if text.len() > NAME_BYTES_MAX {
        format!("{:?} is {} bytes long", cut(text), text.len())
    } else {
        format!("{:?} is not a valid name", cut(text))
    };
    Err(source.rule(
        name.span(),
        key,
        problem,
        format!(
            "a name is 1 to {NAME_BYTES_MAX} ASCII letters, digits, '-' or '_', starting with a letter or digit"
        ),
    ))
}

/// Refuses a second use of a name, naming the line of the first.
fn check_unique<'a>(
    source: &Source,
    seen: &mut HashMap<&'a str, usize>,
    name: &'a Text,
    key: &str,
    what: &str,
) -> Result<()> {
    let line = source.line_at(name.span().start);
    if let Some(first) = seen.insert(name.get_ref(), line) {
        return Err(source.rule(
            name.span(),
            key,
            format!(
                "{what} {} is declared twice (first at line {first})",
                cut(name.get_ref())
            ),
            format!("{what} names are unique: rename one of them"),
        ));
    }
    Ok(())
}

fn check_secret(source: &Source, secret: &Text) -> Result<()> {
    let text = secret.get_ref();
    let rule = format!(
        "the cluster secret is hex of at least {SECRET_BYTES_MIN} bytes (at most {SECRET_BYTES_MAX}); generate one, e.g. `openssl rand -hex 32`"
    );
    let problem = if let Some(position) = text.bytes().position(|b| !b.is_ascii_hexdigit()) {
        // Name the position, never the secret.
        format!(
            "character {} of the secret is not a hex digit",
            position + 1
        )
    } else if !text.len().is_multiple_of(2) {
        format!(
            "the secret has an odd number of hex digits ({})",
            text.len()
        )
    } else if text.len() / 2 < SECRET_BYTES_MIN {
        format!("the secret is only {} bytes", text.len() / 2)
    } else if text.len() / 2 > SECRET_BYTES_MAX {
        format!("the secret is {} bytes", text.len() / 2)
    } else {
        return Ok(());
    };
    Err(source.rule(secret.span(), "deployment.secret", problem, rule))
}

fn check_share(source: &Source, share: &Text, dir: &Path) -> Result<PathBuf> {
    let refuse = |problem: String, rule: &str| {
        Err(source.rule(share.span(), "deployment.share", problem, rule))
    };
    let text = share.get_ref();
    if text.is_empty() {
        return refuse(
            "the share is empty".to_string(),
            "the share is a directory (relative to the topology's directory) or a file:// URL that every site reaches",
        );
    }
    if text.len() > PATH_BYTES_MAX {
        return refuse(
            format!("the share is {} bytes long", text.len()),
            &format!("a path is at most {PATH_BYTES_MAX} bytes"),
        );
    }
    if let Some(rest) = text.strip_prefix("file://") {
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        if !rest.starts_with('/') {
            return refuse(
                format!(
                    "{:?} does not name an absolute path on this machine",
                    cut(text)
                ),
                "a file:// URL names an absolute local path, e.g. file:///srv/tandem/share",
            );
        }
        let Some(decoded) = percent_decode(rest) else {
            return refuse(
                format!("{:?} holds a malformed %-escape", cut(text)),
                "a file:// URL escapes a byte as % and two hex digits, e.g. %20 for a space",
            );
        };
        return Ok(PathBuf::from(decoded));
    }
    if text.contains("://") {
        return refuse(
            format!(
                "{:?} is a URL of a kind tandem does not support yet",
                cut(text)
            ),
            "the share is a directory path or a file:// URL",
        );
    }
    Ok(resolve(dir, Path::new(text)))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn check_sites(source: &Source, sites: &[file::Site]) -> Result<Vec<String>> {
    if sites.is_empty() {
        return Err(source.rule(
            0..0,
            "site",
            "no [[site]] is declared",
            "a topology declares at least one site: [[site]] name = \"...\"",
        ));
    }
    let mut seen = HashMap::new();
    for site in sites {
        check_name(source, &site.name, "site.name")?;
        check_unique(source, &mut seen, &site.name, "site.name", "site")?;
    }
    Ok(sites
        .iter()
        .map(|site| site.name.get_ref().clone())
        .collect())
}

fn check_nodes(
    source: &Source,
    nodes: &[file::Node],
    sites: &[String],
    dir: &Path,
    share: &Path,
) -> Result<Vec<Node>> {
    let mut names = HashMap::new();
    // Port -> the addresses of the nodes checked so far on that port, with their lines.
    let mut ports: HashMap<u16, Vec<(Listen, usize, &str)>> = HashMap::new();
    // Lexical data directory -> (as resolved, node), ordered by components so that the
    // directories under one are next to it.
    let mut data_dirs: BTreeMap<PathBuf, (PathBuf, &str)> = BTreeMap::new();
    let share_lexical = lexical(share);
    let mut checked = Vec::with_capacity(nodes.len());
    for node in nodes {
        let name = node.name.get_ref();
        check_name(source, &node.name, "node.name")?;
        check_unique(source, &mut names, &node.name, "node.name", "node")?;
        check_site(
            source,
            &node.site,
            "node.site",
            &format!("node {name}"),
            sites,
        )?;

        let listen = parse_address(node.address.get_ref()).map_err(|problem| {
            source.rule(
                node.address.span(),
                "node.address",
                format!("node {name}: {problem}"),
                "an address is host:port: an IP address (IPv6 in brackets) or a host name, and a port from 1 to 65535",
            )
        })?;
        let line = source.line_at(node.address.span().start);
        let on_port = ports.entry(listen.port).or_default();
        for (first, first_line, first_name) in on_port.iter() {
            let Some(why) = listen.clashes_with(first) else {
                continue;
            };
            let address = cut(node.address.get_ref());
            let problem = if first.key == listen.key {
                format!(
                    "node {name} listens on {address}, as node {first_name} does (line {first_line})"
                )
            } else {
                format!(
                    "node {name} listens on {address} and node {first_name} on {} (line {first_line}): {why}",
                    first.written
                )
            };
            return Err(source.rule(
                node.address.span(),
                "node.address",
                problem,
                "each node listens on its own address: give one of them another port",
            ));
        }
        on_port.push((listen, line, name));

        let mut roles = std::collections::BTreeSet::new();
        if node.roles.get_ref().is_empty() {
            return Err(source.rule(
                node.roles.span(),
                "node.roles",
                format!("node {name} has no role"),
                "a node has one or more roles among db, frontend, chat, witness",
            ));
        }
        for role in node.roles.get_ref() {
            let parsed: Role = role.get_ref().parse().map_err(|_| {
                source.rule(
                    role.span(),
                    "node.roles",
                    format!("node {name}: {:?} is not a role", cut(role.get_ref())),
                    "a role is one of db, frontend, chat, witness",
                )
            })?;
            if !roles.insert(parsed) {
                return Err(source.rule(
                    role.span(),
                    "node.roles",
                    format!("node {name} lists the role {parsed} twice"),
                    "list each role of a node once",
                ));
            }
        }

        let data_dir = match &node.data {
            None => dir.join("data").join(name),
            Some(data) if data.get_ref().is_empty() || data.get_ref().len() > PATH_BYTES_MAX => {
                return Err(source.rule(
                    data.span(),
                    "node.data",
                    format!("node {name}: the data directory is empty or too long"),
                    format!(
                        "a data directory is a path of 1 to {PATH_BYTES_MAX} bytes, relative to the topology's directory; leave it out for data/<node name>"
                    ),
                ));
            }
            Some(data) => resolve(dir, Path::new(data.get_ref())),
        };
        let span = node.data.as_ref().map_or(node.name.span(), |d| d.span());
        let refuse = |problem: String, rule: &str| {
            Err(source.rule(span.clone(), "node.data", problem, rule))
        };
        let shown = |path: &Path| cut(&path.display().to_string());
        let apart = "each node has its own data directory, and none is inside another's: \
                     a node's files would mix with another's";
        // Compared lexically, as written and resolved against the topology's directory: the
        // directories need not exist yet, and a check that followed links would pass or fail
        // with the state of the disk. `a/../b` is taken as `b`.
        let lexical_dir = lexical(&data_dir);
        if let Some((_, first)) = data_dirs.get(&lexical_dir) {
            return refuse(
                format!(
                    "node {name} keeps its data in {}, as node {first} does",
                    shown(&data_dir)
                ),
                apart,
            );
        }
        // A directory that holds this one is one of its ancestors.
        if let Some((outer, first)) = lexical_dir
            .ancestors()
            .skip(1)
            .find_map(|ancestor| data_dirs.get(ancestor))
        {
            return refuse(
                format!(
                    "node {name} keeps its data in {}, inside node {first}'s data directory {}",
                    shown(&data_dir),
                    shown(outer)
                ),
                apart,
            );
        }
        // A directory this one holds comes right after it in the order of components.
        if let Some((_, (inner, first))) = data_dirs
            .range::<Path, _>((Bound::Excluded(lexical_dir.as_path()), Bound::Unbounded))
            .next()
            .filter(|(other, _)| other.starts_with(&lexical_dir))
        {
            return refuse(
                format!(
                    "node {name} keeps its data in {}, which holds node {first}'s data directory {}",
                    shown(&data_dir),
                    shown(inner)
                ),
                apart,
            );
        }
        let overlap = if lexical_dir.starts_with(&share_lexical) {
            Some("inside the share")
        } else if share_lexical.starts_with(&lexical_dir) {
            Some("which holds the share")
        } else {
            None
        };
        if let Some(overlap) = overlap {
            return refuse(
                format!(
                    "node {name} keeps its data in {}, {overlap} {}",
                    shown(&data_dir),
                    shown(share)
                ),
                "a data directory and the share (deployment.share) are apart: every site's nodes \
                 write backups into the share and move its files, a node's data directory is its own",
            );
        }
        data_dirs.insert(lexical_dir, (data_dir.clone(), name));

        checked.push(Node {
            name: name.clone(),
            site: node.site.get_ref().clone(),
            address: node.address.get_ref().clone(),
            roles,
            data_dir,
        });
    }
    Ok(checked)
}

fn check_site(
    source: &Source,
    site: &Text,
    key: &str,
    whose: &str,
    sites: &[String],
) -> Result<()> {
    if sites.iter().any(|s| s == site.get_ref()) {
        return Ok(());
    }
    Err(source.rule(
        site.span(),
        key,
        format!(
            "{whose} is in site {}, which no [[site]] declares",
            cut(site.get_ref())
        ),
        format!(
            "a site must be one of the declared sites ({}): declare it or fix the name",
            sites.join(", ")
        ),
    ))
}

/// Where a node listens, as far as it can be told from the text, without resolving names.
struct Listen {
    /// The address as written, for messages.
    written: String,
    /// The address spelled one way, equal for two spellings of one address (`LOCALHOST:9` and
    /// `localhost:9`, `[::1]:9` and `[0:0:0:0:0:0:0:1]:9`).
    key: String,
    host: Host,
    port: u16,
}

#[derive(PartialEq, Eq)]
enum Host {
    /// `0.0.0.0` or `[::]`: every address of the machine.
    Any,
    /// `localhost`, `127.0.0.1` or `[::1]`.
    Loopback,
    /// Any other IP address or host name.
    Other,
}

impl Listen {
    /// Why `self` and `other` cannot both listen, if they cannot.
    ///
    /// Kept simple, without resolving names or asking the kernel: a wildcard takes its port on
    /// every address, so it clashes with any address on that port; and the loopback names are
    /// taken as one address, since `localhost` resolves to `127.0.0.1` or `::1` and a client of
    /// either finds whichever node bound it first. Two other hosts may still be one machine
    /// (a name and its IP address): that is left to the operator.
    fn clashes_with(&self, other: &Listen) -> Option<&'static str> {
        if self.port != other.port {
            return None;
        }
        if self.key == other.key {
            return Some("the same address");
        }
        if self.host == Host::Any || other.host == Host::Any {
            return Some("0.0.0.0 and [::] take their port on every address of the machine");
        }
        if self.host == Host::Loopback && other.host == Host::Loopback {
            return Some("localhost, 127.0.0.1 and [::1] are all this machine's loopback");
        }
        None
    }
}

/// Checks `host:port`.
fn parse_address(written: &str) -> std::result::Result<Listen, String> {
    let text = cut(written);
    if let Ok(address) = written.parse::<SocketAddr>() {
        if address.port() == 0 {
            return Err(format!("{text:?} has port 0"));
        }
        let ip = address.ip();
        let host = if ip.is_unspecified() {
            Host::Any
        } else if ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST) {
            Host::Loopback
        } else {
            Host::Other
        };
        return Ok(Listen {
            written: written.to_string(),
            key: address.to_string(),
            host,
            port: address.port(),
        });
    }
    let Some((host, port)) = written.rsplit_once(':') else {
        return Err(format!("{text:?} has no :port"));
    };
    let port: u16 = match port.parse() {
        Ok(0) => return Err(format!("{text:?} has port 0")),
        Ok(port) => port,
        Err(_) => return Err(format!("{text:?} has no valid port after ':'")),
    };
    let label_valid = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let looks_like_ipv4 = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if host.is_empty() || host.len() > 253 || looks_like_ipv4 || !host.split('.').all(label_valid) {
        return Err(format!("{text:?} has no valid host before ':{port}'"));
    }
    let host = host.to_ascii_lowercase();
    Ok(Listen {
        written: written.to_string(),
        key: format!("{host}:{port}"),
        host: if host == "localhost" {
            Host::Loopback
        } else {
            Host::Other
        },
        port,
    })
}

/// `path` with `.` left out and each `..` taking the component before it away, without looking
/// at the disk (a `..` at the start of a relative path, or after the root, stays or goes as the
/// operating system would take it: kept, or dropped after the root).
fn lexical(path: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(component),
            },
            _ => out.push(component),
        }
    }
    // An empty path for the current directory itself, so that every relative path starts with it.
    out.iter().collect()
}

/// Looks up the nodes that sections name.
struct Refs<'a> {
    source: &'a Source<'a>,
    nodes: &'a [Node],
}

impl<'a> Refs<'a> {
    fn rule(
        &self,
        at: &Text,
        key: &str,
        problem: impl Into<String>,
        rule: impl Into<String>,
    ) -> TopologyError {
        self.source.rule(at.span(), key, problem, rule)
    }

    /// The node `name` names, with `role`; `what` says what the node is for, in the error.
    fn node(&self, name: &Text, key: &str, role: Role, what: &str) -> Result<&'a Node> {
        let Some(node) = self.nodes.iter().find(|n| &n.name == name.get_ref()) else {
            return Err(self.rule(
                name,
                key,
                format!("node {} is not declared", cut(name.get_ref())),
                "every node named in the topology needs a [[node]] with that name: add it or fix the name",
            ));
        };
        if !node.has(role) {
            let roles: Vec<&str> = node.roles.iter().map(|r| r.as_str()).collect();
            return Err(self.rule(
                name,
                key,
                format!(
                    "{name} does not have the {role} role (its roles: {})",
                    roles.join(", ")
                ),
                format!("{what} must be a node with the {role} role"),
            ));
        }
        Ok(node)
    }

    /// Refuses `name` when it is already one of `taken` (what, node), so copies stay distinct.
    fn distinct(&self, name: &Text, key: &str, taken: &[(&str, &str)], rule: &str) -> Result<()> {
        if let Some((what, _)) = taken.iter().find(|(_, node)| node == name.get_ref()) {
            return Err(self.rule(name, key, format!("{name} already holds the {what}"), rule));
        }
        Ok(())
    }

    /// Refuses `node` (named by `name`) unless it is in `site`, which is where `anchor` is.
    fn same_site(
        &self,
        name: &Text,
        key: &str,
        node: &Node,
        site: &str,
        anchor: &str,
        rule: &str,
    ) -> Result<()> {
        if node.site == site {
            return Ok(());
        }
        Err(self.rule(
            name,
            key,
            format!(
                "{name} is in site {}, not in the site of {anchor} ({site})",
                node.site
            ),
            rule,
        ))
    }

    /// Refuses `node` (named by `name`) when it is in `site`, which is where `anchor` is.
    fn other_site(
        &self,
        name: &Text,
        key: &str,
        node: &Node,
        site: &str,
        anchor: &str,
        rule: &str,
    ) -> Result<()> {
        if node.site != site {
            return Ok(());
        }
        Err(self.rule(
            name,
            key,
            format!("{name} is in site {site}, like {anchor}"),
            rule,
        ))
    }
}

fn check_pools(refs: &Refs, pools: &[file::Pool], sites: &[String]) -> Result<Vec<Pool>> {
    let source = refs.source;
    let mut names = HashMap::new();
    // Frontend node -> the pool that has it.
    let mut homes: HashMap<&str, &str> = HashMap::new();
    for pool in pools {
        let name = pool.name.get_ref();
        check_name(source, &pool.name, "pool.name")?;
        check_unique(source, &mut names, &pool.name, "pool.name", "pool")?;
        check_site(
            source,
            &pool.site,
            "pool.site",
            &format!("pool {name}"),
            sites,
        )?;
        let site = pool.site.get_ref();

        if pool.frontends.get_ref().is_empty() {
            return Err(source.rule(
                pool.frontends.span(),
                "pool.frontends",
                format!("pool {name} has no front end"),
                "a pool has at least one node with the frontend role, in its site",
            ));
        }
        for frontend in pool.frontends.get_ref() {
            let node = refs.node(
                frontend,
                "pool.frontends",
                Role::Frontend,
                "a pool's front end",
            )?;
            refs.same_site(
                frontend,
                "pool.frontends",
                node,
                site,
                &format!("pool {name}"),
                "a pool's front ends are in the pool's site",
            )?;
            if let Some(home) = homes.insert(&node.name, name) {
                let problem = if home == name {
                    format!("pool {name} lists {frontend} twice")
                } else {
                    format!("{frontend} is already a front end of pool {home}")
                };
                return Err(refs.rule(
                    frontend,
                    "pool.frontends",
                    problem,
                    "a front-end node serves exactly one pool, listed once",
                ));
            }
        }

        let primary = refs.node(
            &pool.primary,
            "pool.primary",
            Role::Db,
            "a pool's user database primary",
        )?;
        refs.same_site(
            &pool.primary,
            "pool.primary",
            primary,
            site,
            &format!("pool {name}"),
            "a pool's user database primary is in the pool's site",
        )?;
        if let Some(mirror_name) = &pool.mirror {
            let mirror = refs.node(
                mirror_name,
                "pool.mirror",
                Role::Db,
                "a pool's user database mirror",
            )?;
            refs.distinct(
                mirror_name,
                "pool.mirror",
                &[("primary of the pool's user database", primary.name.as_str())],
                "a mirror is another node than its primary",
            )?;
            refs.same_site(
                mirror_name,
                "pool.mirror",
                mirror,
                &primary.site,
                &format!("the pool's primary {}", primary.name),
                "a synchronous mirror is in the same site as its primary",
            )?;
        }
    }
    check_pairs(refs, pools)?;
    Ok(pools
        .iter()
        .map(|pool| Pool {
            name: pool.name.get_ref().clone(),
            site: pool.site.get_ref().clone(),
            frontends: texts(pool.frontends.get_ref()),
            pair: pool.pair.as_ref().map(|p| p.get_ref().clone()),
            primary: pool.primary.get_ref().clone(),
            mirror: pool.mirror.as_ref().map(|m| m.get_ref().clone()),
        })
        .collect())
}

/// Pairs name an existing pool, in another site, that names this pool back.
fn check_pairs(refs: &Refs, pools: &[file::Pool]) -> Result<()> {
    let find = |name: &str| pools.iter().find(|p| p.name.get_ref() == name);
    for pool in pools {
        let Some(pair) = &pool.pair else { continue };
        let name = pool.name.get_ref();
        let Some(other) = find(pair.get_ref()) else {
            return Err(refs.rule(
                pair,
                "pool.pair",
                format!(
                    "pool {name} is paired with pool {}, which is not declared",
                    cut(pair.get_ref())
                ),
                "a pool is paired with another declared [[pool]]: add it or fix the name",
            ));
        };
        if other.name.get_ref() == name {
            return Err(refs.rule(
                pair,
                "pool.pair",
                format!("pool {name} is paired with itself"),
                "a pool is paired with a pool of another site",
            ));
        }
        if other.site.get_ref() == pool.site.get_ref() {
            return Err(refs.rule(
                pair,
                "pool.pair",
                format!(
                    "pool {name} is paired with pool {pair}, a pool of the same site ({})",
                    pool.site
                ),
                "a pool is paired with a pool of another site, so that losing one site leaves the pair",
            ));
        }
        let back = other.pair.as_ref().map(|p| p.get_ref().as_str());
        if back != Some(name.as_str()) {
            let problem = match back {
                None => format!("pool {name} is paired with pool {pair}, which has no pair"),
                Some(back) => {
                    format!(
                        "pool {name} is paired with pool {pair}, which is paired with pool {back}"
                    )
                }
            };
            return Err(refs.rule(
                pair,
                "pool.pair",
                problem,
                format!("pairing is symmetric: set pair = \"{name}\" in pool {pair}"),
            ));
        }
    }
    Ok(())
}

fn texts(list: &[Text]) -> Vec<String> {
    list.iter().map(|t| t.get_ref().clone()).collect()
}

fn check_chat(refs: &Refs, chat: &file::Chat) -> Result<ChatPool> {
    let source = refs.source;
    let servers = chat.servers.get_ref();
    if servers.is_empty() || servers.len() > CHAT_SERVERS_MAX {
        return Err(source.rule(
            chat.servers.span(),
            "chat.servers",
            format!("the chat pool lists {} servers", servers.len()),
            format!("a chat pool has 1 to {CHAT_SERVERS_MAX} servers"),
        ));
    }
    for (i, server) in servers.iter().enumerate() {
        refs.node(server, "chat.servers", Role::Chat, "a chat server")?;
        if servers[..i].contains(server) {
            return Err(refs.rule(
                server,
                "chat.servers",
                format!("{server} is listed twice"),
                "list each chat server once",
            ));
        }
    }

    let primary = refs.node(&chat.primary, "chat.primary", Role::Db, "the chat primary")?;
    let mut taken = vec![("chat primary", primary.name.as_str())];
    let distinct = "the chat primary, mirror, backup and backup mirror are distinct nodes";
    if let Some(name) = &chat.mirror {
        let mirror = refs.node(name, "chat.mirror", Role::Db, "the chat mirror")?;
        refs.distinct(name, "chat.mirror", &taken, distinct)?;
        refs.same_site(
            name,
            "chat.mirror",
            mirror,
            &primary.site,
            &format!("the chat primary {}", primary.name),
            "the chat mirror is in the same site as the chat primary",
        )?;
        taken.push(("chat mirror", &mirror.name));
    }
    let mut backup_site = None;
    if let Some(name) = &chat.backup {
        let backup = refs.node(name, "chat.backup", Role::Db, "the chat backup")?;
        refs.distinct(name, "chat.backup", &taken, distinct)?;
        refs.other_site(
            name,
            "chat.backup",
            backup,
            &primary.site,
            &format!("the chat primary {}", primary.name),
            "the chat backup (log-shipping secondary) is in another site than the chat primary",
        )?;
        taken.push(("chat backup", &backup.name));
        backup_site = Some(backup);
    }
    if let Some(name) = &chat.backup_mirror {
        let Some(backup) = backup_site else {
            return Err(refs.rule(
                name,
                "chat.backup_mirror",
                "there is a backup mirror but no chat.backup",
                "a backup mirror mirrors the backup: set chat.backup, or remove chat.backup_mirror",
            ));
        };
        let mirror = refs.node(
            name,
            "chat.backup_mirror",
            Role::Db,
            "the chat backup mirror",
        )?;
        refs.distinct(name, "chat.backup_mirror", &taken, distinct)?;
        refs.same_site(
            name,
            "chat.backup_mirror",
            mirror,
            &backup.site,
            &format!("the chat backup {}", backup.name),
            "the chat backup mirror is in the same site as the chat backup",
        )?;
    }

    let active = chat.active.get_ref();
    if active.len() > CHAT_ACTIVE_MAX {
        return Err(source.rule(
            chat.active.span(),
            "chat.active",
            format!("{} chat servers are active", active.len()),
            format!("at most {CHAT_ACTIVE_MAX} chat servers are active at once"),
        ));
    }
    for (i, server) in active.iter().enumerate() {
        if !servers.contains(server) {
            return Err(refs.rule(
                server,
                "chat.active",
                format!("{} is not one of chat.servers", cut(server.get_ref())),
                "the active servers are chosen among chat.servers",
            ));
        }
        if active[..i].contains(server) {
            return Err(refs.rule(
                server,
                "chat.active",
                format!("{server} is listed twice"),
                "list each active chat server once",
            ));
        }
        let node = refs.node(server, "chat.active", Role::Chat, "an active chat server")?;
        if node.site != primary.site {
            return Err(refs.rule(
                server,
                "chat.active",
                format!(
                    "{server} is not in the site of the chat primary {} ({})",
                    primary.name, primary.site
                ),
                "every active chat server must be in the primary's site",
            ));
        }
    }

    let mut session_ping_ms = CHAT_SESSION_PING_MS_DEFAULT;
    if let Some(ms) = &chat.session_ping_ms {
        let range = CHAT_SESSION_PING_MS_MIN as i64..=CHAT_SESSION_PING_MS_MAX as i64;
        if !range.contains(ms.get_ref()) {
            return Err(source.rule(
                ms.span(),
                "chat.session_ping_ms",
                format!("{} ms is out of range", ms.get_ref()),
                format!(
                    "ping WebSocket sessions every {CHAT_SESSION_PING_MS_MIN} to \
                     {CHAT_SESSION_PING_MS_MAX} ms (default {CHAT_SESSION_PING_MS_DEFAULT})"
                ),
            ));
        }
        session_ping_ms = *ms.get_ref() as u64;
    }

    Ok(ChatPool {
        servers: texts(servers),
        active: texts(active),
        primary: chat.primary.get_ref().clone(),
        mirror: chat.mirror.as_ref().map(|m| m.get_ref().clone()),
        backup: chat.backup.as_ref().map(|b| b.get_ref().clone()),
        backup_mirror: chat.backup_mirror.as_ref().map(|b| b.get_ref().clone()),
        session_ping_ms,
    })
}

fn check_cms(refs: &Refs, cms: &file::Cms) -> Result<Cms> {
    let primary = refs.node(&cms.primary, "cms.primary", Role::Db, "the CMS primary")?;
    let anchor = format!("the CMS primary {}", primary.name);
    if let Some(name) = &cms.mirror {
        let mirror = refs.node(name, "cms.mirror", Role::Db, "the CMS mirror")?;
        refs.distinct(
            name,
            "cms.mirror",
            &[("CMS primary", primary.name.as_str())],
            "a mirror is another node than its primary",
        )?;
        refs.same_site(
            name,
            "cms.mirror",
            mirror,
            &primary.site,
            &anchor,
            "the CMS mirror is in the same site as the CMS primary",
        )?;
    }
    if let Some(name) = &cms.standby {
        let standby = refs.node(name, "cms.standby", Role::Db, "the CMS standby")?;
        refs.other_site(
            name,
            "cms.standby",
            standby,
            &primary.site,
            &anchor,
            "the CMS standby is in another site than the CMS primary, to survive its loss",
        )?;
    }
    Ok(Cms {
        primary: cms.primary.get_ref().clone(),
        mirror: cms.mirror.as_ref().map(|m| m.get_ref().clone()),
        standby: cms.standby.as_ref().map(|s| s.get_ref().clone()),
    })
}

fn check_witnesses(
    refs: &Refs,
    witnesses: &BTreeMap<Text, Text>,
    sites: &[String],
) -> Result<BTreeMap<String, String>> {
    // In file order, so the first broken line is the one reported.
    let mut entries: Vec<_> = witnesses.iter().collect();
    entries.sort_by_key(|(site, _)| site.span().start);
    for (site, node) in entries {
        let key = format!("witness.{site}");
        if !sites.iter().any(|s| s == site.get_ref()) {
            return Err(refs.rule(
                site,
                &key,
                format!("{} is not a declared site", cut(site.get_ref())),
                format!(
                    "the keys of [witness] are declared sites ({})",
                    sites.join(", ")
                ),
            ));
        }
        let witness = refs.node(node, &key, Role::Witness, "a witness")?;
        if witness.site != *site.get_ref() {
            return Err(refs.rule(
                node,
                &key,
                format!("{node} is in site {}, not in site {site}", witness.site),
                format!(
                    "the witness of a site is one of its nodes: name a node of site {site} that has the witness role"
                ),
            ));
        }
    }
    Ok(witnesses
        .iter()
        .map(|(site, node)| (site.get_ref().clone(), node.get_ref().clone()))
        .collect())
}

/// Every site that holds a mirrored database has a witness: a mirror takes over from a lost
/// primary only when the witness of its site grants it, so without one nothing fails over, and
/// nothing would say why. Checked in file order, at the line of the mirror that needs it.
fn check_witnessed(
    refs: &Refs,
    pools: &[file::Pool],
    chat: Option<&file::Chat>,
    cms: Option<&file::Cms>,
    witnesses: &BTreeMap<String, String>,
) -> Result<()> {
    // (key of the mirror, the mirror, the database, the primary it mirrors)
    let mut mirrored: Vec<(&str, &Text, String, &Text)> = Vec::new();
    for pool in pools {
        if let Some(mirror) = &pool.mirror {
            let database = crate::topology::users_database(pool.name.get_ref());
            mirrored.push(("pool.mirror", mirror, database, &pool.primary));
        }
    }
    if let Some(chat) = chat {
        if let Some(mirror) = &chat.mirror {
            mirrored.push((
                "chat.mirror",
                mirror,
                "mgc and mgccomp".into(),
                &chat.primary,
            ));
        }
        if let (Some(mirror), Some(backup)) = (&chat.backup_mirror, &chat.backup) {
            mirrored.push(("chat.backup_mirror", mirror, "mgc".into(), backup));
        }
    }
    if let Some(cms) = cms
        && let Some(mirror) = &cms.mirror
    {
        mirrored.push(("cms.mirror", mirror, "cms".into(), &cms.primary));
    }
    for (key, mirror, database, primary) in mirrored {
        // Every name here passed its own section's checks: the nodes exist, beside each other.
        let Some(site) = refs
            .nodes
            .iter()
            .find(|n| n.name == *primary.get_ref())
            .map(|n| n.site.as_str())
        else {
            continue;
        };
        if witnesses.contains_key(site) {
            continue;
        }
        let candidates: Vec<&str> = refs
            .nodes
            .iter()
            .filter(|n| n.site == site && n.has(Role::Witness))
            .map(|n| n.name.as_str())
            .collect();
        let fix = match candidates.first() {
            Some(node) => format!("add {site} = \"{node}\" under [witness]"),
            None => format!(
                "give a node of site {site} the witness role and name it under [witness] as {site} = \"<node>\""
            ),
        };
        return Err(refs.rule(
            mirror,
            key,
            format!(
                "site {site} holds {database} mirrored ({primary} to {mirror}) and has no witness"
            ),
            format!(
                "a mirror takes over from a lost primary only when the witness of its site grants it: {fix}"
            ),
        ));
    }
    Ok(())
}
