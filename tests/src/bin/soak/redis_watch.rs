//! Redis as an independent client sees it: every node is sent a `PING` every 100 ms on a connection
//! of its own, and every answer later than [`LATE`] (or none) is recorded as a stall. A ledger refusal
//! outside the injected Redis faults is then told apart: during a stall this client saw too, Redis
//! really could not answer (a slow disk under `appendfsync everysec` holds Redis's writes for up to
//! 2 s); otherwise the refusal is the service's own fault and fails the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::clock::Clock;

/// An answer later than this is a stall (the service's cache lookups give up far earlier; its ledger
/// calls at 1 s).
pub const LATE: Duration = Duration::from_millis(250);
const EVERY: Duration = Duration::from_millis(100);
/// The watch's client name on every node.
pub const NAME: &str = "soak-redis-watch";

/// One stall of one node: from the PING that went unanswered in time to its answer (or to the first
/// answer after it, over a new connection).
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub port: u16,
    pub from: f64,
    pub to: f64,
}

#[derive(Debug, Default)]
pub struct Stalls(Mutex<Vec<Stall>>);

impl Stalls {
    pub fn snapshot(&self) -> Vec<Stall> {
        self.0.lock().expect("stalls").clone()
    }
}

/// Starts watching the nodes on these ports until `stop`.
pub fn watch(ports: Vec<u16>, clock: Clock, stop: Arc<AtomicBool>) -> Arc<Stalls> {
    let stalls = Arc::new(Stalls::default());
    for port in ports {
        tokio::spawn(node(port, clock, Arc::clone(&stop), Arc::clone(&stalls)));
    }
    stalls
}

async fn ping(connection: &mut Option<TcpStream>, port: u16) -> std::io::Result<()> {
    if connection.is_none() {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        // Named, so that the count of the service's connections leaves it out.
        stream
            .write_all(format!("CLIENT SETNAME {NAME}\r\n").as_bytes())
            .await?;
        let mut ok = [0u8; 5];
        stream.read_exact(&mut ok).await?;
        if &ok != b"+OK\r\n" {
            return Err(std::io::Error::other("CLIENT SETNAME refused"));
        }
        *connection = Some(stream);
    }
    let stream = connection.as_mut().expect("connected");
    stream.write_all(b"PING\r\n").await?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).await?;
    if &answer != b"+PONG\r\n" {
        return Err(std::io::Error::other("not PONG"));
    }
    Ok(())
}

async fn node(port: u16, clock: Clock, stop: Arc<AtomicBool>, stalls: Arc<Stalls>) {
    let mut connection = None;
    // The start of a stall still going on.
    let mut stalled_since: Option<f64> = None;
    while !stop.load(Ordering::Relaxed) {
        let sent = clock.seconds();
        let answered = tokio::time::timeout(Duration::from_secs(10), ping(&mut connection, port))
            .await
            .is_ok_and(|r| r.is_ok());
        let now = clock.seconds();
        if !answered {
            connection = None;
            stalled_since.get_or_insert(sent);
        } else if now - sent > LATE.as_secs_f64() {
            let from = stalled_since.take().unwrap_or(sent);
            stalls.0.lock().expect("stalls").push(Stall {
                port,
                from,
                to: now,
            });
        } else if let Some(from) = stalled_since.take() {
            stalls.0.lock().expect("stalls").push(Stall {
                port,
                from,
                to: now,
            });
        }
        tokio::time::sleep(EVERY).await;
    }
    if let Some(from) = stalled_since {
        stalls.0.lock().expect("stalls").push(Stall {
            port,
            from,
            to: clock.seconds(),
        });
    }
}
