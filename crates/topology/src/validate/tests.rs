//! One broken topology per rule, each derived from the example by an edit, each asserting the
//! line of the offending value and the words of the rule.

use std::path::{Path, PathBuf};

use crate::{Topology, TopologyError, example};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn example_text() -> String {
    example(7100, SECRET)
}

fn parse(text: &str) -> Result<Topology, TopologyError> {
    Topology::parse(text, Path::new("topology.toml"))
}

/// `text` with the one occurrence of `from` replaced by `to`.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} is not unique");
    text.replacen(from, to, 1)
}

/// The example with the one occurrence of `from` replaced by `to`.
fn broken(from: &str, to: &str) -> String {
    edit(&example_text(), from, to)
}

/// The 1-based line of the one occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    assert_eq!(text.matches(needle).count(), 1, "{needle:?} is not unique");
    let at = text.find(needle).unwrap();
    1 + text[..at].matches('\n').count()
}

/// Asserts that `text` is refused at `line` with a message holding every one of `parts`.
#[track_caller]
fn refused(text: &str, line: usize, parts: &[&str]) {
    let error = match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("topology.toml:{line}: ")),
        "expected line {line}: {message}"
    );
    assert_eq!(error.line(), Some(line), "{message}");
    assert!(!message.contains('\n'), "not one line: {message}");
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

/// Refused at the line of `marker` (unique in `text`).
#[track_caller]
fn refused_at(text: &str, marker: &str, parts: &[&str]) {
    refused(text, line_of(text, marker), parts);
}

/// `text` plus chat nodes `c1..=count` in site `site` (ports from 7200).
fn with_chat_nodes(text: &str, site: &str, count: usize) -> String {
    let mut text = text.to_string();
    for i in 1..=count {
        text.push_str(&format!(
            "\n[[node]]\nname = \"c{i}\"\nsite = \"{site}\"\naddress = \"127.0.0.1:{}\"\nroles = [\"chat\"]\n",
            7200 + i
        ));
    }
    text
}

// --- the example and TOML itself ------------------------------------------------------------

#[test]
fn the_example_is_accepted() {
    parse(&example_text()).unwrap();
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let text = broken("name = \"dal-db1\"", "name = \"dal-db1");
    let error = parse(&text).unwrap_err();
    assert!(matches!(error, TopologyError::Toml { .. }), "{error:?}");
    refused_at(&text, "name = \"dal-db1", &["topology.toml:"]);
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let text = broken(
        "roles = [\"db\"]\n\n[[node]]\nname = \"dal-fe\"",
        "roles = [\"db\"]\ncolour = \"red\"\n\n[[node]]\nname = \"dal-fe\"",
    );
    refused_at(&text, "colour", &["unknown field", "colour"]);
}

#[test]
fn an_unknown_key_in_the_top_level_or_a_section_is_refused() {
    let text = format!("{}\n[extra]\nx = 1\n", example_text());
    refused_at(&text, "[extra]", &["unknown field", "extra"]);
    let text = broken(
        "standby = \"dal-db1\"",
        "standby = \"dal-db1\"\nstandbys = 2",
    );
    refused_at(&text, "standbys", &["unknown field", "standbys"]);
}

#[test]
fn a_value_of_the_wrong_type_names_its_line() {
    let text = broken(
        "roles = [\"frontend\", \"chat\", \"witness\"]\n\n[[node]]\nname = \"atl-db1\"",
        "roles = \"frontend\"\n\n[[node]]\nname = \"atl-db1\"",
    );
    refused_at(&text, "roles = \"frontend\"", &["invalid type", "sequence"]);
    let text = broken("address = \"127.0.0.1:7104\"", "address = 7104");
    refused_at(&text, "address = 7104", &["invalid type", "integer"]);
}

#[test]
fn a_missing_required_key_is_refused() {
    let text = broken("address = \"127.0.0.1:7104\"\n", "");
    let error = parse(&text).unwrap_err().to_string();
    assert!(error.contains("missing field `address`"), "{error}");
}

// --- deployment ------------------------------------------------------------------------------

#[test]
fn a_topology_without_deployment_is_refused() {
    let text = broken("[deployment]\nname = \"example\"\n", "");
    // Its secret and share now sit at the top level, an unknown key there.
    refused_at(&text, "secret =", &["unknown field", "secret"]);
    let text = edit(
        &text,
        &format!("secret = \"{SECRET}\"\nshare = \"share\"\n"),
        "",
    );
    refused(&text, 1, &["deployment", "no [deployment] section"]);
}

#[test]
fn the_secret_is_hex_of_at_least_32_bytes() {
    let text = broken(SECRET, &SECRET[..62]);
    refused_at(
        &text,
        "secret =",
        &["deployment.secret", "only 31 bytes", "at least"],
    );
    let text = broken(SECRET, &SECRET[..63]);
    refused_at(&text, "secret =", &["odd number of hex digits"]);
    let text = broken(SECRET, &format!("{}zz", &SECRET[..62]));
    refused_at(&text, "secret =", &["character 63", "not a hex digit"]);
    // The secret itself is never echoed.
    let error = parse(&broken(SECRET, &SECRET[..62]))
        .unwrap_err()
        .to_string();
    assert!(!error.contains(&SECRET[..62]), "{error}");
    // Upper-case hex and longer secrets are fine.
    parse(&broken(SECRET, &SECRET.repeat(2).to_uppercase())).unwrap();
}

#[test]
fn the_share_is_a_directory_or_a_file_url() {
    refused_at(
        &broken("share = \"share\"", "share = \"\""),
        "share =",
        &["deployment.share", "the share is empty"],
    );
    refused_at(
        &broken("share = \"share\"", "share = \"s3://bucket/x\""),
        "share =",
        &["does not support yet", "directory path or a file:// URL"],
    );
    refused_at(
        &broken("share = \"share\"", "share = \"file://share\""),
        "share =",
        &["absolute local path"],
    );
    let topology = parse(&broken(
        "share = \"share\"",
        "share = \"file:///srv/tandem%20share\"",
    ))
    .unwrap();
    assert_eq!(topology.share, PathBuf::from("/srv/tandem share"));
    let topology = parse(&broken(
        "share = \"share\"",
        "share = \"file://localhost/srv/s\"",
    ))
    .unwrap();
    assert_eq!(topology.share, PathBuf::from("/srv/s"));
    let topology = parse(&broken("share = \"share\"", "share = \"/mnt/share\"")).unwrap();
    assert_eq!(topology.share, PathBuf::from("/mnt/share"));
}

