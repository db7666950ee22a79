//! A stand-in for a Kubernetes Service address in front of the replicas: each new TCP connection goes
//! to the next replica whose `/readyz` answered 200 at the last poll, as kube-proxy sends it to the
//! next ready endpoint. The agents connect through it, as they would through the Service's name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// One backend: where it serves and whether it was ready at the last poll.
struct Backend {
    serve: SocketAddr,
    admin: SocketAddr,
    ready: AtomicBool,
}

/// Starts the balancer on a free loopback port; returns its address. It runs until the process
/// ends (the soak is one process per run).
pub async fn start(backends: &[(SocketAddr, SocketAddr)]) -> anyhow::Result<SocketAddr> {
    let backends: Arc<Vec<Backend>> = Arc::new(
        backends
            .iter()
            .map(|&(serve, admin)| Backend {
                serve,
                admin,
                ready: AtomicBool::new(true),
            })
            .collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let polled = Arc::clone(&backends);
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("http client");
        loop {
            for backend in polled.iter() {
                let ready = client
                    .get(format!("http://{}/readyz", backend.admin))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                backend.ready.store(ready, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let backends = Arc::clone(&backends);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let count = backends.len();
                let first = next.fetch_add(1, Ordering::Relaxed);
                for offset in 0..count {
                    let backend = &backends[(first + offset) % count];
                    if !backend.ready.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend.serve).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
                // No ready backend: the connection is closed, as a Service without endpoints
                // refuses it.
            });
        }
    });
    Ok(address)
}
