//! Bounded YAML parsing for everything the policy crate reads from disk or the network.
//!
//! Every document is checked against [`MAX_DOCUMENT_BYTES`] before the parser sees it, and the parser
//! (`serde_norway`) refuses alias expansion beyond its repetition budget, so a hostile document fails in
//! milliseconds with a typed error instead of hanging or allocating without bound.

use serde::de::DeserializeOwned;

/// The largest YAML document (tenant file, pack values, embedded config) accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The deepest nesting of flow collections (`[` / `{`) accepted. The YAML scanner's cost grows with
/// the square of this depth, so it is checked by a linear pre-scan before the parser runs.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Why a YAML document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("document is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// Flow collections nest deeper than [`MAX_FLOW_DEPTH`].
    // The line is in its field (callers print `line N:` before the message).
    #[error("flow collections (`[` / `{{`) nest deeper than {limit} levels")]
    TooDeep { limit: usize, line: usize },
    /// The YAML is malformed or does not have the expected shape.
    #[error("{message}")]
    Invalid {
        message: String,
        /// 1-based line, when the parser reports one.
        line: Option<usize>,
        /// 1-based column, when the parser reports one.
        column: Option<usize>,
    },
}

impl DocumentError {
    /// The 1-based line of the problem, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            DocumentError::Invalid { line, .. } => *line,
            DocumentError::TooDeep { line, .. } => Some(*line),
            DocumentError::TooLarge { .. } => None,
        }
    }

    fn from_yaml(error: &serde_norway::Error) -> Self {
        let location = error.location();
        let mut message = error.to_string();
        // The location is kept in its own fields (callers print `line N:` before the message); the
        // parser's own ` at line N column M` suffix would say it twice.
        if let Some(l) = &location {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
        DocumentError::Invalid {
            message,
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
        }
    }
}

fn check_size(text: &str) -> Result<(), DocumentError> {
    check_size_within(text, MAX_DOCUMENT_BYTES)
}

