//! Issuing against real CAs generated with OpenSSL (`tests/data/generate.sh`), checked with an
//! independent parser and OpenSSL's own verifier where it is installed.

use std::time::{Duration, SystemTime};

use kubeconfig_mint::{
    Authority, ClientPublicKey, KeySource, MintError, Subject, Validity, inspect,
};
use x509_parser::prelude::{FromDer, X509Certificate};

const CA_P256: (&str, &str) = (
    include_str!("data/ca-p256.crt"),
    include_str!("data/ca-p256.key"),
);
const CA_RSA: (&str, &str) = (
    include_str!("data/ca-rsa.crt"),
    include_str!("data/ca-rsa.key"),
);

fn hour() -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now - Duration::from_secs(60),
        not_after: now + Duration::from_secs(3600),
    }
}

fn subject() -> Subject<'static> {
    Subject {
        common_name: "kubeconfigd:admin:ada@example.com",
        organization: Some("system:masters"),
    }
}

#[test]
fn a_generated_key_is_certified_for_the_caller_by_each_kind_of_ca() {
    for (certificate, key) in [CA_P256, CA_RSA] {
        let authority = Authority::from_pem(certificate, key).unwrap();
        let issued = authority
            .issue(subject(), hour(), KeySource::Generate)
            .unwrap();
        let (_, parsed) = X509Certificate::from_der(&issued.certificate_der).unwrap();
        let ca_der = pem::parse(certificate).unwrap().into_contents();
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        parsed.verify_signature(Some(ca.public_key())).unwrap();
        assert_eq!(parsed.issuer().as_raw(), ca.subject().as_raw());
        let cn: Vec<_> = parsed
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["kubeconfigd:admin:ada@example.com"]);
        let o: Vec<_> = parsed
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(o, ["system:masters"]);
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!parsed.is_ca());
        assert_eq!(hex::encode(parsed.raw_serial()), issued.serial);
        assert_eq!(issued.serial.len(), 32);
        let facts = inspect(&issued.certificate_der).unwrap();
        assert_eq!(facts.serial, issued.serial);
        assert_eq!(facts.fingerprint, issued.fingerprint);
        assert_eq!(facts.not_after, issued.not_after);
        assert!(issued.private_key.is_some());
        assert_eq!(
            format!("{:?}", issued.private_key.unwrap()),
            "<generated private key>"
        );
    }
}

#[test]
fn serials_are_unique() {
    let authority = Authority::from_pem(CA_P256.0, CA_P256.1).unwrap();
    let serials: std::collections::HashSet<String> = (0..50)
        .map(|_| {
            authority
                .issue(subject(), hour(), KeySource::Generate)
                .unwrap()
                .serial
        })
        .collect();
    assert_eq!(serials.len(), 50);
}

#[test]
fn a_callers_key_or_request_is_certified_as_sent() {
    let authority = Authority::from_pem(CA_RSA.0, CA_RSA.1).unwrap();
    for file in [
        include_str!("data/byo-p256.pub"),
        include_str!("data/byo-p256.csr"),
        include_str!("data/byo-rsa.pub"),
        include_str!("data/byo-rsa.csr"),
        // The largest size accepted, by key and by request.
        include_str!("data/byo-rsa8192.pub"),
        include_str!("data/byo-rsa8192.csr"),
    ] {
        let key = ClientPublicKey::from_pem(file).unwrap();
        let issued = authority
            .issue(subject(), hour(), KeySource::Client(&key))
            .unwrap();
        assert!(issued.private_key.is_none());
        let (_, parsed) = X509Certificate::from_der(&issued.certificate_der).unwrap();
        assert_eq!(parsed.public_key().raw, key.spki_der(), "{}", key.kind());
    }
}

