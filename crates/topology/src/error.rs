//! `TopologyError`: every way a topology can be refused, each naming the file, the line and the
//! rule, so the operator knows where to look and what to change.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a topology was refused.
///
/// Every variant's `Display` is one line that starts with the file path (and, once the text was
/// read, the 1-based line of the offending value: `topology.toml:42: ...`), then says what is
/// wrong and what the rule is.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("{}: cannot read the topology: {error}", path.display())]
    Read {
        /// The topology file.
        path: PathBuf,
        /// What the operating system said. Not a `source`: the message already holds it, and a
        /// caller that prints the chain of causes would print it twice.
        error: std::io::Error,
    },
    /// The path names something that is not a regular file (a directory, a FIFO, a device, a
    /// socket): nothing is opened, since opening a FIFO for reading waits for a writer.
    #[error(
        "{}: the topology is {what}, not a regular file: pass the path of the topology.toml file",
        path.display()
    )]
    NotAFile {
        /// The topology path.
        path: PathBuf,
        /// What it is instead, e.g. `a directory`.
        what: String,
    },
    /// The file is larger than any topology should be (`TOPOLOGY_BYTES_MAX`).
    #[error(
        "{}: the topology is {bytes} bytes; a topology is at most {max} bytes: is this the right file?",
        path.display()
    )]
    TooLarge {
        /// The topology file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The file is not UTF-8 text.
    #[error(
        "{}:{line}: byte {offset} is not UTF-8; a topology is UTF-8 text: is this the right file?",
        path.display()
    )]
    NotUtf8 {
        /// The topology file.
        path: PathBuf,
        /// 1-based line of the first byte that is not UTF-8.
        line: usize,
        /// 1-based offset of that byte in the file.
        offset: usize,
    },
    /// TOML itself refused the text: a syntax error, an unknown key, a value of the wrong type, a
    /// missing required key.
    #[error("{}:{line}: {message}", path.display())]
    Toml {
        /// The topology file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// What the TOML parser said, on one line.
        message: String,
    },
    /// The text is well-formed TOML but breaks a rule of tandem's deployments.
    #[error("{}:{line}: {key}: {problem}; {rule}", path.display())]
    Rule {
        /// The topology file.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// The key that holds it, e.g. `chat.active` or `node.site`.
        key: String,
        /// What is wrong with this value.
        problem: String,
        /// The rule it breaks, and so what to do.
        rule: String,
    },
}

impl TopologyError {
    /// The 1-based line the error points at, when the text was read.
    pub fn line(&self) -> Option<usize> {
        match self {
            TopologyError::Read { .. }
            | TopologyError::NotAFile { .. }
            | TopologyError::TooLarge { .. } => None,
            TopologyError::NotUtf8 { line, .. }
            | TopologyError::Toml { line, .. }
            | TopologyError::Rule { line, .. } => Some(*line),
        }
    }
}

/// The text being checked, to turn byte spans into lines and build errors.
pub(crate) struct Source<'a> {
    pub(crate) text: &'a str,
    pub(crate) path: &'a Path,
}

