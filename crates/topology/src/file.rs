//! The text format of `topology.toml`, as TOML reads it: every value keeps its byte span so that
//! the rules in `validate.rs` can name the line of the value they refuse. Unknown keys are
//! refused here, by TOML, with the key's line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string with the byte span of its value in the file.
pub(crate) type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub(crate) deployment: Option<Deployment>,
    #[serde(default)]
    pub(crate) site: Vec<Site>,
    #[serde(default)]
    pub(crate) node: Vec<Node>,
    #[serde(default)]
    pub(crate) pool: Vec<Pool>,
    #[serde(default)]
    pub(crate) chat: Option<Chat>,
    #[serde(default)]
    pub(crate) cms: Option<Cms>,
    #[serde(default)]
    pub(crate) witness: BTreeMap<Text, Text>,
    #[serde(default)]
    pub(crate) mirroring: Option<Mirroring>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Mirroring {
    #[serde(default)]
    pub(crate) journal_records_max: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deployment {
    pub(crate) name: Text,
    pub(crate) secret: Text,
    pub(crate) share: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Site {
    pub(crate) name: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Node {
    pub(crate) name: Text,
    pub(crate) site: Text,
    pub(crate) address: Text,
    pub(crate) roles: Spanned<Vec<Text>>,
    #[serde(default)]
    pub(crate) data: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pool {
    pub(crate) name: Text,
    pub(crate) site: Text,
    pub(crate) frontends: Spanned<Vec<Text>>,
    #[serde(default)]
    pub(crate) pair: Option<Text>,
    pub(crate) primary: Text,
    #[serde(default)]
    pub(crate) mirror: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Chat {
    pub(crate) servers: Spanned<Vec<Text>>,
    pub(crate) active: Spanned<Vec<Text>>,
    pub(crate) primary: Text,
    #[serde(default)]
    pub(crate) mirror: Option<Text>,
    #[serde(default)]
    pub(crate) backup: Option<Text>,
    #[serde(default)]
    pub(crate) backup_mirror: Option<Text>,
    #[serde(default)]
    pub(crate) session_ping_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cms {
    pub(crate) primary: Text,
    #[serde(default)]
    pub(crate) mirror: Option<Text>,
    #[serde(default)]
    pub(crate) standby: Option<Text>,
}
