//! The pool: single-flight dials, per-key connections, stream caps, idle and dead eviction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_hbone::client::ClientSettings;
use ambit_hbone::pool::{Pool, PoolSettings};
use ambit_hbone::server::{ServerSettings, serve_connection};
use ambit_hbone::{ConnectRequest, Error, H2Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::support::{self, Seen, target};

/// Dials in-memory HBONE servers and counts the dials.
#[derive(Default)]
struct Fabric {
    dials: AtomicUsize,
    servers: Mutex<Vec<JoinHandle<Result<(), Error>>>>,
    /// Dial latency, so concurrent callers overlap with a dial in flight.
    delay: Duration,
    fail: bool,
}

impl Fabric {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            delay,
            ..Self::default()
        })
    }

    async fn dial(self: Arc<Self>) -> Result<DuplexStream, Error> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(Error::dial(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "10.0.0.7:15008 refused",
            )));
        }
        let (client_io, server_io) = tokio::io::duplex(support::PIPE);
        let server = tokio::spawn(async move {
            let settings = ServerSettings::default();
            let observer = Seen::default().observer();
            serve_connection(server_io, &settings, support::echo, observer, std::future::pending()).await
        });
        self.servers.lock().expect("servers lock").push(server);
        Ok(client_io)
    }

    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }

    fn kill_servers(&self) {
        for server in self.servers.lock().expect("servers lock").drain(..) {
            server.abort();
        }
    }
}

fn pool(max_streams_per_connection: usize) -> Pool<&'static str> {
    Pool::new(
        PoolSettings {
            idle_timeout: Duration::from_secs(10),
            max_streams_per_connection,
        },
        ClientSettings::default(),
    )
}

async fn open(pool: &Pool<&'static str>, key: &'static str, fabric: &Arc<Fabric>) -> Result<H2Stream, Error> {
    let fabric = fabric.clone();
    pool.connect(key, &ConnectRequest::new(target()), move || fabric.dial())
        .await
}

async fn echo_check(stream: &mut H2Stream, seed: u8) -> anyhow::Result<()> {
    let data = support::payload(4096, seed);
    stream.write_all(&data).await?;
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).await?;
    anyhow::ensure!(back == data, "echo mismatch");
    Ok(())
}

/// Opens `n` streams concurrently and holds them all open until every one is up, returning them.
async fn open_concurrently(
    pool: &Pool<&'static str>,
    key: &'static str,
    fabric: &Arc<Fabric>,
    n: usize,
) -> anyhow::Result<Vec<H2Stream>> {
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (pool, fabric, barrier) = (pool.clone(), fabric.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = open(&pool, key, &fabric).await?;
            echo_check(&mut stream, i as u8).await?;
            barrier.wait().await;
            anyhow::Ok(stream)
        }));
    }
    let mut streams = Vec::new();
    for task in tasks {
        streams.push(task.await??);
    }
    Ok(streams)
}

#[tokio::test]
async fn concurrent_callers_share_one_dial() -> anyhow::Result<()> {
    let fabric = Fabric::new(Duration::from_millis(50));
    let pool = pool(100);
    let streams = open_concurrently(&pool, "a", &fabric, 100).await?;
    assert_eq!(fabric.dials(), 1);
    assert_eq!(pool.connection_count(), 1);
    drop(streams);
    Ok(())
}

#[tokio::test]
async fn keys_get_their_own_connections() -> anyhow::Result<()> {
    let fabric = Fabric::new(Duration::ZERO);
    let pool = pool(100);
    let mut a = open(&pool, "a", &fabric).await?;
    let mut b = open(&pool, "b", &fabric).await?;
    let mut a2 = open(&pool, "a", &fabric).await?;
    for stream in [&mut a, &mut b, &mut a2] {
        echo_check(stream, 1).await?;
    }
    assert_eq!(fabric.dials(), 2);
    assert_eq!(pool.connection_count(), 2);
    Ok(())
}

