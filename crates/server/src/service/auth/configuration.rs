//! The `--authentication-config` file: which JWT issuers are trusted and how their claims name a
//! caller. It follows kube-apiserver's `AuthenticationConfiguration` (`jwt:` entries with `issuer`,
//! `claimMappings` and `claimValidationRules`), so a file written for a cluster reads the same here,
//! minus CEL: every `expression` field is refused with a message saying so, never silently ignored.
//! Two extensions serve issuers that cannot be reached over the network: `issuer.jwks` (the key set
//! inline) and `issuer.jwksFile` (a file re-read when it changes). A mistake is reported with the
//! file, the line and the field path (`jwt[1].issuer.audiences: must not be empty`).

use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The `apiVersion`s accepted: kube-apiserver's.
pub const API_VERSIONS: [&str; 3] = [
    "apiserver.config.k8s.io/v1",
    "apiserver.config.k8s.io/v1beta1",
    "apiserver.config.k8s.io/v1alpha1",
];

/// The largest configuration file read, in bytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Why a configuration file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigurationError {
    /// The file, as given.
    pub file: String,
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// The field path and what is wrong with it.
    pub message: String,
}

/// The trusted JWT issuers, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthenticationConfiguration {
    pub jwt: Vec<JwtAuthenticator>,
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtAuthenticator {
    #[serde(deserialize_with = "issuer")]
    pub issuer: Issuer,
    pub claim_mappings: ClaimMappings,
    #[serde(default)]
    pub claim_validation_rules: Vec<ClaimValidationRule>,
    #[serde(default, deserialize_with = "refuse_user_validation_rules")]
    user_validation_rules: Option<()>,
}

/// Where tokens come from and where their keys are found.
#[derive(Debug, Clone, PartialEq)]
pub struct Issuer {
    /// The exact `iss` of its tokens (https).
    pub url: String,
    /// Any one of them must be in the token's `aud`.
    pub audiences: Vec<String>,
    pub keys: KeySource,
}

/// Where an issuer's keys are found.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// OpenID discovery document (its `jwks_uri`), verified with this CA (PEM) or the system roots.
    Discovery {
        discovery_url: String,
        certificate_authority: Option<String>,
    },
    /// An inline JWKS.
    Inline(serde_json::Value),
    /// A JWKS file, re-read when it changes.
    File(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIssuer {
    #[serde(deserialize_with = "https_url")]
    url: String,
    #[serde(
        default,
        rename = "discoveryURL",
        deserialize_with = "optional_https_url"
    )]
    discovery_url: Option<String>,
    #[serde(deserialize_with = "audiences")]
    audiences: Vec<String>,
    #[serde(default)]
    audience_match_policy: Option<AudienceMatchPolicy>,
    #[serde(default, deserialize_with = "certificate_authority")]
    certificate_authority: Option<String>,
    #[serde(default, deserialize_with = "inline_jwks")]
    jwks: Option<serde_json::Value>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "refuse_egress_selector_type")]
    egress_selector_type: Option<()>,
}

#[derive(Deserialize)]
enum AudienceMatchPolicy {
    MatchAny,
}

impl TryFrom<RawIssuer> for Issuer {
    type Error = String;

    fn try_from(raw: RawIssuer) -> Result<Self, String> {
        let _ = raw.egress_selector_type;
        if raw.audiences.len() > 1 && raw.audience_match_policy.is_none() {
            return Err(
                "issuer.audienceMatchPolicy: must be MatchAny when there are several audiences (as in Kubernetes)"
                    .to_owned(),
            );
        }
        let keys = match (raw.discovery_url, raw.jwks, raw.jwks_file) {
            (discovery_url, None, None) => KeySource::Discovery {
                discovery_url: discovery_url.unwrap_or_else(|| {
                    format!(
                        "{}/.well-known/openid-configuration",
                        raw.url.trim_end_matches('/')
                    )
                }),
                certificate_authority: raw.certificate_authority,
            },
            (None, Some(jwks), None) if raw.certificate_authority.is_none() => {
                KeySource::Inline(jwks)
            }
            (None, None, Some(file)) if raw.certificate_authority.is_none() => {
                KeySource::File(file)
            }
            _ => {
                return Err("issuer: set at most one of discoveryURL, jwks and jwksFile (certificateAuthority only goes with discovery)".to_owned());
            }
        };
        Ok(Issuer {
            url: raw.url,
            audiences: raw.audiences,
            keys,
        })
    }
}