#[test]
fn names_are_safe_for_file_names() {
    let text = broken("name = \"atl-db2\"", "name = \"atl/db2\"");
    refused_at(
        &text,
        "atl/db2",
        &["node.name", "not a valid name", "letters, digits"],
    );
    let text = broken("name = \"example\"", "name = \"\"");
    refused_at(
        &text,
        "name = \"\"",
        &["deployment.name", "not a valid name"],
    );
}

// --- sites and nodes -------------------------------------------------------------------------

#[test]
fn at_least_one_site() {
    let text = broken("[[site]]\nname = \"atl\"\n\n[[site]]\nname = \"dal\"\n", "");
    refused(&text, 1, &["no [[site]] is declared", "at least one site"]);
}

#[test]
fn site_names_are_unique() {
    let text = broken("[[site]]\nname = \"dal\"", "[[site]]\nname = \"atl\"");
    let second = text.match_indices("name = \"atl\"").nth(1).unwrap().0;
    let line = 1 + text[..second].matches('\n').count();
    let first = line_of(&example_text(), "name = \"atl\"");
    refused(
        &text,
        line,
        &[
            "site.name",
            "site atl is declared twice",
            &format!("first at line {first}"),
            "unique",
        ],
    );
}

#[test]
fn node_names_are_unique() {
    let text = broken("name = \"dal-db2\"", "name = \"dal-db1\"");
    let second = text.rfind("name = \"dal-db1\"").unwrap();
    let line = 1 + text[..second].matches('\n').count();
    refused(
        &text,
        line,
        &[
            "node.name",
            "node dal-db1 is declared twice",
            "node names are unique",
        ],
    );
}

#[test]
fn a_node_is_in_a_declared_site() {
    let text = broken(
        "name = \"dal-db2\"\nsite = \"dal\"",
        "name = \"dal-db2\"\nsite = \"sfo\"",
    );
    refused_at(
        &text,
        "\"sfo\"",
        &[
            "node.site",
            "node dal-db2 is in site sfo, which no [[site]] declares",
            "atl, dal",
        ],
    );
}

#[test]
fn addresses_are_host_and_port() {
    for bad in [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        ":7104",
        "no host:7104",
        "1.2.3.999:7104",
        "::1:7104",
        "-x:7104",
    ] {
        let text = broken("127.0.0.1:7104", bad);
        refused_at(
            &text,
            &format!("address = \"{bad}\""),
            &["node.address", "node dal-db1", "an address is host:port"],
        );
    }
    for good in [
        "localhost:7104",
        "db1.dal.example:7104",
        "[::1]:7104",
        "10.0.0.4:7104",
    ] {
        parse(&broken("127.0.0.1:7104", good)).unwrap();
    }
}

#[test]
fn addresses_are_unique() {
    let text = broken("127.0.0.1:7105", "127.0.0.1:7104");
    let second = text.rfind("127.0.0.1:7104").unwrap();
    let line = 1 + text[..second].matches('\n').count();
    let first = line_of(&example_text(), "127.0.0.1:7104");
    refused(
        &text,
        line,
        &[
            "node.address",
            "node dal-db2 listens on 127.0.0.1:7104, as node dal-db1 does",
            &format!("line {first}"),
            "its own address",
        ],
    );
    // Two spellings of one address are one address.
    let text = example_text()
        + "\n[[node]]\nname = \"x\"\nsite = \"atl\"\naddress = \"LOCALHOST:9\"\nroles = [\"db\"]\n\n[[node]]\nname = \"y\"\nsite = \"atl\"\naddress = \"localhost:9\"\nroles = [\"db\"]\n";
    refused_at(
        &text,
        "\"localhost:9\"",
        &["node y listens on localhost:9, as node x does"],
    );
    let text = example_text()
        + "\n[[node]]\nname = \"x\"\nsite = \"atl\"\naddress = \"[::1]:9\"\nroles = [\"db\"]\n\n[[node]]\nname = \"y\"\nsite = \"atl\"\naddress = \"[0:0:0:0:0:0:0:1]:9\"\nroles = [\"db\"]\n";
    refused_at(&text, "[0:0:0:0:0:0:0:1]:9", &["as node x does"]);
}

#[test]
fn a_wildcard_or_a_loopback_alias_on_a_taken_port_clashes() {
    let first = line_of(&example_text(), "127.0.0.1:7104");
    for (address, why) in [
        ("localhost:7104", "all this machine's loopback"),
        ("[::1]:7104", "all this machine's loopback"),
        ("0.0.0.0:7104", "every address of the machine"),
        ("[::]:7104", "every address of the machine"),
    ] {
        let text = broken("127.0.0.1:7105", address);
        refused_at(
            &text,
            address,
            &[
                "node.address",
                &format!(
                    "node dal-db2 listens on {address} and node dal-db1 on 127.0.0.1:7104 (line {first}): "
                ),
                why,
                "another port",
            ],
        );
    }
    // The wildcard first, a loopback address after it.
    let text = broken("127.0.0.1:7100", "0.0.0.0:7104");
    refused_at(
        &text,
        "127.0.0.1:7104",
        &["node dal-db1 listens on 127.0.0.1:7104 and node atl-fe on 0.0.0.0:7104"],
    );
    // Other addresses on one port may be other machines, or other addresses of this one.
    for address in ["127.0.0.2:7104", "10.0.0.5:7104", "dal-db2.example:7104"] {
        parse(&broken("127.0.0.1:7105", address)).unwrap();
    }
}

#[test]
fn roles_are_known_non_empty_and_listed_once() {
    let text = broken(
        "address = \"127.0.0.1:7105\"\nroles = [\"db\"]",
        "address = \"127.0.0.1:7105\"\nroles = []",
    );
    refused_at(
        &text,
        "roles = []",
        &[
            "node.roles",
            "node dal-db2 has no role",
            "one or more roles",
        ],
    );
    let text = broken(
        "address = \"127.0.0.1:7105\"\nroles = [\"db\"]",
        "address = \"127.0.0.1:7105\"\nroles = [\"database\"]",
    );
    refused_at(
        &text,
        "\"database\"",
        &[
            "node.roles",
            "\"database\" is not a role",
            "one of db, frontend, chat, witness",
        ],
    );
    let text = broken(
        "address = \"127.0.0.1:7105\"\nroles = [\"db\"]",
        "address = \"127.0.0.1:7105\"\nroles = [\"db\",\n  \"db\"]",
    );
    refused_at(
        &text,
        "  \"db\"]",
        &["node dal-db2 lists the role db twice"],
    );
}