#[tokio::test]
async fn full_connections_overflow_to_new_ones() -> anyhow::Result<()> {
    let fabric = Fabric::new(Duration::from_millis(20));
    let pool = pool(10);
    let streams = open_concurrently(&pool, "a", &fabric, 25).await?;
    assert_eq!(pool.connection_count(), 3);
    assert_eq!(fabric.dials(), 3);
    drop(streams);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_evicted() -> anyhow::Result<()> {
    let fabric = Fabric::new(Duration::ZERO);
    let pool = pool(100);
    let mut stream = open(&pool, "a", &fabric).await?;
    echo_check(&mut stream, 1).await?;

    // Busy connections stay, however long.
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(pool.connection_count(), 1);

    drop(stream);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pool.connection_count(), 1, "not before idle_timeout");
    // Reuse within the idle window restarts it.
    let reused = open(&pool, "a", &fabric).await?;
    assert_eq!(fabric.dials(), 1);
    drop(reused);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(pool.connection_count(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pool.connection_count(), 0);

    let _fresh = open(&pool, "a", &fabric).await?;
    assert_eq!(fabric.dials(), 2);
    Ok(())
}

#[tokio::test]
async fn dead_connections_are_replaced() -> anyhow::Result<()> {
    let fabric = Fabric::new(Duration::ZERO);
    let pool = pool(100);
    let mut stream = open(&pool, "a", &fabric).await?;
    echo_check(&mut stream, 1).await?;
    drop(stream);

    fabric.kill_servers();
    tokio::time::timeout(Duration::from_secs(5), async {
        while pool.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;

    let mut stream = open(&pool, "a", &fabric).await?;
    echo_check(&mut stream, 2).await?;
    assert_eq!(fabric.dials(), 2);
    assert_eq!(pool.connection_count(), 1);
    Ok(())
}

#[tokio::test]
async fn a_failed_dial_fails_every_waiter_once() -> anyhow::Result<()> {
    let fabric = Arc::new(Fabric {
        delay: Duration::from_millis(50),
        fail: true,
        ..Fabric::default()
    });
    let pool = pool(100);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (pool, fabric) = (pool.clone(), fabric.clone());
        tasks.push(tokio::spawn(async move { open(&pool, "a", &fabric).await }));
    }
    for task in tasks {
        let err = task.await?.expect_err("dial failed");
        assert!(matches!(err, Error::Dial(_)), "{err}");
    }
    assert_eq!(fabric.dials(), 1);
    assert_eq!(pool.connection_count(), 0);

    // Failures are not cached: the next caller dials again.
    let _ = open(&pool, "a", &fabric).await;
    assert_eq!(fabric.dials(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_dial_hands_over_to_a_waiter() -> anyhow::Result<()> {
    let fabric = Fabric::new(Duration::from_secs(1));
    let pool = pool(100);
    let first = {
        let (pool, fabric) = (pool.clone(), fabric.clone());
        tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(100), open(&pool, "a", &fabric)).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut second = open(&pool, "a", &fabric).await?;
    assert!(first.await?.is_err(), "first caller timed out mid-dial");
    echo_check(&mut second, 3).await?;
    assert_eq!(fabric.dials(), 2);
    assert_eq!(pool.connection_count(), 1);
    Ok(())
}

#[tokio::test]
async fn close_all_forgets_every_connection() -> anyhow::Result<()> {
    let fabric = Fabric::new(Duration::ZERO);
    let pool = pool(100);
    let mut stream = open(&pool, "a", &fabric).await?;
    let _other = open(&pool, "b", &fabric).await?;
    pool.close_all();
    assert_eq!(pool.connection_count(), 0);
    // Open streams finish normally.
    echo_check(&mut stream, 4).await?;
    let _fresh = open(&pool, "a", &fabric).await?;
    assert_eq!(fabric.dials(), 3);
    Ok(())
}