fn check_size_within(text: &str, limit: usize) -> Result<(), DocumentError> {
    if text.len() > limit {
        return Err(DocumentError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    check_flow_depth(text)
}

/// A linear scan for deeply nested flow collections, skipping quoted scalars and comments. Quotes and
/// `#` count only where a token may start, so apostrophes inside plain text do not confuse it.
fn check_flow_depth(text: &str) -> Result<(), DocumentError> {
    let bytes = text.as_bytes();
    // Most documents (block style, PEM scalars) have no flow collection at all: a vectorised search
    // settles them without the byte-by-byte walk (which was 4 % of loading a 100,000-cluster fleet).
    if memchr::memchr2(b'[', b'{', bytes).is_none() {
        return Ok(());
    }
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    let mut token_start = true;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => line += 1,
            b'#' if token_start => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' if token_start => {
                i += 1;
                while i < bytes.len() && bytes[i] != b {
                    if bytes[i] == b'\\' && b == b'"' {
                        i += 1;
                    }
                    if bytes.get(i) == Some(&b'\n') {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(DocumentError::TooDeep {
                        limit: MAX_FLOW_DEPTH,
                        line,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        token_start = matches!(
            b,
            b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':' | b'-' | b'?'
        );
        i += 1;
    }
    Ok(())
}

/// Parses a document into a typed value, within the size and alias budgets.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, DocumentError> {
    check_size(text)?;
    serde_norway::from_str(text).map_err(|e| DocumentError::from_yaml(&e))
}

/// Parses a document into an untyped YAML value, within the size and alias budgets.
pub fn parse_value(text: &str) -> Result<serde_norway::Value, DocumentError> {
    parse(text)
}

/// Parses a document of at most `limit` bytes (not [`MAX_DOCUMENT_BYTES`]: a list of many
/// kubeconfigs may be larger than one file of the inventory) within the same alias and depth budgets.
pub fn parse_within<T: DeserializeOwned>(text: &str, limit: usize) -> Result<T, DocumentError> {
    check_size_within(text, limit)?;
    serde_norway::from_str(text).map_err(|e| DocumentError::from_yaml(&e))
}

/// The 1-based line of a field path such as `bindings[2].user` or `oidc.clientId` in a block-style
/// YAML document: the line of its key, or of the sequence item an index names; `None` when the path is
/// not found. Used to put a line on problems found after parsing (the parser's own errors carry one).
/// A flow collection (`[a, b]`, `{a: b}`) gives the line of the key that holds it.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let blank = |line: &str| {
        let t = line.trim_start();
        t.is_empty() || t.starts_with('#') || t.starts_with("---")
    };
    // The lines [start, end) hold the mapping being searched; `start` may be a `- ` item line.
    let (mut start, mut end) = (0, lines.len());
    let mut found = None;
    for segment in path.split('.') {
        let (key, indexes) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        // The key, at the first indentation of the range (an item's first key follows its `- `).
        let mut level = None;
        let mut at = None;
        for (i, line) in lines.iter().enumerate().take(end).skip(start) {
            if blank(line) {
                continue;
            }
            let mut content = line.trim_start();
            let mut column = indent(line);
            if i == start && content.starts_with("- ") {
                content = &content[2..];
                column += 2;
            }
            let level = *level.get_or_insert(column);
            if column < level {
                break;
            }
            if column == level
                && content
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
            {
                at = Some((i, column));
                break;
            }
        }
        let (line, column) = at?;
        found = Some(line);
        // The key's value: the lines after it indented deeper (or, for a sequence, at the same
        // indentation and starting with `- `).
        let value_end = (line + 1..end)
            .find(|&i| {
                !blank(lines[i])
                    && (indent(lines[i]) < column
                        || (indent(lines[i]) == column && !lines[i].trim_start().starts_with("- ")))
            })
            .unwrap_or(end);
        (start, end) = (line + 1, value_end);
        for index in indexes
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .map(str::parse::<usize>)
        {
            let index = index.ok()?;
            let items: Vec<usize> = (start..end)
                .filter(|&i| lines[i].trim_start().starts_with("- ") || lines[i].trim() == "-")
                .collect();
            let item_indent = items.first().map(|&i| indent(lines[i]))?;
            let items: Vec<usize> = items
                .into_iter()
                .filter(|&i| indent(lines[i]) == item_indent)
                .collect();
            let item = *items.get(index)?;
            let next = items.get(index + 1).copied().unwrap_or(end);
            found = Some(item);
            (start, end) = (item, next);
        }
    }
    found.map(|line| line + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_path_names_its_line() {
        let text = "tenant: acme\n# a comment\nprojects:\n  - uid: platform\n    name: Platform\n  - uid: edge\n    name: Edge\nbindings:\n- user: a@x.test\n  role: Viewer\n- team: ops\n  role: Admin\n  project: edge\noidc:\n  issuerUrl: https://x\n  scopes: [a, b]\n";
        assert_eq!(line_of(text, "tenant"), Some(1));
        assert_eq!(line_of(text, "projects[1].name"), Some(7));
        assert_eq!(line_of(text, "projects[1]"), Some(6));
        assert_eq!(line_of(text, "bindings[1].project"), Some(13));
        assert_eq!(line_of(text, "bindings[0].user"), Some(9));
        assert_eq!(line_of(text, "oidc.scopes"), Some(16));
        assert_eq!(
            line_of(text, "oidc.scopes[1]"),
            None,
            "a flow sequence has no item lines"
        );
        assert_eq!(line_of(text, "projects[5].uid"), None);
        assert_eq!(line_of(text, "users[0].email"), None);
        // A nested key of the same name is not taken for the top-level one.
        assert_eq!(line_of("a:\n  name: x\nname: y\n", "name"), Some(3));
    }

    #[test]
    fn oversized_document_is_rejected_before_parsing() {
        let text = "a: b\n".repeat(MAX_DOCUMENT_BYTES / 4);
        let err = parse_value(&text).unwrap_err();
        assert!(matches!(err, DocumentError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn deep_flow_nesting_is_rejected_by_the_prescan() {
        let deep = format!("a:\n  b: {}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            parse_value(&deep).unwrap_err(),
            DocumentError::TooDeep { limit: 64, line: 2 }
        );
        let quoted = format!(
            "a: \"{}\"\nb: '{}'\nc: # {}\nd: it's [x]\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        parse_value(&quoted).expect("brackets in quotes and comments do not count");
    }

    #[test]
    fn syntax_error_reports_line() {
        let err = parse_value("a: b\nc: [unclosed\n").unwrap_err();
        assert!(err.line().is_some(), "{err:?}");
    }
}
