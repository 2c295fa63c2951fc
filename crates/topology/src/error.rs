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
    #[error("{}: cannot read the topology: {source}", path.display())]
    Read {
        /// The topology file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
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
            TopologyError::Read { .. } | TopologyError::TooLarge { .. } => None,
            TopologyError::Toml { line, .. } | TopologyError::Rule { line, .. } => Some(*line),
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

    /// An error the TOML parser reported.
    pub(crate) fn toml(&self, error: &toml::de::Error) -> TopologyError {
        let line = error.span().map_or(1, |span| self.line_at(span.start));
        let mut message = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if let Some(snippet) = error.span().and_then(|span| self.snippet(span))
            && !message.contains(&snippet)
        {
            message = format!("{message} (at `{snippet}`)");
        }
        TopologyError::Toml {
            path: self.path.to_path_buf(),
            line,
            message,
        }
    }
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
}
