//! The load generators and the server they talk to: a pinned echo server, a 1 KiB ping-pong
//! latency client, a connection-rate client, a connection holder for memory figures, and an
//! iperf3 wrapper. Each client runs on threads inside the client pod's namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use ambit_testkit::Pod;
use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Request and response size of the latency test.
const MESSAGE: usize = 1024;
/// Round trips before measuring starts.
const WARMUP: usize = 500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// CPU placement: the load generator on one CPU, the servers on another (when there are two).
#[derive(Clone, Copy, Debug)]
pub struct Cpus {
    pub client: Option<usize>,
    pub server: Option<usize>,
}

impl Cpus {
    pub fn detect() -> Cpus {
        match std::thread::available_parallelism().map(usize::from).unwrap_or(1) {
            0 | 1 => Cpus {
                client: None,
                server: None,
            },
            _ => Cpus {
                client: Some(0),
                server: Some(1),
            },
        }
    }

    /// `taskset -c CPU program` or just `program`.
    pub fn pinned(&self, cpu: Option<usize>, program: &str) -> Command {
        match cpu {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", &cpu.to_string(), program]);
                cmd
            }
            None => Command::new(program),
        }
    }
}

/// Pins the calling thread to `cpu` (no-op for `None`).
pub fn pin_thread(cpu: Option<usize>) -> anyhow::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU index out of range")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot pin to CPU {cpu}"))
}

/// Starts an echo server on `port` in `pod`: a single-threaded tokio runtime pinned to `cpu`,
/// one task per connection, echoing whatever it reads.
pub fn spawn_echo_server(pod: &Pod, port: u16, cpu: Option<usize>) -> anyhow::Result<()> {
    let listener = pod.tcp_listener(port)?;
    std::thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || {
            if let Err(e) = pin_thread(cpu) {
                eprintln!("echo server: {e:#}");
            }
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("echo server: cannot build runtime: {e}"),
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return eprintln!("echo server: {e}"),
                };
                loop {
                    let Ok((mut conn, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let _ = conn.set_nodelay(true);
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = conn.read(&mut buf).await {
                            if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        })
        .context("cannot start the echo server thread")?;
    Ok(())
}

/// Round-trip times of 1 KiB ping-pong on one connection for `duration`.
#[derive(Clone, Debug)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub requests: usize,
}

pub fn ping_pong(client: &Pod, target: SocketAddr, duration: Duration, cpu: Option<usize>) -> anyhow::Result<Latency> {
    let mut samples = client.netns.try_run(|| -> anyhow::Result<Vec<Duration>> {
        pin_thread(cpu)?;
        let mut conn = connect(target)?;
        let request = [0x5a_u8; MESSAGE];
        let mut response = [0_u8; MESSAGE];
        let mut samples = Vec::with_capacity(200_000);
        let mut exchange = |conn: &mut TcpStream| -> anyhow::Result<Duration> {
            let start = Instant::now();
            conn.write_all(&request)?;
            conn.read_exact(&mut response)?;
            Ok(start.elapsed())
        };
        for _ in 0..WARMUP {
            exchange(&mut conn).with_context(|| format!("warm-up round trip to {target}"))?;
        }
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            samples.push(exchange(&mut conn).with_context(|| format!("round trip to {target}"))?);
        }
        Ok(samples)
    })??;
    if samples.is_empty() {
        bail!("no round trips to {target} completed");
    }
    samples.sort_unstable();
    let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
    Ok(Latency {
        p50: at(50),
        p99: at(99),
        requests: samples.len(),
    })
}

/// New connections per second: connect, 1 byte each way, close; `parallel` clients for `duration`.
pub fn connection_rate(
    client: &Pod,
    target: SocketAddr,
    duration: Duration,
    parallel: usize,
    cpu: Option<usize>,
) -> anyhow::Result<(f64, usize)> {
    client.netns.try_run(|| -> anyhow::Result<(f64, usize)> {
        let start = Instant::now();
        let deadline = start + duration;
        let counts = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..parallel)
                .map(|_| {
                    // Threads spawned here inherit the client namespace.
                    scope.spawn(move || -> anyhow::Result<usize> {
                        pin_thread(cpu)?;
                        let mut done = 0;
                        while Instant::now() < deadline {
                            let mut conn = connect(target)?;
                            conn.write_all(&[1]).context("write")?;
                            conn.read_exact(&mut [0])
                                .with_context(|| format!("echo from {target}"))?;
                            done += 1;
                        }
                        Ok(done)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .map_err(|_| anyhow::anyhow!("connection-rate worker panicked"))?
                })
                .collect::<anyhow::Result<Vec<usize>>>()
        })?;
        let total: usize = counts.iter().sum();
        Ok((total as f64 / start.elapsed().as_secs_f64(), total))
    })?
}

/// Opens `n` connections to `target` from `client` (one echoed byte each, so each is open end
/// to end), calls `measure` while they are all open, then closes them.
pub fn with_open_connections<R>(
    client: &Pod,
    target: SocketAddr,
    n: usize,
    measure: impl FnOnce() -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let conns = client.netns.try_run(|| -> anyhow::Result<Vec<TcpStream>> {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let mut conn = connect(target).with_context(|| format!("connection {i} of {n}"))?;
            conn.write_all(&[7])?;
            conn.read_exact(&mut [0])
                .with_context(|| format!("echo on connection {i} of {n}"))?;
            conns.push(conn);
        }
        Ok(conns)
    })??;
    // Let the proxies settle (buffers, pool bookkeeping) before reading their memory.
    std::thread::sleep(Duration::from_millis(500));
    let result = measure();
    drop(conns);
    result
}

/// `iperf3 -c`, one stream for `seconds`, from the client pod; returns received bits/s.
pub fn iperf3(client: &Pod, target: SocketAddr, seconds: u64, cpus: Cpus) -> anyhow::Result<f64> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", client.netns.name()]);
    if let Some(cpu) = cpus.client {
        cmd.args(["taskset", "-c", &cpu.to_string()]);
    }
    cmd.args([
        "iperf3",
        "-J",
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
    ])
    .args(["-t", &seconds.to_string(), "-P", "1", "--connect-timeout", "5000"]);
    let out = cmd.output().context("cannot run iperf3 (apt-get install iperf3)")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 to {target} printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3 to {target} failed: {error}");
    }
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("iperf3 to {target}: no end.sum_received.bits_per_second in its JSON"))
}

fn connect(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).with_context(|| format!("connect to {target}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}
