//! Pack macros: `{{ .spectro.pack.<pack>.<dotted.path> }}` and the system macros
//! `{{ .spectro.system.cluster.uid }}`, `{{ .spectro.system.cluster.name }}` and
//! `{{ .spectro.system.reverseproxy.server }}`.
//!
//! Only the values the OIDC analysis reads are resolved. A pack macro may point at another value that
//! itself holds macros; resolution stops after [`MAX_DEPTH`] levels so that a cycle is reported, not
//! followed forever.

use serde_norway::Value;

/// How deep macros may refer to values holding further macros.
pub const MAX_DEPTH: usize = 8;

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

/// Replaces every macro in `text`, reading pack macros from `root`.
pub(crate) fn resolve(
    text: &str,
    root: &Value,
    ctx: &MacroContext<'_>,
) -> Result<String, UnresolvedMacro> {
    resolve_at_depth(text, root, ctx, 0)
}

fn resolve_at_depth(
    text: &str,
    root: &Value,
    ctx: &MacroContext<'_>,
    depth: usize,
) -> Result<String, UnresolvedMacro> {
    if !text.contains("{{") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(UnresolvedMacro {
                text: rest[start..].to_owned(),
                why: "`{{` without a closing `}}`".to_owned(),
            });
        };
        let expr = after[..end].trim();
        let value = expand(expr, root, ctx, depth).map_err(|why| UnresolvedMacro {
            text: format!("{{{{ {expr} }}}}"),
            why,
        })?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(
    expr: &str,
    root: &Value,
    ctx: &MacroContext<'_>,
    depth: usize,
) -> Result<String, String> {
    let system = |value: Option<&str>, what: &str| {
        value
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("{what} is not set"))
    };
    match expr {
        ".spectro.system.cluster.uid" => return system(Some(ctx.cluster_uid), "the cluster uid"),
        ".spectro.system.cluster.name" => {
            return system(Some(ctx.cluster_name), "the cluster name");
        }
        ".spectro.system.reverseproxy.server" => {
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
    let segments: Vec<&str> = path.split('.').collect();
    let value =
        lookup(root, &segments).ok_or_else(|| format!("`{path}` is not in the pack values"))?;
    let text = scalar_text(value).ok_or_else(|| format!("`{path}` is not a single value"))?;
    resolve_at_depth(&text, root, ctx, depth + 1).map_err(|inner| inner.why)
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

    #[test]
    fn other_pack_and_unknown_are_unresolved() {
        let root = Value::Null;
        assert!(resolve("{{ .spectro.pack.other.a }}", &root, &ctx()).is_err());
        assert!(resolve("{{ .spectro.system.cluster.region }}", &root, &ctx()).is_err());
        assert!(resolve("{{ .spectro.pack.kubernetes.missing }}", &root, &ctx()).is_err());
        let no_proxy = MacroContext {
            reverse_proxy_server: None,
            ..ctx()
        };
        assert!(
            resolve(
                "{{ .spectro.system.reverseproxy.server }}",
                &root,
                &no_proxy
            )
            .is_err()
        );
    }
}
