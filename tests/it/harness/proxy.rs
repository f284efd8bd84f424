//! A TCP proxy between the relay and Redis, for network faults a process signal cannot make:
//! links that stay open and carry nothing.

use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

/// A TCP proxy in front of Redis that can turn its open connections into black holes: they
/// stay open and carry nothing (a half-open link after a network fault), while connections
/// made afterwards work normally.
pub struct Blackhole {
    pub port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// While set, connections made are black holes from the start (the link stays down).
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    pub async fn start(upstream: u16) -> Blackhole {
        use std::sync::atomic::AtomicU64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = std::sync::Arc::new(AtomicU64::new(0));
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let current = generation.clone();
        let is_down = down.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // Born down: a generation that never comes.
                let born = current.load(Ordering::Acquire) + u64::from(is_down.load(Ordering::Acquire)) * u64::MAX / 2;
                let current = current.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let alive = move || current.load(Ordering::Acquire) == born;
                    tokio::join!(pipe(cr, sw, alive.clone()), pipe(sr, cw, alive));
                });
            }
        });
        Blackhole { port, generation, down, task }
    }

    /// Every connection open now stops carrying bytes (without closing).
    pub fn swallow_open_connections(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Every connection open now, and every one made until `heal`, carries nothing.
    pub fn go_down(&self) {
        self.down.store(true, Ordering::Release);
        self.swallow_open_connections();
    }

    /// Connections made from now on work again (those swallowed stay swallowed).
    pub fn heal(&self) {
        self.down.store(false, Ordering::Release);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    alive: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !alive() {
            // Swallow everything from now on, and keep both ends open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
