//! The `consentd` binary as a child process, for tests that need the real
//! executable (crashes, signals, command-line flags).

use std::{
    ffi::{OsStr, OsString},
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use tokio::sync::mpsc;

/// How long the binary may take to start listening or to exit.
pub(crate) const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A `consentd serve` child process, killed when dropped (also when a test panics).
pub(crate) struct ServerProcess {
    child: Child,
    /// Lines of the child's stderr, forwarded by a reader thread; closed at EOF.
    stderr_lines: mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far, for failure messages.
    seen: Vec<String>,
}

impl ServerProcess {
    /// Starts `consentd serve --listen 127.0.0.1:0 --data-dir <data_dir>`.
    pub(crate) fn start(data_dir: &Path) -> ServerProcess {
        let mut args: Vec<OsString> = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
        args.push("--data-dir".into());
        args.push(data_dir.into());
        Self::start_with(&args)
    }

    /// Starts `consentd` with exactly these arguments.
    pub(crate) fn start_with<S: AsRef<OsStr>>(args: &[S]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consentd"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the consentd binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, stderr_lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the receiver is gone so the child never blocks on stderr.
                let _ = tx.send(line);
            }
        });
        ServerProcess {
            child,
            stderr_lines,
            seen: Vec::new(),
        }
    }

    pub(crate) fn stderr_text(&self) -> String {
        self.seen.join("\n")
    }

    /// Reads stderr until the `listening on ADDR` line and returns ADDR.
    pub(crate) async fn wait_listening(&mut self) -> SocketAddr {
        let read =
            async {
                while let Some(line) = self.stderr_lines.recv().await {
                    let line = strip_ansi(&line);
                    self.seen.push(line.clone());
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let text = rest.split_whitespace().next().unwrap_or_default();
                        return Some(text.parse::<SocketAddr>().unwrap_or_else(|e| {
                            panic!("cannot parse the address in {line:?}: {e}")
                        }));
                    }
                }
                None
            };
        match tokio::time::timeout(PROCESS_TIMEOUT, read).await {
            Ok(Some(addr)) => addr,
            Ok(None) => panic!(
                "consentd closed stderr before listening; stderr:\n{}",
                self.stderr_text()
            ),
            Err(_) => panic!(
                "consentd did not listen within {PROCESS_TIMEOUT:?}; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Reads stderr to its end (the process exited) and returns the exit
    /// status and the whole of stderr. Fails if the process starts listening.
    pub(crate) async fn wait_exit(&mut self) -> (ExitStatus, String) {
        let read = async {
            while let Some(line) = self.stderr_lines.recv().await {
                let line = strip_ansi(&line);
                let listening = line.contains("listening on ");
                self.seen.push(line);
                assert!(
                    !listening,
                    "the process started serving instead of exiting; stderr:\n{}",
                    self.seen.join("\n")
                );
            }
        };
        if tokio::time::timeout(PROCESS_TIMEOUT, read).await.is_err() {
            panic!(
                "consentd did not exit within {PROCESS_TIMEOUT:?}; stderr:\n{}",
                self.stderr_text()
            );
        }
        // stderr is closed: the process has exited or is about to.
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("wait for consentd");
        (status, self.stderr_text())
    }

    /// Reads stderr until a line containing `needle`.
    pub(crate) async fn wait_for_line(&mut self, needle: &str) {
        let read = async {
            while let Some(line) = self.stderr_lines.recv().await {
                let line = strip_ansi(&line);
                let found = line.contains(needle);
                self.seen.push(line);
                if found {
                    return true;
                }
            }
            false
        };
        let found = tokio::time::timeout(PROCESS_TIMEOUT, read).await;
        assert!(
            matches!(found, Ok(true)),
            "consentd never logged {needle:?}; stderr:\n{}",
            self.stderr_text()
        );
    }

    /// Sends SIGTERM (the polite stop) with the system's `kill`.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Kills the process with SIGKILL (no chance to flush) and reaps it.
    pub(crate) fn kill(&mut self) -> ExitStatus {
        self.child.kill().expect("kill consentd");
        self.child.wait().expect("reap consentd")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Already reaped children make these fail harmlessly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) from a log line.
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