#[test]
fn data_directories_default_resolve_and_are_not_shared() {
    let text = broken(
        "roles = [\"db\"]\n\n[[node]]\nname = \"dal-db2\"",
        "roles = [\"db\"]\ndata = \"/var/lib/tandem/dal-db1\"\n\n[[node]]\nname = \"dal-db2\"",
    );
    let topology = Topology::parse(&text, Path::new("/etc/tandem/topology.toml")).unwrap();
    assert_eq!(
        topology.node("dal-db1").unwrap().data_dir,
        PathBuf::from("/var/lib/tandem/dal-db1")
    );
    assert_eq!(
        topology.node("dal-db2").unwrap().data_dir,
        PathBuf::from("/etc/tandem/data/dal-db2")
    );
    assert_eq!(topology.share, PathBuf::from("/etc/tandem/share"));

    let text = broken(
        "roles = [\"db\"]\n\n[[node]]\nname = \"dal-db2\"",
        "roles = [\"db\"]\ndata = \"data/dal-db2\"\n\n[[node]]\nname = \"dal-db2\"",
    );
    refused_at(
        &text,
        "name = \"dal-db2\"",
        &[
            "node.data",
            "node dal-db2 keeps its data in ./data/dal-db2, as node dal-db1 does",
            "its own data directory",
        ],
    );
    let text = broken(
        "roles = [\"db\"]\n\n[[node]]\nname = \"dal-db2\"",
        "roles = [\"db\"]\ndata = \"\"\n\n[[node]]\nname = \"dal-db2\"",
    );
    refused_at(&text, "data = \"\"", &["node.data", "empty"]);
}

/// The example with `data = "{data}"` given to dal-db2.
fn dal_db2_data(data: &str) -> String {
    broken(
        "roles = [\"db\"]\n\n[[node]]\nname = \"dal-db2\"",
        &format!("roles = [\"db\"]\n\n[[node]]\nname = \"dal-db2\"\ndata = \"{data}\""),
    )
}

#[test]
fn data_directories_are_not_inside_one_another() {
    // The parent of every other node's directory.
    let text = dal_db2_data("data");
    refused_at(
        &text,
        "data = \"data\"",
        &[
            "node.data",
            // The first in the order of paths is named.
            "node dal-db2 keeps its data in ./data, which holds node atl-db1's data directory ./data/atl-db1",
            "none is inside another's",
        ],
    );
    // Inside another node's.
    let text = dal_db2_data("data/atl-db1/more");
    refused_at(
        &text,
        "data = \"data/atl-db1/more\"",
        &["inside node atl-db1's data directory ./data/atl-db1"],
    );
    // The same directory, spelled another way: compared after `.` and `..` are taken away.
    let text = dal_db2_data("elsewhere/.././data/./atl-db1");
    refused_at(
        &text,
        "data = \"elsewhere",
        &["keeps its data in ./elsewhere/.././data/./atl-db1, as node atl-db1 does"],
    );
    // A later node's default directory inside an earlier node's chosen one.
    let text = broken(
        "roles = [\"frontend\", \"chat\", \"witness\"]\n\n[[node]]\nname = \"atl-db1\"",
        "roles = [\"frontend\", \"chat\", \"witness\"]\ndata = \"data\"\n\n[[node]]\nname = \"atl-db1\"",
    );
    refused_at(
        &text,
        "name = \"atl-db1\"",
        &[
            "node atl-db1 keeps its data in ./data/atl-db1, inside node atl-fe's data directory ./data",
        ],
    );
    // Names that only begin alike are apart.
    parse(&dal_db2_data("data/atl-db1-old")).unwrap();
    parse(&dal_db2_data("/var/lib/tandem/dal-db2")).unwrap();
}

#[test]
fn data_directories_and_the_share_are_apart() {
    let text = dal_db2_data("share/dal-db2");
    refused_at(
        &text,
        "data = \"share/dal-db2\"",
        &[
            "node.data",
            "node dal-db2 keeps its data in ./share/dal-db2, inside the share ./share",
            "the share (deployment.share) are apart",
        ],
    );
    let text = edit(
        &dal_db2_data("shares"),
        "share = \"share\"",
        "share = \"shares/main\"",
    );
    refused_at(
        &text,
        "data = \"shares\"",
        &["keeps its data in ./shares, which holds the share ./shares/main"],
    );
    // The share inside a node's default directory: named at that node.
    let text = broken("share = \"share\"", "share = \"data/atl-fe/share\"");
    refused_at(
        &text,
        "name = \"atl-fe\"",
        &["node atl-fe keeps its data in ./data/atl-fe, which holds the share ./data/atl-fe/share"],
    );
    let text = broken("share = \"share\"", "share = \"file:///srv/share\"");
    let text = edit(
        &text,
        "roles = [\"db\"]\n\n[[node]]\nname = \"dal-db2\"",
        "roles = [\"db\"]\n\n[[node]]\nname = \"dal-db2\"\ndata = \"/srv/share/db\"",
    );
    refused_at(
        &text,
        "data = \"/srv/share/db\"",
        &["inside the share /srv/share"],
    );
}

// --- references ------------------------------------------------------------------------------

#[test]
fn every_node_named_anywhere_is_declared() {
    for (from, to, key) in [
        (
            "frontends = [\"atl-fe\"]",
            "frontends = [\"atl-fe9\"]",
            "pool.frontends",
        ),
        (
            "primary = \"dal-db1\"",
            "primary = \"dal-db9\"",
            "pool.primary",
        ),
        (
            "pair = \"pool-atl\"\nprimary = \"dal-db1\"\nmirror = \"dal-db2\"",
            "pair = \"pool-atl\"\nprimary = \"dal-db1\"\nmirror = \"dal-db9\"",
            "pool.mirror",
        ),
        (
            "servers = [\"atl-fe\", \"dal-fe\"]",
            "servers = [\"atl-fe\", \"dal-fe9\"]",
            "chat.servers",
        ),
        (
            "backup = \"dal-db1\"",
            "backup = \"dal-db9\"",
            "chat.backup",
        ),
        (
            "backup_mirror = \"dal-db2\"",
            "backup_mirror = \"dal-db9\"",
            "chat.backup_mirror",
        ),
        (
            "standby = \"dal-db1\"",
            "standby = \"dal-db9\"",
            "cms.standby",
        ),
        ("dal = \"dal-fe\"", "dal = \"dal-fe9\"", "witness.dal"),
    ] {
        let text = broken(from, to);
        let unknown = if to.contains("dal-fe9") {
            "dal-fe9"
        } else if to.contains("dal-db9") {
            "dal-db9"
        } else {
            "atl-fe9"
        };
        refused_at(
            &text,
            unknown,
            &[
                key,
                &format!("node {unknown} is not declared"),
                "needs a [[node]] with that name",
            ],
        );
    }
}

