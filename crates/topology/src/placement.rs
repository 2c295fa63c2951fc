//! Placements: which copies of which databases the topology puts on a db node.

use serde::Serialize;

use crate::topology::{Topology, users_database};

/// The chat database: rooms, categories, memberships, messages.
pub const DATABASE_MGC: &str = "mgc";
/// The compliance queue database.
pub const DATABASE_MGCCOMP: &str = "mgccomp";
/// The Central Management Store.
pub const DATABASE_CMS: &str = "cms";

/// One copy of a database that the topology places on a db node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// `mgc`, `mgccomp`, `cms` or `users-<pool>`.
    pub database: String,
    /// The copy's part in the deployment.
    pub role: PlacementRole,
}

/// The part a copy plays, as the topology first places it (failovers change roles at run time;
/// the topology does not follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementRole {
    /// The writable copy.
    Primary,
    /// The synchronous mirror of the primary, in its site.
    Mirror,
    /// The log-shipping secondary, in another site.
    Backup,
    /// The synchronous mirror of the log-shipping secondary.
    BackupMirror,
    /// The CMS standby, in another site.
    Standby,
}

impl PlacementRole {
    /// The name used in status reports and JSON (`backup-mirror`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementRole::Primary => "primary",
            PlacementRole::Mirror => "mirror",
            PlacementRole::Backup => "backup",
            PlacementRole::BackupMirror => "backup-mirror",
            PlacementRole::Standby => "standby",
        }
    }
}

impl Topology {
    /// Every copy the topology places on node `node`: chat's `mgc` and `mgccomp` on its primary
    /// and mirror, `mgc` alone on its backup and backup mirror (`mgccomp` is mirrored, not
    /// log-shipped), the CMS on its primary, mirror and standby, and each pool's `users-<pool>` on
    /// the pool's primary and mirror. In that order; empty for a node that holds nothing or does
    /// not exist.
    pub fn databases_on(&self, node: &str) -> Vec<Placement> {
        let mut placements = Vec::new();
        let mut place = |holder: Option<&String>, database: &str, role: PlacementRole| {
            if holder.is_some_and(|holder| holder == node) {
                placements.push(Placement {
                    database: database.to_string(),
                    role,
                });
            }
        };
        if let Some(chat) = &self.chat {
            for database in [DATABASE_MGC, DATABASE_MGCCOMP] {
                place(Some(&chat.primary), database, PlacementRole::Primary);
                place(chat.mirror.as_ref(), database, PlacementRole::Mirror);
            }
            place(chat.backup.as_ref(), DATABASE_MGC, PlacementRole::Backup);
            place(
                chat.backup_mirror.as_ref(),
                DATABASE_MGC,
                PlacementRole::BackupMirror,
            );
        }
        place(
            Some(&self.cms.primary),
            DATABASE_CMS,
            PlacementRole::Primary,
        );
        place(
            self.cms.mirror.as_ref(),
            DATABASE_CMS,
            PlacementRole::Mirror,
        );
        place(
            self.cms.standby.as_ref(),
            DATABASE_CMS,
            PlacementRole::Standby,
        );
        for pool in &self.pools {
            let database = users_database(&pool.name);
            place(Some(&pool.primary), &database, PlacementRole::Primary);
            place(pool.mirror.as_ref(), &database, PlacementRole::Mirror);
        }
        placements
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::PlacementRole::*;
    use super::*;
    use crate::example;

    fn placements(topology: &Topology, node: &str) -> Vec<(String, PlacementRole)> {
        topology
            .databases_on(node)
            .into_iter()
            .map(|p| (p.database, p.role))
            .collect()
    }

    fn owned(list: &[(&str, PlacementRole)]) -> Vec<(String, PlacementRole)> {
        list.iter().map(|(d, r)| (d.to_string(), *r)).collect()
    }

    #[test]
    fn the_example_places_what_design_section_3_says() {
        let text = example(7100, &"ab".repeat(32));
        let topology = Topology::parse(&text, Path::new("topology.toml")).unwrap();
        assert_eq!(
            placements(&topology, "atl-db1"),
            owned(&[
                ("mgc", Primary),
                ("mgccomp", Primary),
                ("cms", Primary),
                ("users-pool-atl", Primary),
            ])
        );
        assert_eq!(
            placements(&topology, "atl-db2"),
            owned(&[
                ("mgc", Mirror),
                ("mgccomp", Mirror),
                ("cms", Mirror),
                ("users-pool-atl", Mirror),
            ])
        );
        // mgccomp is mirrored but not log-shipped: only mgc goes to the other site.
        assert_eq!(
            placements(&topology, "dal-db1"),
            owned(&[
                ("mgc", Backup),
                ("cms", Standby),
                ("users-pool-dal", Primary)
            ])
        );
        assert_eq!(
            placements(&topology, "dal-db2"),
            owned(&[("mgc", BackupMirror), ("users-pool-dal", Mirror)])
        );
        assert!(placements(&topology, "atl-fe").is_empty());
        assert!(placements(&topology, "no-such-node").is_empty());
    }

    #[test]
    fn placement_roles_serialize_in_kebab_case() {
        let json = serde_json_like(PlacementRole::BackupMirror);
        assert_eq!(json, "backup-mirror");
    }

    /// The serde name of a unit variant, through toml's serializer (no JSON dependency here).
    fn serde_json_like(role: PlacementRole) -> String {
        #[derive(Serialize)]
        struct Wrap {
            role: PlacementRole,
        }
        let text = toml::to_string(&Wrap { role }).unwrap();
        text.trim()
            .trim_start_matches("role = ")
            .trim_matches('"')
            .to_string()
    }
}

#[cfg(test)]
mod as_str_tests {
    use super::PlacementRole::*;

    #[test]
    fn names_are_the_serialized_ones() {
        for r in [Primary, Mirror, Backup, BackupMirror, Standby] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
