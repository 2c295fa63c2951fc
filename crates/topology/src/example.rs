//! The two-site example topology of DESIGN.md §3, as `tandem init` writes it.

/// The text of the two-site example topology (DESIGN.md §3) on 127.0.0.1, with short comments.
///
/// Sites `atl` and `dal`; nodes `atl-fe`, `atl-db1`, `atl-db2`, `dal-fe`, `dal-db1`, `dal-db2`
/// listening on ports `base_port` to `base_port + 5` in that order; pools `pool-atl` and
/// `pool-dal` paired with each other; the chat pool with `mgc`/`mgccomp` on `atl-db1` mirrored to
/// `atl-db2` and `mgc` log-shipped to `dal-db1` (mirrored to `dal-db2`); the CMS on `atl-db1`,
/// mirrored to `atl-db2`, standby on `dal-db1`; one witness per site; the share `share` beside
/// the file. The text passes [`crate::Topology::parse`] whenever `secret` is hex of at least 32
/// bytes.
///
/// # Panics
/// When `base_port + 5` overflows a port, or `secret` is not made of hex digits (it is written
/// into the file unquoted by any escaping).
pub fn example(base_port: u16, secret: &str) -> String {
    assert!(
        base_port.checked_add(5).is_some(),
        "base_port {base_port} leaves no room for 6 ports"
    );
    assert!(
        secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "the cluster secret must be hex digits"
    );
    let port = |offset: u16| base_port + offset;
    format!(
        r#"# tandem topology: a deployment over two sites (DESIGN.md §3).
# Relative paths are relative to this file's directory.

# The deployment: its name, the cluster secret nodes use to authenticate each
# other (hex, at least 32 bytes: keep it private), and the share where log
# backups and full backups go (a directory every site reaches, or a file:// URL).
[deployment]
name = "example"
secret = "{secret}"
share = "share"

# Sites: failure domains. Everything in one site can be lost at once.
[[site]]
name = "atl"

[[site]]
name = "dal"

# Nodes: one `tandem serve` process each, listening on `address`, with one or
# more roles: db, frontend, chat, witness. A node keeps its data in
# data/<name> unless `data = "..."` says otherwise.
[[node]]
name = "atl-fe"
site = "atl"
address = "127.0.0.1:{atl_fe}"
roles = ["frontend", "chat", "witness"]

[[node]]
name = "atl-db1"
site = "atl"
address = "127.0.0.1:{atl_db1}"
roles = ["db"]

[[node]]
name = "atl-db2"
site = "atl"
address = "127.0.0.1:{atl_db2}"
roles = ["db"]

[[node]]
name = "dal-fe"
site = "dal"
address = "127.0.0.1:{dal_fe}"
roles = ["frontend", "chat", "witness"]

[[node]]
name = "dal-db1"
site = "dal"
address = "127.0.0.1:{dal_db1}"
roles = ["db"]

[[node]]
name = "dal-db2"
site = "dal"
address = "127.0.0.1:{dal_db2}"
roles = ["db"]

# Pools: the front ends of one site and the db node holding the primary copy of
# the pool's user database (users-<pool>), with its synchronous mirror in the
# same site. Paired pools, in two sites, back each other up (backup service).
[[pool]]
name = "pool-atl"
site = "atl"
frontends = ["atl-fe"]
pair = "pool-dal"
primary = "atl-db1"
mirror = "atl-db2"

[[pool]]
name = "pool-dal"
site = "dal"
frontends = ["dal-fe"]
pair = "pool-atl"
primary = "dal-db1"
mirror = "dal-db2"

# The persistent chat pool: chat servers (at most 8) and the active ones (at
# most 4, all in the site of the chat primary). mgc and mgccomp live on the
# primary, mirrored synchronously in its site; mgc is log-shipped to the backup
# in the other site, itself mirrored there.
[chat]
servers = ["atl-fe", "dal-fe"]
active = ["atl-fe"]
primary = "atl-db1"
mirror = "atl-db2"
backup = "dal-db1"
backup_mirror = "dal-db2"
# A chat server pings each live-events WebSocket this often (ms) and ends a
# session that has not answered three pings (its client left without closing), or
# that took in nothing for as long (its client stopped reading).
session_ping_ms = 30000

# The Central Management Store: its writable copy, a mirror in the same site,
# and a standby in the other site (promoted by `tandem cms failover`).
[cms]
primary = "atl-db1"
mirror = "atl-db2"
standby = "dal-db1"

# Witnesses: per site, the node that arbitrates automatic mirror failover.
[witness]
atl = "atl-fe"
dal = "dal-fe"

# Mirroring: a primary keeps at most this many journal records for a mirror
# that is away; a mirror further behind is reseeded from a full backup.
[mirroring]
journal_records_max = 1000000
"#,
        atl_fe = port(0),
        atl_db1 = port(1),
        atl_db2 = port(2),
        dal_fe = port(3),
        dal_db1 = port(4),
        dal_db2 = port(5),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::{Role, Topology};

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_example_validates_and_is_design_section_3() {
        let topology =
            Topology::parse(&example(7100, SECRET), Path::new("deploy/topology.toml")).unwrap();
        assert_eq!(topology.name, "example");
        assert_eq!(topology.secret, SECRET);
        assert_eq!(topology.dir, PathBuf::from("deploy"));
        assert_eq!(topology.share, PathBuf::from("deploy/share"));
        assert_eq!(topology.sites, ["atl", "dal"]);
        let names: Vec<_> = topology.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "atl-fe", "atl-db1", "atl-db2", "dal-fe", "dal-db1", "dal-db2"
            ]
        );
        let ports: Vec<_> = topology.nodes.iter().map(|n| n.address.clone()).collect();
        assert_eq!(
            ports,
            (7100..=7105)
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
        );
        let fe = topology.node("dal-fe").unwrap();
        assert!(fe.has(Role::Frontend) && fe.has(Role::Chat) && fe.has(Role::Witness));
        assert!(!fe.has(Role::Db));
        assert_eq!(fe.data_dir, PathBuf::from("deploy/data/dal-fe"));
        assert_eq!(topology.site_of("atl-db2"), Some("atl"));
        assert_eq!(topology.nodes_in_site("dal").len(), 3);
        assert_eq!(topology.nodes_with(Role::Db).len(), 4);

        let atl = topology.pool("pool-atl").unwrap();
        assert_eq!(atl.frontends, ["atl-fe"]);
        assert_eq!(atl.pair.as_deref(), Some("pool-dal"));
        assert_eq!(atl.primary, "atl-db1");
        assert_eq!(atl.mirror.as_deref(), Some("atl-db2"));
        assert_eq!(atl.users_database(), "users-pool-atl");
        let dal = topology.pool("pool-dal").unwrap();
        assert_eq!(dal.pair.as_deref(), Some("pool-atl"));
        assert_eq!(dal.primary, "dal-db1");

        let chat = topology.chat.as_ref().unwrap();
        assert_eq!(chat.servers, ["atl-fe", "dal-fe"]);
        assert_eq!(chat.active, ["atl-fe"]);
        assert_eq!(chat.primary, "atl-db1");
        assert_eq!(chat.mirror.as_deref(), Some("atl-db2"));
        assert_eq!(chat.backup.as_deref(), Some("dal-db1"));
        assert_eq!(chat.backup_mirror.as_deref(), Some("dal-db2"));

        assert_eq!(topology.cms.primary, "atl-db1");
        assert_eq!(topology.cms.mirror.as_deref(), Some("atl-db2"));
        assert_eq!(topology.cms.standby.as_deref(), Some("dal-db1"));
        assert_eq!(
            topology.witnesses,
            BTreeMap::from([
                ("atl".to_string(), "atl-fe".to_string()),
                ("dal".to_string(), "dal-fe".to_string()),
            ])
        );
    }

    #[test]
    fn the_example_uses_six_ports_from_the_base() {
        let topology = Topology::parse(&example(65530, SECRET), Path::new("t.toml")).unwrap();
        assert_eq!(topology.node("dal-db2").unwrap().address, "127.0.0.1:65535");
    }

    #[test]
    #[should_panic(expected = "leaves no room")]
    fn the_example_refuses_a_base_port_without_room() {
        example(65531, SECRET);
    }

    #[test]
    fn a_bare_file_name_resolves_against_the_current_directory() {
        let topology = Topology::parse(&example(7100, SECRET), Path::new("topology.toml")).unwrap();
        assert_eq!(topology.dir, PathBuf::from("."));
        assert_eq!(topology.share, PathBuf::from("./share"));
    }

    #[test]
    fn load_reads_the_file_and_makes_paths_absolute() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("topology.toml");
        std::fs::write(&path, example(7100, SECRET)).unwrap();
        let topology = Topology::load(&path).unwrap();
        assert!(topology.dir.is_absolute());
        assert_eq!(topology.dir, temp.path());
        assert_eq!(topology.share, temp.path().join("share"));
        assert_eq!(
            topology.node("atl-fe").unwrap().data_dir,
            temp.path().join("data/atl-fe")
        );

        let missing = Topology::load(&temp.path().join("nope.toml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("nope.toml: cannot read the topology"),
            "{missing}"
        );
        assert_eq!(missing.line(), None);

        let huge = temp.path().join("huge.toml");
        let bytes = crate::TOPOLOGY_BYTES_MAX as usize + 1;
        std::fs::write(&huge, "#".repeat(bytes)).unwrap();
        let error = Topology::load(&huge).unwrap_err().to_string();
        assert!(
            error.contains(&format!("the topology is {bytes} bytes")),
            "{error}"
        );
        assert!(
            error.contains("a topology is at most 1048576 bytes"),
            "{error}"
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let topology = Topology::parse(&example(7100, SECRET), Path::new("t.toml")).unwrap();
        let debug = format!("{topology:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("atl-db1"), "{debug}");
    }
}
