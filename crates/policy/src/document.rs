//! Bounded YAML parsing for everything the policy crate reads from disk or the network.
//!
//! Every document is checked against [`MAX_DOCUMENT_BYTES`] before the parser sees it, and the parser
//! (`serde_norway`) refuses alias expansion beyond its repetition budget, so a hostile document fails in
//! milliseconds with a typed error instead of hanging or allocating without bound.

use serde::de::DeserializeOwned;

/// The largest YAML document (tenant file, pack values, embedded config) accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why a YAML document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("document is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
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
            DocumentError::TooLarge { .. } => None,
        }
    }

    fn from_yaml(error: &serde_norway::Error) -> Self {
        let location = error.location();
        DocumentError::Invalid {
            message: error.to_string(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
        }
    }
}

fn check_size(text: &str) -> Result<(), DocumentError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge {
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_document_is_rejected_before_parsing() {
        let text = "a: b\n".repeat(MAX_DOCUMENT_BYTES / 4);
        let err = parse_value(&text).unwrap_err();
        assert!(matches!(err, DocumentError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn syntax_error_reports_line() {
        let err = parse_value("a: b\nc: [unclosed\n").unwrap_err();
        assert!(err.line().is_some(), "{err:?}");
    }
}
