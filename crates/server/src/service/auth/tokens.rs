//! Bearer tokens of the `--jwt-*` issuer: JWTs verified with `jsonwebtoken` against its one key
//! (the issuers of `--authentication-config` are in [`super::issuers`], which shares these checks):
//! issuer, audience, expiry and not-before checked with a small clock skew; only the key's algorithm
//! is accepted, so `alg: none` and HS/RS confusion fail. `--jwt-max-lifetime` bounds how long a token can still be used, measured from now (`exp -
//! now`), whatever its `iat` claims; an `iat` in the future (beyond the skew) or after `exp` is refused.
//! Signatures are checked with aws-lc (`jsonwebtoken`'s `aws_lc_rs` backend: 5–9× faster than
//! its pure-Rust one here), and a verified token is remembered by its bytes until it expires
//! ([`super::remembered`]): even so, checking a signature costs a call several times what the rest of a
//! cached download does.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::remembered::{Recalled, Remembered, Weighed};
use super::{Identity, Method, Proof, now_seconds};
use crate::config::{JwtConfig, JwtKey};

/// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds.
pub const CLOCK_SKEW_SECONDS: u64 = 30;

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// `false` (or `"false"`, as some providers send it) means the email is not an identity.
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    groups: Vec<String>,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    /// Read only to know until when a verified token may be reused (`jsonwebtoken` checks it).
    #[serde(default)]
    nbf: Option<serde_json::Value>,
}

/// Whether the token's JOSE header names critical extensions. We implement none, so RFC 7515
/// section 4.1.11 requires refusing any token that has them (even an empty list is malformed).
pub(super) fn has_crit_header(token: &str) -> bool {
    use base64::Engine as _;
    let Some(header) = token.split('.').next() else {
        return true;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return true;
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) {
        Ok(fields) => fields.contains_key("crit"),
        Err(_) => true,
    }
}

/// Verifies bearer tokens.
pub struct JwtVerifier {
    issuer: Arc<str>,
    key: DecodingKey,
    validation: Validation,
    max_lifetime_seconds: u64,
    /// Tokens that passed every check ([`Remembered`]). A hit is the same bytes as a token that was
    /// fully verified, so only time can change the answer: its `exp` and `nbf` are checked again on
    /// every use, and so is the lifetime left (`exp - now`, which only shrinks unless the clock steps
    /// back).
    verified: Remembered<VerifiedToken>,
}

/// How many bytes of verified tokens (their user and groups, plus a fixed overhead each) are remembered:
/// a bound in bytes, not entries, because one token may carry many groups.
const VERIFIED_TOKEN_BYTES: u64 = 16 * 1024 * 1024;

/// A token that passed every check, with the times that bound its reuse.
#[derive(Debug)]
struct VerifiedToken {
    user: Arc<str>,
    groups: Arc<[String]>,
    exp: u64,
    nbf: Option<u64>,
    iat: Option<u64>,
}

/// Whether a token expiring at `exp` (issued at `iat`, when it says) may be used at `now` under a
/// maximum lifetime of `max_lifetime` seconds: what is left of it (`exp - now`) must be within the
/// maximum, whatever `iat` claims (an issuer could otherwise mint a ten-year token dated half an hour
/// before it expires); an `iat` after `exp`, or in the future beyond the clock skew, is refused.
pub(super) fn lifetime_allowed(exp: u64, iat: Option<u64>, now: u64, max_lifetime: u64) -> bool {
    let iat_plausible =
        iat.is_none_or(|iat| iat <= exp && iat <= now.saturating_add(CLOCK_SKEW_SECONDS));
    iat_plausible && exp.saturating_sub(now) <= max_lifetime.saturating_add(CLOCK_SKEW_SECONDS)
}

impl Weighed for VerifiedToken {
    fn weight(&self) -> u64 {
        let text = self.user.len() + self.groups.iter().map(String::len).sum::<usize>();
        (text + 128 + 24 * self.groups.len()) as u64
    }
}

impl VerifiedToken {
    fn valid_at(&self, now: u64, max_lifetime: u64) -> bool {
        still_valid((self.exp, self.nbf, self.iat), now, max_lifetime)
    }
}

