//! One audit record and the three ways it is written: a JSON line of the audit stream (file and
//! webhook), and a line of the log in either log format (text or JSON) when no audit stream is
//! configured. Each is written straight from the record's fields into a buffer: no `tracing` event,
//! no field visitor, no formatting machinery for the common values.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::service::auth::{Caller, Method};

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A kubeconfig or admin kubeconfig was handed out (a download or a watch delivery).
    AssetServed,
    /// A download was refused, or a watcher's file was taken back.
    AssetRefused,
    /// An admin credential was minted for a caller.
    CredentialIssued,
    /// A minted credential was revoked.
    CredentialRevoked,
}

impl Event {
    /// The record's message (the `event` of a stream record).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::AssetServed => "asset served",
            Event::AssetRefused => "asset refused",
            Event::CredentialIssued => "credential issued",
            Event::CredentialRevoked => "credential revoked",
        }
    }
}

/// One field's value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Str(&'a str),
    /// Text this process made from a fixed alphabet (letters, digits, `-`, `_`, `.`, `+`): a digest,
    /// a request id, a name from a fixed list. Written as it is, with no scan for escapes.
    Plain(&'a str),
    Bool(bool),
    U64(u64),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Value::Str(value)
    }
}

impl From<bool> for Value<'_> {
    fn from(value: bool) -> Self {
        Value::Bool(value)
    }
}

impl From<u64> for Value<'_> {
    fn from(value: u64) -> Self {
        Value::U64(value)
    }
}

/// How a caller proved who it is: every credential it presented (usually one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    api_key: bool,
    token_issuer: Option<Arc<str>>,
    certificate: bool,
}

impl Auth {
    /// The methods of an authenticated caller.
    pub fn of(caller: &Caller) -> Auth {
        let mut auth = Auth::default();
        for proof in &caller.proofs {
            match &proof.method {
                Method::ApiKey => auth.api_key = true,
                Method::Token { issuer } => auth.token_issuer = Some(Arc::clone(issuer)),
                Method::Certificate { .. } => auth.certificate = true,
            }
        }
        auth
    }

    /// `api_key`, `token`, `certificate`, joined with `+` when a caller presented several; `None`
    /// for a caller that did not authenticate.
    fn methods(&self) -> Option<&'static str> {
        Some(
            match (self.api_key, self.token_issuer.is_some(), self.certificate) {
                (false, false, false) => return None,
                (true, false, false) => "api_key",
                (false, true, false) => "token",
                (false, false, true) => "certificate",
                (true, true, false) => "api_key+token",
                (true, false, true) => "api_key+certificate",
                (false, true, true) => "token+certificate",
                (true, true, true) => "api_key+token+certificate",
            },
        )
    }
}

/// One audit record: the event and its fields, in the order they are written. Built in place (the
/// builder methods take `&mut self`): a record is some hundreds of bytes, and moving it whole for
/// every field added was a visible share of a cached download.
#[derive(Debug)]
pub struct Record<'a> {
    pub event: Event,
    fields: SmallVec<[(&'static str, Value<'a>); 14]>,
}

impl<'a> Record<'a> {
    /// A record of `event` by `user` (`-` when the caller did not authenticate), with how it
    /// authenticated.
    pub fn new(event: Event, user: &'a str, auth: &'a Auth) -> Self {
        let mut record = Record {
            event,
            fields: SmallVec::new(),
        };
        record.fields.push(("user", Value::Str(user)));
        if let Some(methods) = auth.methods() {
            record.fields.push(("auth", Value::Plain(methods)));
        }
        if let Some(issuer) = &auth.token_issuer {
            record.fields.push(("token_issuer", Value::Str(issuer)));
        }
        record
    }

    /// Adds a field.
    pub fn with(&mut self, name: &'static str, value: impl Into<Value<'a>>) -> &mut Self {
        self.fields.push((name, value.into()));
        self
    }