/// How the caller's user name and groups are read from the claims.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMappings {
    #[serde(deserialize_with = "username")]
    pub username: PrefixedClaim,
    #[serde(default, deserialize_with = "groups")]
    pub groups: Option<PrefixedClaim>,
    #[serde(default, deserialize_with = "refuse_uid")]
    uid: Option<()>,
    #[serde(default, deserialize_with = "refuse_extra")]
    extra: Option<()>,
}

/// A claim and the prefix put before its value.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixedClaim {
    pub claim: String,
    pub prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrefixedClaim {
    #[serde(default)]
    claim: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default, deserialize_with = "refuse_expression")]
    expression: Option<()>,
}

impl RawPrefixedClaim {
    fn check(self, field: &str) -> Result<PrefixedClaim, String> {
        let _ = self.expression;
        let claim = self
            .claim
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("{field}.claim: is required"))?;
        // As in Kubernetes: the prefix must be written out, even when empty, so that names from two
        // issuers cannot collide by accident.
        let prefix = self.prefix.ok_or_else(|| {
            format!("{field}.prefix: is required when claim is set; use \"\" for no prefix (as in Kubernetes)")
        })?;
        Ok(PrefixedClaim { claim, prefix })
    }
}

fn issuer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Issuer, D::Error> {
    Issuer::try_from(RawIssuer::deserialize(deserializer)?).map_err(D::Error::custom)
}

fn username<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PrefixedClaim, D::Error> {
    RawPrefixedClaim::deserialize(deserializer)?
        .check("username")
        .map_err(D::Error::custom)
}

fn groups<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PrefixedClaim>, D::Error> {
    RawPrefixedClaim::deserialize(deserializer)?
        .check("groups")
        .map(Some)
        .map_err(D::Error::custom)
}

/// Functions that refuse a field of kube's format kubeconfigd does not implement, naming it.
macro_rules! refuse {
    ($($function:ident: $field:literal => $why:literal,)*) => {$(
        fn $function<'de, D: Deserializer<'de>>(_: D) -> Result<Option<()>, D::Error> {
            Err(D::Error::custom(concat!($field, ": ", $why)))
        }
    )*};
}

refuse! {
    refuse_expression: "expression" => "CEL expressions are not supported by kubeconfigd; use claim, prefix and requiredValue",
    refuse_message: "message" => "goes with a CEL expression, which kubeconfigd does not support",
    refuse_user_validation_rules: "userValidationRules" => "CEL expressions are not supported by kubeconfigd",
    refuse_uid: "uid" => "is not supported by kubeconfigd",
    refuse_extra: "extra" => "is not supported by kubeconfigd",
    refuse_egress_selector_type: "egressSelectorType" => "is not supported by kubeconfigd",
    refuse_anonymous: "anonymous" => "is not supported by kubeconfigd",
}

/// A claim that must hold exactly this string.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimValidationRule {
    pub claim: String,
    pub required_value: String,
    #[serde(default, deserialize_with = "refuse_expression")]
    expression: Option<()>,
    #[serde(default, deserialize_with = "refuse_message")]
    message: Option<()>,
}

/// An issuer or discovery URL: https only, as in Kubernetes (a token's issuer is an identity, and its
/// keys must not be fetched over a connection anyone on the path can change; a test issuer on
/// loopback gets a certificate from a throwaway CA instead).
fn check_https_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must be an https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() || url.contains('#') || url.contains('@') {
        return Err(format!(
            "{url:?} must not have a query, fragment or user info"
        ));
    }
    if url.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(format!("{url:?} has characters a URL cannot have"));
    }
    Ok(())
}

fn https_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let url = String::deserialize(deserializer)?;
    check_https_url(&url).map_err(|e| D::Error::custom(format!("url: {e}")))?;
    Ok(url)
}

fn optional_https_url<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(deserializer)?;
    check_https_url(&url).map_err(|e| D::Error::custom(format!("discoveryURL: {e}")))?;
    Ok(Some(url))
}

fn audiences<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let audiences = Vec::<String>::deserialize(deserializer)?;
    if audiences.is_empty() {
        return Err(D::Error::custom("audiences: must not be empty"));
    }
    if audiences.iter().any(String::is_empty) {
        return Err(D::Error::custom("audiences: an audience must not be empty"));
    }
    Ok(audiences)
}