/// Whether a remembered token (its `exp`, `nbf` and `iat`) is still valid at `now`, with the same
/// skew as the first check, and may not be used for longer than `max_lifetime` seconds from now.
pub(super) fn still_valid(
    (exp, nbf, iat): (u64, Option<u64>, Option<u64>),
    now: u64,
    max_lifetime: u64,
) -> bool {
    now.saturating_sub(CLOCK_SKEW_SECONDS) <= exp
        && nbf.is_none_or(|nbf| nbf <= now.saturating_add(CLOCK_SKEW_SECONDS))
        && lifetime_allowed(exp, iat, now, max_lifetime)
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds a verifier; the error names what is wrong with the key.
    pub fn new(config: &JwtConfig) -> Result<Self, String> {
        let (key, algorithm) = match &config.key {
            JwtKey::Hs256Secret(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::PublicKeyPem(pem) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err("not a PEM RSA or EC (P-256) public key".to_owned());
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.leeway = CLOCK_SKEW_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims =
            HashSet::from(["exp".to_owned(), "iss".to_owned(), "aud".to_owned()]);
        Ok(JwtVerifier {
            issuer: Arc::from(config.issuer.as_str()),
            key,
            validation,
            max_lifetime_seconds: config.max_lifetime.as_secs(),
            verified: Remembered::new(VERIFIED_TOKEN_BYTES),
        })
    }

    /// The `iss` its tokens must have (`--jwt-issuer`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The (lowercased) user and the groups of a valid token, or `None`.
    pub fn verify(&self, token: &str) -> Option<Identity> {
        self.verify_at(token, now_seconds())
    }

    /// What is known of `token` at `now` without checking its signature: who it names, if it was
    /// verified and is still valid.
    pub fn recall(&self, token: &str, now: u64) -> Recalled {
        match self.verified.get(token) {
            Some(known) if known.valid_at(now, self.max_lifetime_seconds) => {
                Recalled::Known(self.identity(&known))
            }
            Some(_) => {
                self.verified.forget(token);
                Recalled::Refused
            }
            None => Recalled::Unknown,
        }
    }

    /// [`JwtVerifier::verify`] at `now` for a token verified before (a token seen for the first time
    /// is checked against the system clock).
    fn verify_at(&self, token: &str, now: u64) -> Option<Identity> {
        match self.recall(token, now) {
            Recalled::Known(identity) => Some(identity),
            Recalled::Refused => None,
            Recalled::Unknown => {
                let (verified, reusable) = self.verify_signed(token, now_seconds())?;
                let verified = Arc::new(verified);
                if reusable {
                    self.verified.insert(token, Arc::clone(&verified));
                }
                Some(self.identity(&verified))
            }
        }
    }

    fn identity(&self, verified: &VerifiedToken) -> Identity {
        Identity {
            user: Arc::clone(&verified.user),
            groups: Arc::clone(&verified.groups),
            proof: Proof {
                method: Method::Token {
                    issuer: Arc::clone(&self.issuer),
                },
                expires_at: Some(verified.exp),
            },
        }
    }

    /// Every check of a token, signature included; with whether it may be reused (not when its `nbf`
    /// is not a whole number, which `jsonwebtoken` judged: nothing here would know when it starts).
    fn verify_signed(&self, token: &str, now: u64) -> Option<(VerifiedToken, bool)> {
        if has_crit_header(token) {
            return None;
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .ok()?
            .claims;
        // A token usable for longer than allowed from now is refused, whatever its `iat` says.
        if !lifetime_allowed(claims.exp, claims.iat, now, self.max_lifetime_seconds) {
            return None;
        }
        let unverified = matches!(&claims.email_verified, Some(serde_json::Value::Bool(false)))
            || matches!(&claims.email_verified, Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false"));
        let email = claims.email.filter(|e| !e.is_empty() && !unverified);
        let user = email.or(claims.sub).filter(|s| !s.is_empty())?;
        // Identities are ASCII and folded as ASCII: Unicode case folding maps look-alikes such as the
        // Kelvin sign (U+212A) onto `k`, which would let `\u{212A}ate@…` sign in as `kate@…`.
        if !user.is_ascii() {
            return None;
        }
        let nbf = claims.nbf.as_ref().and_then(serde_json::Value::as_u64);
        let reusable = claims.nbf.is_none() || nbf.is_some();
        let verified = VerifiedToken {
            user: kubeconfig_policy::canonical_user(&user).into(),
            groups: claims.groups.into(),
            exp: claims.exp,
            nbf,
            iat: claims.iat,
        };
        Some((verified, reusable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JwtConfig, JwtKey};

    const SECRET: &[u8] = b"a test secret of thirty-two bytes!";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&JwtConfig {
            issuer: "https://issuer.test".to_owned(),
            audience: "kubeconfigd".to_owned(),
            key: JwtKey::Hs256Secret(SECRET.to_vec()),
            max_lifetime: std::time::Duration::from_secs(3600),
        })
        .expect("verifier")
    }

    fn token(now: u64, extra: serde_json::Value) -> String {
        let mut claims = serde_json::json!({
            "sub": "s",
            "email": "Kate@X.test",
            "groups": ["ops"],
            "iss": "https://issuer.test",
            "aud": "kubeconfigd",
            "iat": now - 10,
            "exp": now + 600,
        });
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    }

    fn remembered(verifier: &JwtVerifier, token: &str) -> bool {
        verifier.verified.contains(token)
    }

    #[test]
    fn a_verified_token_is_reused_until_it_expires() {
        let verifier = verifier();
        let now = now_seconds();
        let token = token(now, serde_json::json!({ "nbf": now - 10 }));
        let caller = Some(("kate@x.test".to_owned(), vec!["ops".to_owned()]));
        let who =
            |identity: Option<Identity>| identity.map(|i| (i.user.to_string(), i.groups.to_vec()));
        assert_eq!(who(verifier.verify_at(&token, now)), caller);
        assert!(remembered(&verifier, &token));
        // Reused (the clock passed here is not the one the signature check would read)...
        let last_second = now + 600 + CLOCK_SKEW_SECONDS;
        assert_eq!(who(verifier.verify_at(&token, last_second)), caller);
        // ...until it expires, with the same skew as the first check; then forgotten.
        assert_eq!(verifier.verify_at(&token, last_second + 1), None);
        assert!(!remembered(&verifier, &token));
    }

    #[test]
    fn a_remembered_token_is_not_valid_before_its_not_before() {
        let verifier = verifier();
        let now = now_seconds();
        let token = token(now, serde_json::json!({ "nbf": now }));
        assert!(verifier.verify_at(&token, now).is_some());
        assert!(
            verifier
                .verify_at(&token, now - CLOCK_SKEW_SECONDS)
                .is_some()
        );
        assert_eq!(
            verifier.verify_at(&token, now - CLOCK_SKEW_SECONDS - 1),
            None
        );
    }

    #[test]
    fn only_the_exact_bytes_of_a_verified_token_are_reused() {
        let verifier = verifier();
        let now = now_seconds();
        let good = token(now, serde_json::json!({}));
        assert!(verifier.verify_at(&good, now).is_some());
        // The same claims with another signature, and another user's claims with the first one's.
        let mut forged = good.clone();
        let last = if forged.ends_with('A') { 'B' } else { 'A' };
        forged.pop();
        forged.push(last);
        assert_eq!(verifier.verify_at(&forged, now), None);
        let (head, rest) = good.split_once('.').expect("a JWT");
        let signature = rest.rsplit_once('.').expect("a JWT").1;
        let other = token(now, serde_json::json!({ "email": "admin@x.test" }));
        let payload = other.split('.').nth(1).expect("a JWT");
        assert_eq!(
            verifier.verify_at(&format!("{head}.{payload}.{signature}"), now),
            None
        );
        assert!(!remembered(&verifier, &forged));
    }

    #[test]
    fn refused_tokens_are_not_remembered() {
        let verifier = verifier();
        let now = now_seconds();
        for refused in [
            token(now, serde_json::json!({ "exp": now - 3600 })),
            token(now, serde_json::json!({ "nbf": now + 3600 })),
            token(now, serde_json::json!({ "aud": "someone-else" })),
            // Valid for two hours against a one-hour limit.
            token(now, serde_json::json!({ "iat": now, "exp": now + 7200 })),
            // Ten years, dated half an hour before they end.
            token(
                now,
                serde_json::json!({ "iat": now + 315_360_000 - 1800, "exp": now + 315_360_000 }),
            ),
            // Issued after it expires, and issued in the future.
            token(
                now,
                serde_json::json!({ "iat": now + 900, "exp": now + 600 }),
            ),
            token(
                now,
                serde_json::json!({ "iat": now + 300, "exp": now + 1200 }),
            ),
        ] {
            assert_eq!(verifier.verify_at(&refused, now), None);
            assert!(!remembered(&verifier, &refused));
        }
    }

    #[test]
    fn a_remembered_token_is_held_to_the_lifetime_limit_from_now() {
        let verifier = verifier();
        let now = now_seconds();
        let token = token(now, serde_json::json!({ "exp": now + 3000 }));
        assert!(verifier.verify_at(&token, now).is_some());
        assert!(remembered(&verifier, &token));
        // Seen again from a clock an hour behind (stepped back): more than the limit left, refused.
        assert_eq!(verifier.verify_at(&token, now - 3600), None);
        assert!(!remembered(&verifier, &token));
    }

    #[test]
    fn the_lifetime_is_measured_from_now() {
        let max = 3600;
        let now = 1_800_000_000;
        assert!(lifetime_allowed(now + 3600, Some(now - 10), now, max));
        assert!(lifetime_allowed(now + 3600, None, now, max));
        assert!(!lifetime_allowed(now + 7200, Some(now + 7000), now, max));
        assert!(
            !lifetime_allowed(now + 600, Some(now + 700), now, max),
            "iat after exp"
        );
        assert!(lifetime_allowed(
            now + 600,
            Some(now + CLOCK_SKEW_SECONDS),
            now,
            max
        ));
        assert!(!lifetime_allowed(
            now + 600,
            Some(now + CLOCK_SKEW_SECONDS + 1),
            now,
            max
        ));
        assert!(lifetime_allowed(u64::MAX, None, u64::MAX, max));
    }
}
