//! The real `consentd` binary as a child process, for tests that drive it
//! with outside tools (grpcurl) or read its log. Included with
//! `#[path = "support/binary.rs"] mod binary;`.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// How long the binary may take to log a line we wait for.
pub(crate) const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A `consentd serve` child process, killed when dropped (also when a test panics).
pub(crate) struct Consentd {
    child: Child,
    /// Lines of the child's stderr, forwarded by a reader thread.
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub(crate) seen: Vec<String>,
}

impl Consentd {
    /// Starts `consentd serve --listen 127.0.0.1:0 --data-dir <dir> <extra...>`
    /// with `RUST_LOG=<log>`, and waits until it listens.
    pub(crate) fn start(data_dir: &Path, log: &str, extra: &[&str]) -> (Consentd, SocketAddr) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consentd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the consentd binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the receiver is gone so the child never blocks.
                let _ = tx.send(line);
            }
        });
        let mut server = Consentd {
            child,
            lines,
            seen: Vec::new(),
        };
        let line = server.wait_for_line("listening on ");
        let addr = after(&line, "listening on ")
            .parse()
            .unwrap_or_else(|e| panic!("cannot parse the address in {line:?}: {e}"));
        (server, addr)
    }

    /// The first stderr line containing `needle`: one already read, or the
    /// next one to come. Blocks the thread (the server is another process).
    pub(crate) fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "consentd never logged {needle:?} ({e}); stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// The first whitespace-separated word after `marker` in `line`.
pub(crate) fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
}

impl Drop for Consentd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