// --- pools -----------------------------------------------------------------------------------

#[test]
fn pool_names_are_unique_and_pools_are_in_declared_sites() {
    let text = broken("name = \"pool-dal\"", "name = \"pool-atl\"");
    let second = text.rfind("name = \"pool-atl\"").unwrap();
    refused(
        &text,
        1 + text[..second].matches('\n').count(),
        &["pool.name", "pool pool-atl is declared twice"],
    );
    let text = broken(
        "name = \"pool-dal\"\nsite = \"dal\"",
        "name = \"pool-dal\"\nsite = \"sfo\"",
    );
    refused_at(
        &text,
        "\"sfo\"",
        &[
            "pool.site",
            "pool pool-dal is in site sfo, which no [[site]] declares",
        ],
    );
}

#[test]
fn pool_front_ends_have_the_role_are_home_and_serve_one_pool() {
    let text = broken("frontends = [\"atl-fe\"]", "frontends = []");
    refused_at(
        &text,
        "frontends = []",
        &[
            "pool.frontends",
            "pool pool-atl has no front end",
            "at least one",
        ],
    );
    let text = broken("frontends = [\"atl-fe\"]", "frontends = [\"atl-db2\"]");
    refused_at(
        &text,
        "\"atl-db2\"]",
        &[
            "pool.frontends",
            "atl-db2 does not have the frontend role (its roles: db)",
            "a pool's front end must be a node with the frontend role",
        ],
    );
    let text = broken("frontends = [\"atl-fe\"]", "frontends = [\"dal-fe\"]");
    refused_at(
        &text,
        "frontends = [\"dal-fe\"]\npair = \"pool-dal\"",
        &[
            "pool.frontends",
            "dal-fe is in site dal, not in the site of pool pool-atl (atl)",
            "in the pool's site",
        ],
    );
    let text = broken(
        "frontends = [\"atl-fe\"]",
        "frontends = [\"atl-fe\", \"atl-fe\"]",
    );
    refused_at(
        &text,
        "\"atl-fe\", \"atl-fe\"",
        &["pool pool-atl lists atl-fe twice", "exactly one pool"],
    );
    let text = broken(
        "[[pool]]\nname = \"pool-dal\"",
        "[[pool]]\nname = \"pool-atl2\"\nsite = \"atl\"\nfrontends = [\"atl-fe\"]\nprimary = \"atl-db1\"\n\n[[pool]]\nname = \"pool-dal\"",
    );
    refused_at(
        &text,
        "frontends = [\"atl-fe\"]\nprimary",
        &[
            "atl-fe is already a front end of pool pool-atl",
            "exactly one pool",
        ],
    );
}

#[test]
fn pool_primary_is_a_db_node_of_the_pool_site() {
    let text = broken("primary = \"dal-db1\"", "primary = \"dal-fe\"");
    refused_at(
        &text,
        "primary = \"dal-fe\"",
        &[
            "pool.primary",
            "dal-fe does not have the db role",
            "a pool's user database primary must be a node with the db role",
        ],
    );
    let text = broken(
        "pair = \"pool-atl\"\nprimary = \"dal-db1\"\nmirror = \"dal-db2\"",
        "pair = \"pool-atl\"\nprimary = \"atl-db1\"\nmirror = \"atl-db2\"",
    );
    refused(
        &text,
        line_of(&text, "pair = \"pool-atl\"\nprimary") + 1,
        &[
            "pool.primary",
            "atl-db1 is in site atl, not in the site of pool pool-dal (dal)",
            "in the pool's site",
        ],
    );
}

#[test]
fn pool_mirror_is_another_db_node_beside_the_primary() {
    // The mirror in another site than its primary.
    let text = broken(
        "pair = \"pool-dal\"\nprimary = \"atl-db1\"\nmirror = \"atl-db2\"",
        "pair = \"pool-dal\"\nprimary = \"atl-db1\"\nmirror = \"dal-db2\"",
    );
    let line = line_of(&text, "pair = \"pool-dal\"") + 2;
    refused(
        &text,
        line,
        &[
            "pool.mirror",
            "dal-db2 is in site dal, not in the site of the pool's primary atl-db1 (atl)",
            "same site as its primary",
        ],
    );
    // The mirror is the primary.
    let text = broken(
        "pair = \"pool-dal\"\nprimary = \"atl-db1\"\nmirror = \"atl-db2\"",
        "pair = \"pool-dal\"\nprimary = \"atl-db1\"\nmirror = \"atl-db1\"",
    );
    refused(
        &text,
        line,
        &[
            "pool.mirror",
            "atl-db1 already holds the primary",
            "another node than its primary",
        ],
    );
    // The mirror without the db role.
    let text = broken(
        "pair = \"pool-dal\"\nprimary = \"atl-db1\"\nmirror = \"atl-db2\"",
        "pair = \"pool-dal\"\nprimary = \"atl-db1\"\nmirror = \"atl-fe\"",
    );
    refused(
        &text,
        line,
        &["pool.mirror", "atl-fe does not have the db role"],
    );
    // No mirror at all is fine.
    let text = broken(
        "pair = \"pool-dal\"\nprimary = \"atl-db1\"\nmirror = \"atl-db2\"",
        "pair = \"pool-dal\"\nprimary = \"atl-db1\"",
    );
    assert_eq!(parse(&text).unwrap().pool("pool-atl").unwrap().mirror, None);
}

