//! Pack macros: `{{ .spectro.pack.<pack>.<dotted.path> }}` and the system macros
//! `{{ .spectro.system.cluster.uid }}`, `{{ .spectro.system.cluster.name }}` and
//! `{{ .spectro.system.reverseproxy.server }}`.
//!
//! Only the values the OIDC analysis reads are resolved. A pack macro may point at another value that
//! itself holds macros; resolution stops after [`MAX_DEPTH`] levels so that a cycle is reported, not
//! followed forever.
//!
//! Expansion is bounded for hostile input: each referenced value is expanded once per document
//! (memoised), an expanded value longer than [`MAX_EXPANDED_BYTES`] is refused, and the bytes produced
//! over the whole document may not exceed [`MAX_EXPANSION_WORK`]. Without these, a few KiB of values
//! that each refer to the previous one many times expand exponentially.

use std::collections::HashMap;

use serde_norway::Value;

/// How deep macros may refer to values holding further macros.
pub const MAX_DEPTH: usize = 8;
/// The longest value a macro expansion may produce, in bytes.
pub const MAX_EXPANDED_BYTES: usize = 4096;
/// The most bytes all expansions of one document may produce together.
pub const MAX_EXPANSION_WORK: usize = 256 * 1024;

/// The facts system macros resolve to, and the name of the pack whose values are being read.
#[derive(Debug, Clone, Copy)]
pub struct MacroContext<'a> {
    /// The pack's name; `{{ .spectro.pack.<this name>.… }}` refers to the same pack values.
    pub pack_name: &'a str,
    pub cluster_uid: &'a str,
    pub cluster_name: &'a str,
    /// The Spectro Proxy server host, when the service has one.
    pub reverse_proxy_server: Option<&'a str>,
}

/// A macro that could not be resolved: its text and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnresolvedMacro {
    pub text: String,
    pub why: String,
}

/// Looks up a dotted path (already split) in a YAML value.
pub(crate) fn lookup<'v>(root: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(root, |node, key| node.get(*key))
}

/// A scalar as text; `None` for mappings, sequences, null and tagged values.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Expands macros for one document: remembers what each referenced value expanded to and counts the
/// bytes produced, so that no document can make expansion expensive.
pub(crate) struct Expander<'a> {
    root: &'a Value,
    ctx: MacroContext<'a>,
    /// Expansions of referenced values, by dotted path.
    memo: HashMap<String, Result<String, String>>,
    /// Bytes produced so far.
    work: usize,
    /// Whether a macro read the service's settings (the reverse proxy server), so that the outcome
    /// may change when they do.
    pub(crate) read_service_settings: bool,
}

impl<'a> Expander<'a> {
    pub(crate) fn new(root: &'a Value, ctx: MacroContext<'a>) -> Self {
        Expander {
            root,
            ctx,
            memo: HashMap::new(),
            work: 0,
            read_service_settings: false,
        }
    }

    /// Replaces every macro in `text`.
    pub(crate) fn resolve(&mut self, text: &str) -> Result<String, UnresolvedMacro> {
        self.resolve_at_depth(text, 0)
    }

    fn resolve_at_depth(&mut self, text: &str, depth: usize) -> Result<String, UnresolvedMacro> {
        if !text.contains("{{") {
            return Ok(text.to_owned());
        }
        let mut out = String::with_capacity(text.len().min(MAX_EXPANDED_BYTES));
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(UnresolvedMacro {
                    text: excerpt(&rest[start..]),
                    why: "`{{` without a closing `}}`".to_owned(),
                });
            };
            let expr = after[..end].trim();
            let unresolved = |why: String| UnresolvedMacro {
                text: excerpt(&format!("{{{{ {expr} }}}}")),
                why,
            };
            let value = self.expand(expr, depth).map_err(unresolved)?;
            out.push_str(&value);
            self.work = self.work.saturating_add(value.len());
            if out.len() > MAX_EXPANDED_BYTES {
                return Err(unresolved(format!(
                    "expands to more than {MAX_EXPANDED_BYTES} bytes"
                )));
            }
            if self.work > MAX_EXPANSION_WORK {
                return Err(unresolved(format!(
                    "the pack's macros expand to more than {MAX_EXPANSION_WORK} bytes in all"
                )));
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        if out.len() > MAX_EXPANDED_BYTES {
            return Err(UnresolvedMacro {
                text: excerpt(text),
                why: format!("expands to more than {MAX_EXPANDED_BYTES} bytes"),
            });
        }
        Ok(out)
    }

