//! Packet captures with `tcpdump` inside a node's namespace, to prove what is (and is not) on
//! the wire. Parsing pcap is out of scope: [`pcap_contains`] is a plain byte search.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{Node, process::spawn_in_netns};

/// How long tcpdump may take to attach to the interface.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Lets the last packets of the traffic under test reach tcpdump before it is stopped.
const SETTLE: Duration = Duration::from_millis(200);

static CAPTURE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running `tcpdump -w`. Stop it with [`Capture::stop`]; dropping it kills tcpdump and
/// deletes the file.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    file: PathBuf,
    stderr: mpsc::Receiver<String>,
    description: String,
}

impl Node {
    /// Starts `tcpdump -i IFACE -w FILE -U --immediate-mode` in this node and returns once it
    /// is listening.
    pub fn capture(&self, iface: &str) -> anyhow::Result<Capture> {
        let n = CAPTURE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!("ambit-capture-{}-{n}.pcap", std::process::id()));
        let description = format!("tcpdump on {iface} in node {} ({})", self.name, self.netns);
        let mut cmd = Command::new("tcpdump");
        // -Z root: stay root so the file can be written wherever the temp dir is.
        cmd.args(["-i", iface, "-n", "-U", "--immediate-mode", "-Z", "root", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_in_netns(&self.netns, &mut cmd)
            .with_context(|| format!("cannot start {description}; is tcpdump installed?"))?;
        let stderr = child.stderr.take().context("tcpdump stderr was not piped")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut capture = Capture {
            child,
            file,
            stderr: rx,
            description,
        };
        capture.wait_listening()?;
        Ok(capture)
    }
}

impl Capture {
    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let mut seen = Vec::new();
        loop {
            match self.stderr.recv_timeout(START_TIMEOUT) {
                Ok(line) if line.contains("listening on") => return Ok(()),
                Ok(line) => seen.push(line),
                Err(_) => bail!(
                    "{} did not start listening within {START_TIMEOUT:?}: {}",
                    self.description,
                    seen.join(" | ")
                ),
            }
        }
    }

    /// Stops tcpdump (after a short settle delay) and returns the raw pcap file.
    pub fn stop(mut self) -> anyhow::Result<Vec<u8>> {
        std::thread::sleep(SETTLE);
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGINT).with_context(|| format!("cannot stop {}", self.description))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("cannot wait for {}", self.description))?;
        let bytes = std::fs::read(&self.file).with_context(|| {
            format!(
                "{} exited ({status}) without a readable {}",
                self.description,
                self.file.display()
            )
        })?;
        Ok(bytes)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Whether `needle` occurs anywhere in the capture's bytes. Good enough for a marker string
/// that fits in one segment; it does not reassemble TCP streams.
pub fn pcap_contains(pcap: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && pcap.windows(needle.len()).any(|w| w == needle)
}

/// Counts TLS application-data records (content type 23, version 3.3) in the capture: a crude
/// but useful sign that encrypted traffic was on the wire.
pub fn pcap_tls_records(pcap: &[u8]) -> usize {
    pcap.windows(3).filter(|w| *w == [0x17, 0x03, 0x03]).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_needles() {
        assert!(pcap_contains(b"xxhelloxx", b"hello"));
        assert!(!pcap_contains(b"xxhellxx", b"hello"));
        assert!(!pcap_contains(b"abc", b""));
        assert_eq!(pcap_tls_records(&[0, 0x17, 0x03, 0x03, 1, 0x17, 0x03, 0x03]), 2);
    }
}