#[test]
fn a_pair_names_an_existing_other_pool() {
    let text = broken("pair = \"pool-dal\"", "pair = \"pool-sfo\"");
    refused_at(
        &text,
        "pool-sfo",
        &[
            "pool.pair",
            "paired with pool pool-sfo, which is not declared",
        ],
    );
    let text = broken("pair = \"pool-dal\"", "pair = \"pool-atl\"");
    let line = line_of(&example_text(), "pair = \"pool-dal\"");
    refused(
        &text,
        line,
        &[
            "pool.pair",
            "pool pool-atl is paired with itself",
            "another site",
        ],
    );
}

#[test]
fn a_pool_paired_with_a_pool_of_the_same_site_is_refused() {
    let text = broken(
        "name = \"pool-dal\"\nsite = \"dal\"\nfrontends = [\"dal-fe\"]\npair = \"pool-atl\"\nprimary = \"dal-db1\"\nmirror = \"dal-db2\"",
        "name = \"pool-dal\"\nsite = \"atl\"\nfrontends = [\"atl-fe2\"]\npair = \"pool-atl\"\nprimary = \"atl-db1\"",
    );
    let text = text
        + "\n[[node]]\nname = \"atl-fe2\"\nsite = \"atl\"\naddress = \"127.0.0.1:7300\"\nroles = [\"frontend\"]\n";
    refused_at(
        &text,
        "pair = \"pool-dal\"",
        &[
            "pool.pair",
            "pool pool-atl is paired with pool pool-dal, a pool of the same site (atl)",
            "a pool is paired with a pool of another site",
        ],
    );
}

#[test]
fn pairing_is_symmetric() {
    let text = broken("pair = \"pool-atl\"\n", "");
    refused_at(
        &text,
        "pair = \"pool-dal\"",
        &[
            "pool.pair",
            "pool pool-atl is paired with pool pool-dal, which has no pair",
            "pairing is symmetric: set pair = \"pool-atl\" in pool pool-dal",
        ],
    );
    // A third pool in dal, paired with pool-dal, which is paired with pool-atl.
    let text = example_text()
        + "\n[[pool]]\nname = \"pool-dal2\"\nsite = \"dal\"\nfrontends = [\"dal-fe2\"]\npair = \"pool-dal\"\nprimary = \"dal-db1\"\n\n[[node]]\nname = \"dal-fe2\"\nsite = \"dal\"\naddress = \"127.0.0.1:7300\"\nroles = [\"frontend\"]\n";
    refused_at(
        &text,
        "pair = \"pool-dal\"\nprimary = \"dal-db1\"",
        &[
            "pool.pair",
            "pool pool-dal2 is paired with pool pool-dal, a pool of the same site",
        ],
    );
    let text = example_text()
        + "\n[[site]]\nname = \"sfo\"\n\n[[pool]]\nname = \"pool-sfo\"\nsite = \"sfo\"\nfrontends = [\"sfo-fe\"]\npair = \"pool-atl\"\nprimary = \"sfo-db\"\n\n[[node]]\nname = \"sfo-fe\"\nsite = \"sfo\"\naddress = \"127.0.0.1:7300\"\nroles = [\"frontend\"]\n\n[[node]]\nname = \"sfo-db\"\nsite = \"sfo\"\naddress = \"127.0.0.1:7301\"\nroles = [\"db\"]\n";
    refused_at(
        &text,
        "pair = \"pool-atl\"\nprimary = \"sfo-db\"",
        &[
            "pool pool-sfo is paired with pool pool-atl, which is paired with pool pool-dal",
            "symmetric",
        ],
    );
}

#[test]
fn pairs_are_optional() {
    let text = edit(
        &broken("pair = \"pool-atl\"\n", ""),
        "pair = \"pool-dal\"\n",
        "",
    );
    let topology = parse(&text).unwrap();
    assert!(topology.pools.iter().all(|pool| pool.pair.is_none()));
}

// --- chat ------------------------------------------------------------------------------------

#[test]
fn at_most_8_chat_servers_and_at_least_one() {
    let text = with_chat_nodes(&example_text(), "dal", 7);
    let eight = "servers = [\"atl-fe\", \"c1\", \"c2\", \"c3\", \"c4\", \"c5\", \"c6\", \"c7\"]";
    parse(&edit(&text, "servers = [\"atl-fe\", \"dal-fe\"]", eight)).unwrap();
    let nine = "servers = [\"atl-fe\", \"dal-fe\", \"c1\", \"c2\", \"c3\", \"c4\", \"c5\", \"c6\", \"c7\"]";
    let text = edit(&text, "servers = [\"atl-fe\", \"dal-fe\"]", nine);
    refused_at(
        &text,
        "servers =",
        &[
            "chat.servers",
            "the chat pool lists 9 servers",
            "1 to 8 servers",
        ],
    );
    let text = broken("servers = [\"atl-fe\", \"dal-fe\"]", "servers = []");
    refused_at(&text, "servers =", &["chat.servers", "lists 0 servers"]);
}

#[test]
fn chat_servers_have_the_chat_role_and_are_listed_once() {
    let text = broken(
        "servers = [\"atl-fe\", \"dal-fe\"]",
        "servers = [\"atl-fe\", \"dal-db1\"]",
    );
    refused_at(
        &text,
        "servers =",
        &[
            "chat.servers",
            "dal-db1 does not have the chat role",
            "a chat server must be a node with the chat role",
        ],
    );
    let text = broken(
        "servers = [\"atl-fe\", \"dal-fe\"]",
        "servers = [\"atl-fe\",\n \"atl-fe\"]",
    );
    refused_at(
        &text,
        " \"atl-fe\"]",
        &["chat.servers", "atl-fe is listed twice"],
    );
}

#[test]
fn at_most_4_active_chat_servers() {
    let text = with_chat_nodes(&example_text(), "atl", 4);
    let servers = "servers = [\"atl-fe\", \"dal-fe\", \"c1\", \"c2\", \"c3\", \"c4\"]";
    let text = edit(&text, "servers = [\"atl-fe\", \"dal-fe\"]", servers);
    parse(&edit(
        &text,
        "active = [\"atl-fe\"]",
        "active = [\"c1\", \"c2\", \"c3\", \"c4\"]",
    ))
    .unwrap();
    let text = edit(
        &text,
        "active = [\"atl-fe\"]",
        "active = [\"atl-fe\", \"c1\", \"c2\", \"c3\", \"c4\"]",
    );
    refused_at(
        &text,
        "active =",
        &[
            "chat.active",
            "5 chat servers are active",
            "at most 4 chat servers are active",
        ],
    );
}