    fn expand(&mut self, expr: &str, depth: usize) -> Result<String, String> {
        let ctx = self.ctx;
        let system = |value: Option<&str>, what: &str| {
            value
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("{what} is not set"))
        };
        match expr {
            ".spectro.system.cluster.uid" => {
                return system(Some(ctx.cluster_uid), "the cluster uid");
            }
            ".spectro.system.cluster.name" => {
                return system(Some(ctx.cluster_name), "the cluster name");
            }
            ".spectro.system.reverseproxy.server" => {
                self.read_service_settings = true;
                return system(
                    ctx.reverse_proxy_server,
                    "the service's reverse proxy server",
                );
            }
            _ => {}
        }
        let Some(reference) = expr.strip_prefix(".spectro.pack.") else {
            return Err("unknown macro".to_owned());
        };
        let Some(path) = reference
            .strip_prefix(ctx.pack_name)
            .and_then(|p| p.strip_prefix('.'))
        else {
            return Err(format!(
                "refers to another pack; only `.spectro.pack.{}.…` can be resolved here",
                ctx.pack_name
            ));
        };
        if depth >= MAX_DEPTH {
            return Err(format!(
                "macros nest deeper than {MAX_DEPTH} levels (a cycle?)"
            ));
        }
        if let Some(done) = self.memo.get(path) {
            return done.clone();
        }
        let segments: Vec<&str> = path.split('.').collect();
        let result = match lookup(self.root, &segments) {
            None => Err(format!("`{}` is not in the pack values", excerpt(path))),
            Some(value) => match scalar_text(value) {
                None => Err(format!("`{}` is not a single value", excerpt(path))),
                Some(text) => self
                    .resolve_at_depth(&text, depth + 1)
                    .map_err(|inner| inner.why),
            },
        };
        // A depth failure depends on where the value was reached from; everything else does not.
        if !result
            .as_ref()
            .is_err_and(|why| why.contains("nest deeper"))
        {
            self.memo.insert(path.to_owned(), result.clone());
        }
        result
    }
}

/// At most 80 characters of `text`, for messages.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Replaces every macro in `text`, reading pack macros from `root` (a fresh expander each call).
#[cfg(test)]
fn resolve(text: &str, root: &Value, ctx: &MacroContext<'_>) -> Result<String, UnresolvedMacro> {
    Expander::new(root, *ctx).resolve(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MacroContext<'static> {
        MacroContext {
            pack_name: "kubernetes",
            cluster_uid: "abc123",
            cluster_name: "prod",
            reverse_proxy_server: Some("proxy.example.test"),
        }
    }

    #[test]
    fn resolves_system_and_pack_macros() {
        let root: Value =
            serde_norway::from_str("a:\n  b: x-{{ .spectro.system.cluster.name }}\n").unwrap();
        let got = resolve(
            "{{.spectro.pack.kubernetes.a.b}}/{{ .spectro.system.cluster.uid }}.{{ .spectro.system.reverseproxy.server }}",
            &root,
            &ctx(),
        )
        .unwrap();
        assert_eq!(got, "x-prod/abc123.proxy.example.test");
    }

    #[test]
    fn cycle_is_reported() {
        let root: Value = serde_norway::from_str(
            "a: '{{ .spectro.pack.kubernetes.b }}'\nb: '{{ .spectro.pack.kubernetes.a }}'\n",
        )
        .unwrap();
        let err = resolve("{{ .spectro.pack.kubernetes.a }}", &root, &ctx()).unwrap_err();
        assert!(err.why.contains("deeper"), "{err:?}");
    }

    /// Thirty references per level, seven levels deep: 30^7 copies without memoisation and caps.
    #[test]
    fn an_expansion_bomb_is_refused_quickly() {
        let mut values = String::from("l0: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'\n");
        for level in 1..=7 {
            let refs = format!("{{{{ .spectro.pack.kubernetes.l{} }}}}", level - 1).repeat(30);
            values.push_str(&format!("l{level}: '{refs}'\n"));
        }
        let root: Value = serde_norway::from_str(&values).unwrap();
        let started = std::time::Instant::now();
        let err = resolve("{{ .spectro.pack.kubernetes.l7 }}", &root, &ctx()).unwrap_err();
        assert!(err.why.contains("more than"), "{err:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "refused in {:?}",
            started.elapsed()
        );
        // Many distinct values each within the per-value cap still hit the per-document cap.
        let mut wide = String::new();
        for i in 0..200 {
            wide.push_str(&format!("v{i}: '{}'\n", "y".repeat(3000)));
        }
        let refs: String = (0..200)
            .map(|i| format!("{{{{ .spectro.pack.kubernetes.v{i} }}}}"))
            .collect();
        let root: Value = serde_norway::from_str(&wide).unwrap();
        let mut expander = Expander::new(&root, ctx());
        let mut refused = false;
        for chunk in refs.split_inclusive("}}") {
            if expander.resolve(chunk).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the per-document work cap applies");
    }

    #[test]
    fn other_pack_and_unknown_are_unresolved() {
        let root = Value::Null;
        let why = |text: &str, ctx: &MacroContext<'_>| {
            resolve(text, &root, ctx).expect_err("unresolved").why
        };
        assert!(why("{{ .spectro.pack.other.a }}", &ctx()).contains("another pack"));
        assert_eq!(
            why("{{ .spectro.system.cluster.region }}", &ctx()),
            "unknown macro"
        );
        assert!(
            why("{{ .spectro.pack.kubernetes.missing }}", &ctx())
                .contains("not in the pack values")
        );
        let no_proxy = MacroContext {
            reverse_proxy_server: None,
            ..ctx()
        };
        assert!(
            why("{{ .spectro.system.reverseproxy.server }}", &no_proxy)
                .contains("reverse proxy server is not set")
        );
    }
}