#[test]
fn weak_malformed_or_private_keys_are_refused_with_the_reason() {
    let cases = [
        (
            include_str!("data/weak-rsa1024.pub").to_owned(),
            "2048-8192 bits, this one has 1024",
        ),
        (
            include_str!("data/byo-p256.key").to_owned(),
            "this is a private key",
        ),
        ("hello".to_owned(), "not PEM"),
        (
            include_str!("data/ca-p256.crt").to_owned(),
            "expected a `PUBLIC KEY` or `CERTIFICATE REQUEST` block, found `CERTIFICATE`",
        ),
        ("x".repeat(20_000), "longer than"),
    ];
    for (text, expected) in cases {
        let error = ClientPublicKey::from_pem(&text).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
    // A request whose signature does not verify (one byte of the signature flipped).
    let mut der = pem::parse(include_str!("data/byo-p256.csr"))
        .unwrap()
        .into_contents();
    let last = der.len() - 3;
    der[last] ^= 0x55;
    let error = ClientPublicKey::from_csr_der(&der).unwrap_err().to_string();
    assert!(
        error.contains("signature does not verify") || error.contains("not a certificate request"),
        "{error}"
    );
}

#[test]
fn a_ca_that_cannot_sign_is_refused_naming_the_field() {
    // A leaf certificate, not a CA.
    let authority = Authority::from_pem(CA_RSA.0, CA_RSA.1).unwrap();
    let leaf = authority
        .issue(subject(), hour(), KeySource::Generate)
        .unwrap();
    let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.certificate_der.clone()));
    let leaf_key = pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        leaf.private_key.unwrap().pkcs8_der().to_vec(),
    ));
    let error = Authority::from_pem(&leaf_pem, &leaf_key).unwrap_err();
    assert!(matches!(error, MintError::Certificate(_)), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("clientCa.certificate: not a CA"),
        "{error}"
    );
    // The key of another CA.
    let error = Authority::from_pem(CA_P256.0, CA_RSA.1).unwrap_err();
    assert!(matches!(error, MintError::Pair(_)), "{error}");
    // Not a key at all.
    let error = Authority::from_pem(CA_P256.0, CA_P256.0).unwrap_err();
    assert!(
        error.to_string().starts_with("clientCa.key: expected"),
        "{error}"
    );
    // The debug form names the key kind only.
    let authority = Authority::from_pem(CA_P256.0, CA_P256.1).unwrap();
    assert_eq!(
        format!("{authority:?}"),
        "Authority { key: \"ECDSA P-256\", .. }"
    );
}

#[test]
fn openssl_verifies_an_issued_certificate_against_the_ca_when_installed() {
    let Ok(version) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        eprintln!("openssl not installed; skipped");
        return;
    };
    assert!(version.status.success());
    let dir = std::env::temp_dir().join(format!("mint-openssl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, (certificate, key)) in [("p256", CA_P256), ("rsa", CA_RSA)] {
        let authority = Authority::from_pem(certificate, key).unwrap();
        let issued = authority
            .issue(subject(), hour(), KeySource::Generate)
            .unwrap();
        let leaf = dir.join(format!("{name}.crt"));
        let ca = dir.join(format!("{name}-ca.crt"));
        std::fs::write(
            &leaf,
            pem::encode(&pem::Pem::new("CERTIFICATE", issued.certificate_der)),
        )
        .unwrap();
        std::fs::write(&ca, certificate).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(&ca)
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A user name is one attribute of the subject whatever it contains: `,`, `=`, `+` and quotes are
/// characters of the CN, not separators that could add an `O=system:masters` of the caller's choosing.
#[test]
fn a_user_name_with_dn_syntax_stays_one_common_name() {
    let authority = Authority::from_pem(CA_P256.0, CA_P256.1).unwrap();
    let hostile = "kubeconfigd:admin:spiffe://acme.test/a,O=system:masters+CN=x\"=y";
    let issued = authority
        .issue(
            Subject {
                common_name: hostile,
                organization: None,
            },
            hour(),
            KeySource::Generate,
        )
        .unwrap();
    let (_, parsed) = X509Certificate::from_der(&issued.certificate_der).unwrap();
    let cn: Vec<_> = parsed
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, [hostile]);
    assert_eq!(parsed.subject().iter_organization().count(), 0);
    assert_eq!(parsed.subject().iter_attributes().count(), 1);
}