#[test]
fn active_chat_servers_are_servers_listed_once() {
    let text = with_chat_nodes(&example_text(), "atl", 1);
    let text = edit(
        &text,
        "active = [\"atl-fe\"]",
        "active = [\"atl-fe\",\n \"c1\"]",
    );
    refused_at(
        &text,
        " \"c1\"]",
        &[
            "chat.active",
            "c1 is not one of chat.servers",
            "chosen among chat.servers",
        ],
    );
    let text = broken(
        "active = [\"atl-fe\"]",
        "active = [\"atl-fe\",\n \"atl-fe\"]",
    );
    refused_at(
        &text,
        " \"atl-fe\"]",
        &["chat.active", "atl-fe is listed twice"],
    );
    // No active server is allowed (as after a failback's first step).
    assert!(
        parse(&broken("active = [\"atl-fe\"]", "active = []"))
            .unwrap()
            .chat
            .unwrap()
            .active
            .is_empty()
    );
}

#[test]
fn active_chat_servers_are_in_the_primary_site() {
    let text = broken(
        "active = [\"atl-fe\"]",
        "active = [\"atl-fe\",\n  \"dal-fe\"]",
    );
    refused_at(
        &text,
        "  \"dal-fe\"]",
        &[
            "chat.active",
            "dal-fe is not in the site of the chat primary atl-db1 (atl)",
            "every active chat server must be in the primary's site",
        ],
    );
}

/// The line of `key = ` inside the [chat] section of `text`.
fn chat_line(text: &str, key: &str) -> usize {
    let chat = text.find("[chat]").unwrap();
    let at = chat + text[chat..].find(&format!("\n{key} = ")).unwrap() + 1;
    1 + text[..at].matches('\n').count()
}

#[test]
fn chat_database_nodes_have_the_db_role() {
    for key in ["primary", "mirror", "backup", "backup_mirror"] {
        let example = example_text();
        let chat = example.find("[chat]").unwrap();
        let (before, after) = example.split_at(chat);
        let line = after
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap();
        let text = format!(
            "{before}{}",
            after.replacen(line, &format!("{key} = \"atl-fe\""), 1)
        );
        refused(
            &text,
            chat_line(&text, key),
            &[
                &format!("chat.{key}"),
                "atl-fe does not have the db role",
                "must be a node with the db role",
            ],
        );
    }
}

#[test]
fn the_chat_mirror_is_another_node_in_the_primary_site() {
    let text = broken(
        "[chat]\nservers = [\"atl-fe\", \"dal-fe\"]\nactive = [\"atl-fe\"]\nprimary = \"atl-db1\"\nmirror = \"atl-db2\"",
        "[chat]\nservers = [\"atl-fe\", \"dal-fe\"]\nactive = [\"atl-fe\"]\nprimary = \"atl-db1\"\nmirror = \"dal-db2\"",
    );
    refused(
        &text,
        chat_line(&text, "mirror"),
        &[
            "chat.mirror",
            "dal-db2 is in site dal, not in the site of the chat primary atl-db1 (atl)",
            "same site as the chat primary",
        ],
    );
    let text = edit(
        &text,
        "mirror = \"dal-db2\"\nbackup",
        "mirror = \"atl-db1\"\nbackup",
    );
    refused(
        &text,
        chat_line(&text, "mirror"),
        &[
            "chat.mirror",
            "atl-db1 already holds the chat primary",
            "distinct nodes",
        ],
    );
}

#[test]
fn the_chat_backup_is_in_another_site() {
    let text = broken("backup = \"dal-db1\"", "backup = \"atl-db2\"");
    refused(
        &text,
        chat_line(&text, "backup"),
        &[
            "chat.backup",
            "atl-db2 already holds the chat mirror",
            "distinct",
        ],
    );
    let text = example_text()
        + "\n[[node]]\nname = \"atl-db3\"\nsite = \"atl\"\naddress = \"127.0.0.1:7300\"\nroles = [\"db\"]\n";
    let text = edit(&text, "backup = \"dal-db1\"", "backup = \"atl-db3\"");
    refused(
        &text,
        chat_line(&text, "backup"),
        &[
            "chat.backup",
            "atl-db3 is in site atl, like the chat primary atl-db1",
            "in another site than the chat primary",
        ],
    );
}

#[test]
fn the_chat_backup_mirror_needs_a_backup_in_its_site() {
    let text = broken("backup = \"dal-db1\"\n", "");
    refused(
        &text,
        chat_line(&text, "backup_mirror"),
        &[
            "chat.backup_mirror",
            "no chat.backup",
            "set chat.backup, or remove chat.backup_mirror",
        ],
    );
    let text = broken("backup_mirror = \"dal-db2\"", "backup_mirror = \"atl-db2\"");
    refused(
        &text,
        chat_line(&text, "backup_mirror"),
        &[
            "chat.backup_mirror",
            "atl-db2 already holds the chat mirror",
        ],
    );
    let text = broken("backup_mirror = \"dal-db2\"", "backup_mirror = \"dal-db1\"");
    refused(
        &text,
        chat_line(&text, "backup_mirror"),
        &[
            "chat.backup_mirror",
            "dal-db1 already holds the chat backup",
            "distinct",
        ],
    );
    let text = example_text()
        + "\n[[node]]\nname = \"atl-db3\"\nsite = \"atl\"\naddress = \"127.0.0.1:7300\"\nroles = [\"db\"]\n";
    let text = edit(
        &text,
        "backup_mirror = \"dal-db2\"",
        "backup_mirror = \"atl-db3\"",
    );
    refused(
        &text,
        chat_line(&text, "backup_mirror"),
        &[
            "chat.backup_mirror",
            "atl-db3 is in site atl, not in the site of the chat backup dal-db1 (dal)",
            "same site as the chat backup",
        ],
    );
}

#[test]
fn the_chat_section_is_optional_and_so_are_its_copies() {
    let example = example_text();
    let start = example.find("# The persistent chat pool").unwrap();
    let end = example.find("# The Central Management Store").unwrap();
    let text = format!("{}{}", &example[..start], &example[end..]);
    assert!(parse(&text).unwrap().chat.is_none());
    let text = broken(
        "mirror = \"atl-db2\"\nbackup = \"dal-db1\"\nbackup_mirror = \"dal-db2\"\n",
        "",
    );
    let chat = parse(&text).unwrap().chat.unwrap();
    assert_eq!(
        (chat.mirror, chat.backup, chat.backup_mirror),
        (None, None, None)
    );
}