fn certificate_authority<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let pem = String::deserialize(deserializer)?;
    super::jwks::root_store(Some(&pem))
        .map_err(|e| D::Error::custom(format!("certificateAuthority: {e}")))?;
    Ok(Some(pem))
}

fn inline_jwks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    let jwks = serde_json::Value::deserialize(deserializer)?;
    let bytes = serde_json::to_vec(&jwks).map_err(D::Error::custom)?;
    super::jwks::parse(&bytes).map_err(|e| D::Error::custom(format!("jwks: {e}")))?;
    Ok(Some(jwks))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    jwt: Vec<JwtAuthenticator>,
    #[serde(default, deserialize_with = "refuse_anonymous")]
    anonymous: Option<()>,
}

impl AuthenticationConfiguration {
    /// Reads and validates `path` (a relative `jwksFile` is taken from the file's directory).
    pub fn load(path: &Path) -> Result<Self, ConfigurationError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigurationError {
            file: path.display().to_string(),
            line: None,
            message: e.to_string(),
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        for jwt in &mut config.jwt {
            if let KeySource::File(file) = &mut jwt.issuer.keys
                && file.is_relative()
            {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// Validates the text of a file named `file` (for messages).
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigurationError> {
        let error = |line: Option<usize>, message: String| ConfigurationError {
            file: file.to_owned(),
            line,
            message,
        };
        if text.len() > MAX_FILE_BYTES {
            return Err(error(
                None,
                format!(
                    "the file is {} bytes; the limit is {MAX_FILE_BYTES}",
                    text.len()
                ),
            ));
        }
        let raw: RawFile = serde_norway::from_str(text).map_err(|e| {
            let (line, message) = located(text, &e);
            error(line, message)
        })?;
        if !API_VERSIONS.contains(&raw.api_version.as_str()) {
            return Err(error(
                line_of(text, "apiVersion", 0),
                format!(
                    "apiVersion: {:?} is not one of {}",
                    raw.api_version,
                    API_VERSIONS.join(", ")
                ),
            ));
        }
        if raw.kind != "AuthenticationConfiguration" {
            return Err(error(
                line_of(text, "kind", 0),
                format!("kind: {:?} must be AuthenticationConfiguration", raw.kind),
            ));
        }
        let _ = raw.anonymous;
        for (i, jwt) in raw.jwt.iter().enumerate() {
            if let Some(first) = raw.jwt[..i]
                .iter()
                .position(|other| other.issuer.url == jwt.issuer.url)
            {
                return Err(error(
                    line_of(text, &jwt.issuer.url, 1),
                    format!(
                        "jwt[{i}].issuer.url: {} is already the issuer of jwt[{first}]",
                        jwt.issuer.url
                    ),
                ));
            }
        }
        Ok(AuthenticationConfiguration { jwt: raw.jwt })
    }
}

/// The field path, what is wrong and the line of a parser error. A check of ours names its field
/// after the path the parser gives (that of the enclosing mapping, where the parser also puts the
/// line): `jwt[1].issuer: audiences: must not be empty` becomes `jwt[1].issuer.audiences: must not be
/// empty`, with the line of the first `audiences:` from the mapping's line on (for a nested field,
/// of its first part).
fn located(text: &str, error: &serde_norway::Error) -> (Option<usize>, String) {
    let mut line = error.location().map(|l| l.line());
    let message = error.to_string();
    // The parser's message ends with "at line L column C": the line goes in front instead.
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    let is_field = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_'))
    };
    let mut parts = message.splitn(3, ": ");
    let (path, field, rest) = (parts.next(), parts.next(), parts.next());
    let message = match (path, field, rest) {
        (Some(path), Some(field), Some(rest)) if is_field(path) && is_field(field) => {
            // `username.prefix` missing: the line of `username:`.
            let key = field.split('.').next().unwrap_or(field);
            let from = line.unwrap_or(1);
            if let Some(found) = text
                .lines()
                .enumerate()
                .skip(from.saturating_sub(1))
                .find(|(_, l)| l.contains(&format!("{key}:")))
            {
                line = Some(found.0 + 1);
            }
            format!("{path}.{field}: {rest}")
        }
        _ => message.to_owned(),
    };
    (line, message)
}

/// The 1-based line of the `skip + 1`-th line that contains `needle`.
fn line_of(text: &str, needle: &str, skip: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .nth(skip)
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"apiVersion: apiserver.config.k8s.io/v1beta1
kind: AuthenticationConfiguration
jwt:
  - issuer:
      url: https://issuer.one.test
      audiences: [kubeconfigd]
    claimMappings:
      username: {claim: sub, prefix: ""}
      groups: {claim: groups, prefix: "one:"}
    claimValidationRules:
      - {claim: tenant, requiredValue: acme}
  - issuer:
      url: https://issuer.two.test
      audiences: [a, b]
      audienceMatchPolicy: MatchAny
      jwks: {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}
    claimMappings:
      username: {claim: email, prefix: ""}
"#;

    fn refused(text: &str) -> ConfigurationError {
        AuthenticationConfiguration::parse(text, "auth.yaml").expect_err("refused")
    }

    #[test]
    fn a_good_file_is_read() {
        let config = AuthenticationConfiguration::parse(GOOD, "auth.yaml").expect("valid");
        assert_eq!(config.jwt.len(), 2);
        assert_eq!(
            config.jwt[0].issuer.keys,
            KeySource::Discovery {
                discovery_url: "https://issuer.one.test/.well-known/openid-configuration"
                    .to_owned(),
                certificate_authority: None
            }
        );
        assert!(matches!(config.jwt[1].issuer.keys, KeySource::Inline(_)));
        assert_eq!(
            config.jwt[0].claim_mappings.groups,
            Some(PrefixedClaim {
                claim: "groups".to_owned(),
                prefix: "one:".to_owned()
            })
        );
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_field() {
        let error = refused(&GOOD.replace("audiences: [a, b]", "audiences: []"));
        assert_eq!(error.line, Some(14), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("auth.yaml:14: jwt[1].issuer.audiences: must not be empty"),
            "{error}"
        );
        let error = refused(&GOOD.replace("url: https://issuer.two.test", "url: http://two.test"));
        assert!(
            error.message.contains("jwt[1].issuer.url: ") && error.message.contains("https://"),
            "{error}"
        );
        assert_eq!(error.line, Some(13), "{error}");
        let error = refused(&GOOD.replace("audienceMatchPolicy", "audienceMatchPolizy"));
        assert!(
            error.message.contains("jwt[1].issuer")
                && error
                    .message
                    .contains("unknown field `audienceMatchPolizy`"),
            "{error}"
        );
        let error = refused(&GOOD.replace("      audienceMatchPolicy: MatchAny\n", ""));
        assert!(error.message.contains("MatchAny"), "{error}");
        let error = refused(&GOOD.replace("{claim: sub, prefix: \"\"}", "{claim: sub}"));
        assert!(
            error
                .message
                .starts_with("jwt[0].claimMappings.username.prefix: is required"),
            "{error}"
        );
        assert_eq!(error.line, Some(8), "{error}");
        let error = refused(&GOOD.replace("v1beta1", "v2"));
        assert_eq!(error.line, Some(1));
        assert!(error.message.starts_with("apiVersion:"), "{error}");
        let error = refused(&GOOD.replace("issuer.two.test", "issuer.one.test"));
        assert_eq!(error.line, Some(13), "{error}");
        assert!(error.message.starts_with("jwt[1].issuer.url:"), "{error}");
        let error = refused(&GOOD.replace(r#""kty": "OKP""#, r#""kty": "oct""#));
        assert!(error.message.starts_with("jwt[1].issuer.jwks:"), "{error}");
    }

    #[test]
    fn cel_and_other_unsupported_fields_are_refused_by_name() {
        let error = refused(&GOOD.replace(
            "{claim: tenant, requiredValue: acme}",
            "{expression: 'claims.tenant == \"acme\"'}",
        ));
        assert!(
            error.message.starts_with(
                "jwt[0].claimValidationRules[0].expression: CEL expressions are not supported"
            ),
            "{error}"
        );
        let error = refused(&GOOD.replace(
            "username: {claim: email, prefix: \"\"}",
            "username: {expression: claims.email}",
        ));
        assert!(
            error
                .message
                .contains("jwt[1].claimMappings.username.expression: CEL"),
            "{error}"
        );
        let error = refused(&format!("{GOOD}anonymous: {{enabled: true}}\n"));
        assert!(
            error.message.starts_with("anonymous: is not supported"),
            "{error}"
        );
    }

    #[test]
    fn only_one_key_source() {
        let error = refused(&GOOD.replace("      jwks:", "      jwksFile: keys.json\n      jwks:"));
        assert!(
            error.message.starts_with("jwt[1].issuer: set at most one"),
            "{error}"
        );
    }
}