impl Source<'_> {
    /// The 1-based line holding byte `offset` (clamped to the text).
    pub(crate) fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        // Spans from the parser fall on character boundaries, but count bytes to be safe.
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// The text at `span` (or its whole line, when the span is empty or spans lines), to quote in
    /// a TOML error that does not say which key it is about; never the line of the secret.
    fn snippet(&self, span: Range<usize>) -> Option<String> {
        const SNIPPET_CHARS_MAX: usize = 80;
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text.get(line_start..line_end)?.trim();
        if line.starts_with("secret") {
            return None;
        }
        let exact = self.text.get(span)?.trim();
        let snippet = if exact.is_empty() || exact.contains('\n') {
            line
        } else {
            exact
        };
        if snippet.is_empty() {
            return None;
        }
        Some(snippet.chars().take(SNIPPET_CHARS_MAX).collect())
    }

    /// A rule error for the value at `span`.
    pub(crate) fn rule(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        problem: impl Into<String>,
        rule: impl Into<String>,
    ) -> TopologyError {
        TopologyError::Rule {
            path: self.path.to_path_buf(),
            line: self.line_at(span.start),
            key: key.into(),
            problem: problem.into(),
            rule: rule.into(),
        }
    }

    /// An error the TOML parser reported; `path` is where in the document serde was when it
    /// failed (`None` for a syntax error, found before any key is read).
    pub(crate) fn toml(
        &self,
        error: &toml::de::Error,
        path: Option<&serde_path_to_error::Path>,
    ) -> TopologyError {
        let line = error.span().map_or(1, |span| self.line_at(span.start));
        let mut message = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        // serde says `i64` where the operator wrote a number too large or not whole.
        message = message.replace("expected i64", "expected a whole number (64-bit)");
        message = cut_quoted(&message);
        if let Some(snippet) = error.span().and_then(|span| self.snippet(span))
            && !message.contains(&snippet)
        {
            message = format!("{message} (at `{snippet}`)");
        }
        let key = path.and_then(|path| self.key_of(path, error.span()));
        if let Some(key) = key {
            message = format!("{}: {message}", cut(&key));
        }
        TopologyError::Toml {
            path: self.path.to_path_buf(),
            line,
            message,
        }
    }

    /// The dotted key serde's `path` names, as the operator would write it (`node.address`,
    /// `mirroring.journal_records_max`): the indices of arrays of tables and the private names
    /// `toml::Spanned` reads its value under are left out, and a map key serde could not name (a
    /// `[witness]` key, which is itself spanned) is taken from the text at `span`.
    fn key_of(
        &self,
        path: &serde_path_to_error::Path,
        span: Option<Range<usize>>,
    ) -> Option<String> {
        use serde_path_to_error::Segment;
        let mut parts = Vec::new();
        for segment in path.iter() {
            match segment {
                Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
                Segment::Map { key } => parts.push(key.clone()),
                Segment::Enum { variant } => parts.push(variant.clone()),
                Segment::Seq { .. } => {}
                Segment::Unknown => {
                    if let Some(key) = span.clone().and_then(|span| self.key_on_line(span.start)) {
                        parts.push(key);
                    }
                }
            }
        }
        (!parts.is_empty()).then(|| parts.join("."))
    }

    /// The bare key of a `key = value` line holding byte `offset`, if the line is one.
    fn key_on_line(&self, offset: usize) -> Option<String> {
        let start = offset.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[line_start..].lines().next()?;
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        bare.then(|| key.to_string())
    }
}

/// Values quoted in messages are cut to this many characters: a name of 5,000 characters written
/// by mistake would otherwise fill the operator's screen and hide what is wrong with it.
pub(crate) const QUOTED_CHARS_MAX: usize = 64;

/// `text` itself when it is short, else its first `QUOTED_CHARS_MAX` characters and `…`.
pub(crate) fn cut(text: &str) -> String {
    if text.chars().count() <= QUOTED_CHARS_MAX {
        return text.to_string();
    }
    let mut short: String = text.chars().take(QUOTED_CHARS_MAX).collect();
    short.push('…');
    short
}

/// `message` with every run between two backticks or two double quotes cut as `cut` does: TOML's
/// and serde's messages quote the offending value or key in full.
fn cut_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().expect("found above");
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            out.push_str(&cut(after));
            return out;
        };
        out.push_str(&cut(&after[..close]));
        out.push(quote);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based_and_clamped() {
        let source = Source {
            text: "a\nb\n\nc",
            path: Path::new("t.toml"),
        };
        assert_eq!(source.line_at(0), 1);
        assert_eq!(source.line_at(1), 1);
        assert_eq!(source.line_at(2), 2);
        assert_eq!(source.line_at(5), 4);
        assert_eq!(source.line_at(500), 4);
    }

    #[test]
    fn rule_display_names_file_line_key_and_rule() {
        let source = Source {
            text: "x\ny\n",
            path: Path::new("topology.toml"),
        };
        let error = source.rule(2..3, "chat.active", "atl-fe2 is elsewhere", "keep it home");
        assert_eq!(
            error.to_string(),
            "topology.toml:2: chat.active: atl-fe2 is elsewhere; keep it home"
        );
        assert_eq!(error.line(), Some(2));
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(5000);
        assert_eq!(cut("short"), "short");
        assert_eq!(cut(&long).chars().count(), QUOTED_CHARS_MAX + 1);
        assert!(cut(&long).ends_with('…'));
        let message = cut_quoted(&format!(
            "unknown field `{long}`, expected \"{long}\" or `a`"
        ));
        assert!(message.len() < 200, "{message}");
        assert!(message.starts_with("unknown field `xxx"), "{message}");
        assert!(message.ends_with("…\" or `a`"), "{message}");
    }
}