// --- cms -------------------------------------------------------------------------------------

#[test]
fn a_topology_without_cms_is_refused() {
    let example = example_text();
    let start = example.find("# The Central Management Store").unwrap();
    let end = example.find("# Witnesses").unwrap();
    let text = format!("{}{}", &example[..start], &example[end..]);
    refused(
        &text,
        text.lines().count(),
        &["cms", "no [cms] section", "add [cms] with primary"],
    );
}

#[test]
fn the_cms_copies_are_db_nodes_placed_by_site() {
    let cms_line = |text: &str, key: &str| {
        let cms = text.find("[cms]").unwrap();
        let at = cms + text[cms..].find(&format!("\n{key} = ")).unwrap() + 1;
        1 + text[..at].matches('\n').count()
    };
    let text = broken(
        "[cms]\nprimary = \"atl-db1\"",
        "[cms]\nprimary = \"atl-fe\"",
    );
    refused(
        &text,
        cms_line(&text, "primary"),
        &[
            "cms.primary",
            "atl-fe does not have the db role",
            "the CMS primary must be a node with the db role",
        ],
    );
    let text = broken(
        "standby = \"dal-db1\"\n\n# Witnesses",
        "standby = \"dal-fe\"\n\n# Witnesses",
    );
    refused(
        &text,
        cms_line(&text, "standby"),
        &["cms.standby", "dal-fe does not have the db role"],
    );
    let text = broken(
        "[cms]\nprimary = \"atl-db1\"\nmirror = \"atl-db2\"",
        "[cms]\nprimary = \"atl-db1\"\nmirror = \"dal-db2\"",
    );
    refused(
        &text,
        cms_line(&text, "mirror"),
        &[
            "cms.mirror",
            "dal-db2 is in site dal, not in the site of the CMS primary atl-db1 (atl)",
            "same site as the CMS primary",
        ],
    );
    let text = broken(
        "[cms]\nprimary = \"atl-db1\"\nmirror = \"atl-db2\"",
        "[cms]\nprimary = \"atl-db1\"\nmirror = \"atl-db1\"",
    );
    refused(
        &text,
        cms_line(&text, "mirror"),
        &["cms.mirror", "atl-db1 already holds the CMS primary"],
    );
    let text = broken(
        "standby = \"dal-db1\"\n\n# Witnesses",
        "standby = \"atl-db2\"\n\n# Witnesses",
    );
    refused(
        &text,
        cms_line(&text, "standby"),
        &[
            "cms.standby",
            "atl-db2 is in site atl, like the CMS primary atl-db1",
            "another site than the CMS primary",
        ],
    );
}

// --- witnesses -------------------------------------------------------------------------------

#[test]
fn witnesses_serve_declared_sites_and_have_the_role() {
    let text = broken("dal = \"dal-fe\"", "sfo = \"dal-fe\"");
    refused_at(
        &text,
        "sfo = ",
        &[
            "witness.sfo",
            "sfo is not a declared site",
            "declared sites (atl, dal)",
        ],
    );
    let text = broken("dal = \"dal-fe\"", "dal = \"dal-db1\"");
    refused_at(
        &text,
        "dal = \"dal-db1\"",
        &[
            "witness.dal",
            "dal-db1 does not have the witness role",
            "a witness must be a node with the witness role",
        ],
    );
}

/// The line of the first `needle` after the first `after`, in `text`.
fn line_after(text: &str, after: &str, needle: &str) -> usize {
    let from = text.find(after).unwrap();
    let at = from + text[from..].find(needle).unwrap();
    1 + text[..at].matches('\n').count()
}