    /// Adds a field whose value this process made from letters, digits, `-`, `_`, `.` and `+` (see
    /// [`Value::Plain`]).
    pub fn with_plain(&mut self, name: &'static str, value: &'a str) -> &mut Self {
        debug_assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+')),
            "{name}: {value:?} is not plain"
        );
        self.fields.push((name, Value::Plain(value)));
        self
    }

    /// Adds a field when there is a value.
    pub fn with_some(
        &mut self,
        name: &'static str,
        value: Option<impl Into<Value<'a>>>,
    ) -> &mut Self {
        match value {
            Some(value) => self.with(name, value),
            None => self,
        }
    }

    /// The value of a field, if the record has it.
    pub fn field(&self, name: &str) -> Option<Value<'a>> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// The stream record after its `seq`: `"time":"…","event":"…",<fields>}` and a newline.
    pub(super) fn write_stream_tail(&self, out: &mut String) {
        out.push_str("\"time\":\"");
        crate::telemetry::write_timestamp(out);
        out.push_str("\",\"event\":\"");
        out.push_str(self.event.as_str());
        out.push('"');
        self.write_json_fields(out);
        out.push_str("}\n");
    }

    /// A log line in the JSON log format: the same object the log's own JSON lines are.
    pub(super) fn write_json_log_line(&self, out: &mut String) {
        out.push_str("{\"timestamp\":\"");
        crate::telemetry::write_timestamp(out);
        out.push_str("\",\"level\":\"INFO\",\"message\":\"");
        out.push_str(self.event.as_str());
        out.push('"');
        self.write_json_fields(out);
        out.push_str(",\"target\":\"audit\"}\n");
    }

    /// A log line in the text log format (`<time>  INFO audit: asset served user=… …`).
    pub(super) fn write_text_log_line(&self, out: &mut String) {
        crate::telemetry::write_timestamp(out);
        out.push_str("  INFO audit: ");
        self.write_text_fields(out);
        out.push('\n');
    }

    /// The message and `name=value` fields by the log's one quoting rule.
    pub(super) fn write_text_fields(&self, out: &mut String) {
        out.push_str(self.event.as_str());
        for (name, value) in &self.fields {
            out.push(' ');
            out.push_str(name);
            out.push('=');
            match value {
                Value::Str(text) => kubeconfig_logline::write_value(out, text),
                Value::Plain(text) => out.push_str(text),
                Value::Bool(true) => out.push_str("true"),
                Value::Bool(false) => out.push_str("false"),
                Value::U64(n) => out.push_str(itoa::Buffer::new().format(*n)),
            }
        }
    }

    fn write_json_fields(&self, out: &mut String) {
        for (name, value) in &self.fields {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            match value {
                Value::Str(text) => crate::telemetry::write_json_string(out, text),
                Value::Plain(text) => {
                    out.push('"');
                    out.push_str(text);
                    out.push('"');
                }
                Value::Bool(true) => out.push_str("true"),
                Value::Bool(false) => out.push_str("false"),
                Value::U64(n) => out.push_str(itoa::Buffer::new().format(*n)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served<'a>(auth: &'a Auth, cluster: &'a str) -> Record<'a> {
        let mut record = Record::new(Event::AssetServed, "a@x.test", auth);
        record
            .with("cluster", cluster)
            .with("allowed", true)
            .with("not_after", 17_u64);
        record
    }

    #[test]
    fn a_stream_record_is_one_json_object_whatever_its_values() {
        let auth = Auth {
            api_key: true,
            token_issuer: Some(Arc::from("https://issuer.test")),
            certificate: false,
        };
        let hostile = "x\"}\n{\"event\":\"forged\u{2028}";
        let mut line = String::from("{\"seq\":1,");
        served(&auth, hostile).write_stream_tail(&mut line);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with("}\n"));
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["event"], "asset served");
        assert_eq!(value["cluster"], hostile);
        assert_eq!(value["auth"], "api_key+token");
        assert_eq!(value["token_issuer"], "https://issuer.test");
        assert_eq!(value["allowed"], true);
        assert_eq!(value["not_after"], 17);
    }

    #[test]
    fn log_lines_keep_a_hostile_value_in_its_field() {
        let auth = Auth::default();
        let hostile = "x\n2026-12-01T00:00:00.000000Z  INFO audit: asset served user=\"admin\"";
        let mut text = String::new();
        served(&auth, hostile).write_text_log_line(&mut text);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.contains(" INFO audit: asset served user=a@x.test cluster=\"x\\n"));
        assert!(
            !text.contains("auth="),
            "an unauthenticated caller has no method: {text}"
        );
        let mut json = String::new();
        served(&auth, hostile).write_json_log_line(&mut json);
        let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(value["message"], "asset served");
        assert_eq!(value["target"], "audit");
        assert_eq!(value["cluster"], hostile);
    }
}
