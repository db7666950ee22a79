//! What minting one admin credential costs, by CA key kind, against copying and hashing a rendered
//! kubeconfig's worth of bytes (the bare baseline: the least any served file costs).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use kubeconfig_mint::{Authority, ClientPublicKey, KeySource, Subject, Validity};
use sha2::{Digest, Sha256};

fn validity() -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now - Duration::from_secs(60),
        not_after: now + Duration::from_secs(3600),
    }
}

const SUBJECT: Subject<'static> = Subject {
    common_name: "kubeconfigd:admin:ada@example.com",
    organization: Some("system:masters"),
};

fn mint(c: &mut Criterion) {
    let mut group = c.benchmark_group("mint");
    let payload = vec![b'x'; 4096];
    group.bench_function("baseline: copy and digest 4 KiB", |b| {
        b.iter(|| hex::encode(Sha256::digest(black_box(&payload).clone())))
    });
    let p256 = Authority::from_pem(
        include_str!("../tests/data/ca-p256.crt"),
        include_str!("../tests/data/ca-p256.key"),
    )
    .expect("test CA");
    let rsa = Authority::from_pem(
        include_str!("../tests/data/ca-rsa.crt"),
        include_str!("../tests/data/ca-rsa.key"),
    )
    .expect("test CA");
    group.bench_function("P-256 CA, fresh P-256 key", |b| {
        b.iter(|| {
            p256.issue(SUBJECT, validity(), KeySource::Generate)
                .expect("issues")
        })
    });
    group.bench_function("RSA-2048 CA, fresh P-256 key", |b| {
        b.iter(|| {
            rsa.issue(SUBJECT, validity(), KeySource::Generate)
                .expect("issues")
        })
    });
    let client = ClientPublicKey::from_pem(include_str!("../tests/data/byo-rsa.pub")).expect("key");
    group.bench_function("P-256 CA, caller's RSA-2048 key", |b| {
        b.iter(|| {
            p256.issue(SUBJECT, validity(), KeySource::Client(&client))
                .expect("issues")
        })
    });
    group.bench_function("RSA-2048 CA, caller's RSA-2048 key", |b| {
        b.iter(|| {
            rsa.issue(SUBJECT, validity(), KeySource::Client(&client))
                .expect("issues")
        })
    });
    group.bench_function("load an RSA-2048 CA (once per cluster revision)", |b| {
        b.iter(|| {
            Authority::from_pem(
                include_str!("../tests/data/ca-rsa.crt"),
                include_str!("../tests/data/ca-rsa.key"),
            )
            .expect("test CA")
        })
    });
    group.finish();
}

criterion_group!(benches, mint);
criterion_main!(benches);