/// The example without its `[witness]` section (the comment before it included).
fn without_witnesses(text: &str) -> String {
    let start = text.find("# Witnesses").unwrap();
    let end = text.find("# Mirroring").unwrap();
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn a_site_holding_a_mirrored_database_has_a_witness() {
    // dal's witness removed: pool-dal's user database is mirrored there (and mgc's backup).
    let text = broken("dal = \"dal-fe\"\n", "");
    refused(
        &text,
        line_after(&text, "name = \"pool-dal\"", "mirror = "),
        &[
            "pool.mirror",
            "site dal holds users-pool-dal mirrored (dal-db1 to dal-db2) and has no witness",
            "the witness of its site grants it",
            "add dal = \"dal-fe\" under [witness]",
        ],
    );
    // No [witness] at all: the first mirror in the file is named.
    let text = without_witnesses(&example_text());
    refused(
        &text,
        line_after(&text, "name = \"pool-atl\"", "mirror = "),
        &[
            "pool.mirror",
            "site atl",
            "add atl = \"atl-fe\" under [witness]",
        ],
    );
    // Each kind of mirrored database needs it, alone too.
    let no_mirrors = [
        ("mirror = \"atl-db2\"\n\n[[pool]]", "\n[[pool]]"),
        (
            "mirror = \"dal-db2\"\n\n# The persistent",
            "\n# The persistent",
        ),
        ("mirror = \"atl-db2\"\nbackup =", "backup ="),
        ("backup_mirror = \"dal-db2\"\n", ""),
        ("mirror = \"atl-db2\"\nstandby", "standby"),
    ];
    let all_removed = no_mirrors
        .iter()
        .fold(without_witnesses(&example_text()), |text, (from, to)| {
            edit(&text, from, to)
        });
    // With no mirror anywhere, no witness is needed.
    assert!(parse(&all_removed).unwrap().witnesses.is_empty());
    let kept = [
        ("pool.mirror", "site atl holds users-pool-atl mirrored"),
        ("pool.mirror", "site dal holds users-pool-dal mirrored"),
        ("chat.mirror", "site atl holds mgc and mgccomp mirrored"),
        (
            "chat.backup_mirror",
            "site dal holds mgc mirrored (dal-db1 to dal-db2)",
        ),
        (
            "cms.mirror",
            "site atl holds cms mirrored (atl-db1 to atl-db2)",
        ),
    ];
    for (i, (key, problem)) in kept.into_iter().enumerate() {
        let text = no_mirrors.iter().enumerate().filter(|(j, _)| *j != i).fold(
            without_witnesses(&example_text()),
            |text, (_, (from, to))| edit(&text, from, to),
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains(&format!(": {key}: {problem}")), "{error}");
        // And a witness in that site is enough.
        let site = if problem.contains("site atl") {
            "atl"
        } else {
            "dal"
        };
        let text = format!("{text}\n[witness]\n{site} = \"{site}-fe\"\n");
        parse(&text).unwrap();
    }
    // A site with no node that could be its witness is told to give one the role.
    let text = broken("dal = \"dal-fe\"\n", "").replacen(
        "roles = [\"frontend\", \"chat\", \"witness\"]\n\n[[node]]\nname = \"dal-db1\"",
        "roles = [\"frontend\", \"chat\"]\n\n[[node]]\nname = \"dal-db1\"",
        1,
    );
    let error = parse(&text).unwrap_err().to_string();
    assert!(
        error.contains("give a node of site dal the witness role"),
        "{error}"
    );
}

#[test]
fn a_witness_is_a_node_of_the_site_it_serves() {
    let text = broken("atl = \"atl-fe\"", "atl = \"dal-fe\"");
    refused_at(
        &text,
        "atl = \"dal-fe\"",
        &[
            "witness.atl",
            "dal-fe is in site dal, not in site atl",
            "a node of site atl that has the witness role",
        ],
    );
}

#[test]
fn mirroring_keeps_a_bounded_journal_for_an_absent_mirror() {
    assert_eq!(
        parse(&example_text())
            .unwrap()
            .mirroring
            .journal_records_max,
        1_000_000
    );
    let text = broken("journal_records_max = 1000000", "journal_records_max = 250");
    assert_eq!(parse(&text).unwrap().mirroring.journal_records_max, 250);
    let text = broken("journal_records_max = 1000000", "journal_records_max = 5");
    refused_at(
        &text,
        "journal_records_max = 5",
        &[
            "mirroring.journal_records_max",
            "5 records is too few",
            "at least 100",
        ],
    );
    let example = example_text();
    let text = &example[..example.find("# Mirroring").unwrap()];
    assert_eq!(
        parse(text).unwrap().mirroring.journal_records_max,
        crate::MIRROR_JOURNAL_RECORDS_DEFAULT
    );
}

#[test]
fn chat_sessions_are_pinged_at_a_bounded_interval() {
    let chat = |text: &str| parse(text).unwrap().chat.unwrap();
    assert_eq!(chat(&example_text()).session_ping_ms, 30_000);
    let text = broken("session_ping_ms = 30000", "session_ping_ms = 250");
    assert_eq!(chat(&text).session_ping_ms, 250);
    for bad in ["session_ping_ms = 5", "session_ping_ms = 6000000"] {
        let text = broken("session_ping_ms = 30000", bad);
        refused_at(
            &text,
            bad,
            &["chat.session_ping_ms", "out of range", "100 to 600000 ms"],
        );
    }
    // Absent, the default.
    let example = example_text();
    let start = example.find("# A chat server pings").unwrap();
    let end =
        example.find("session_ping_ms = 30000\n").unwrap() + "session_ping_ms = 30000\n".len();
    let text = format!("{}{}", &example[..start], &example[end..]);
    assert_eq!(
        chat(&text).session_ping_ms,
        crate::CHAT_SESSION_PING_MS_DEFAULT
    );
}

// --- errors ----------------------------------------------------------------------------------

#[test]
fn errors_name_the_given_path() {
    let error = Topology::parse("[deployment", Path::new("/etc/tandem/topology.toml")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("/etc/tandem/topology.toml:1: "),
        "{error}"
    );
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    for (from, to, key) in [
        (
            "journal_records_max = 1000000",
            "journal_records_max = 99999999999999999999",
            "mirroring.journal_records_max: invalid type: integer",
        ),
        (
            "journal_records_max = 1000000",
            "journal_records_max = \"many\"",
            "mirroring.journal_records_max: invalid type: string \"many\", expected a whole number",
        ),
        (
            "session_ping_ms = 30000",
            "session_ping_ms = 1.5",
            "chat.session_ping_ms: invalid type: floating point `1.5`",
        ),
        (
            "address = \"127.0.0.1:7104\"",
            "address = 7104",
            "node.address: invalid type: integer `7104`",
        ),
        (
            "dal = \"dal-fe\"",
            "dal = 5",
            "witness.dal: invalid type: integer `5`",
        ),
        (
            "roles = [\"db\"]\n\n[[node]]\nname = \"dal-db2\"",
            "roles = [\"db\", 3]\n\n[[node]]\nname = \"dal-db2\"",
            "node.roles: invalid type: integer `3`",
        ),
    ] {
        let text = broken(from, to);
        let line = to.lines().next().unwrap();
        refused_at(&text, line, &[key]);
    }
}

#[test]
fn long_values_are_cut_in_messages() {
    let long = "n".repeat(5000);
    for (from, to) in [
        ("name = \"dal-db2\"", format!("name = \"{long}\"")),
        (
            "primary = \"dal-db1\"\nmirror",
            format!("primary = \"{long}\"\nmirror"),
        ),
        (
            "address = \"127.0.0.1:7105\"",
            format!("address = \"{long}\""),
        ),
        (
            "standby = \"dal-db1\"",
            format!("standby = \"dal-db1\"\n{long} = 1"),
        ),
        (
            "journal_records_max = 1000000",
            format!("journal_records_max = \"{long}\""),
        ),
    ] {
        let error = parse(&broken(from, &to)).unwrap_err().to_string();
        assert!(error.len() < 500, "{} bytes: {error}", error.len());
        assert!(error.contains("nnnn…"), "{error}");
    }
    let error = parse(&broken("name = \"dal-db2\"", &format!("name = \"{long}\"")))
        .unwrap_err()
        .to_string();
    assert!(error.contains("is 5000 bytes long"), "{error}");
}

#[test]
fn a_duplicate_key_is_quoted_with_its_line() {
    let text = broken("dal = \"dal-fe\"", "dal = \"dal-fe\"\ndal = \"atl-fe\"");
    refused_at(&text, "dal = \"atl-fe\"", &["duplicate key", "(at `dal`)"]);
}

#[test]
fn a_toml_error_on_the_secret_line_does_not_quote_it() {
    let text = broken(
        &format!("secret = \"{SECRET}\""),
        &format!("secret = \"{SECRET}"),
    );
    let error = parse(&text).unwrap_err().to_string();
    assert!(!error.contains(SECRET), "{error}");
    refused_at(&text, "secret =", &["invalid basic string"]);
}
