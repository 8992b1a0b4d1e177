//! The real `consentd` binary as a child process: start it on a data
//! directory, wait until it listens, stop it with SIGTERM or SIGKILL.
//!
//! Shared by the tests that need a process of their own (crash, SIGTERM,
//! strace, faults); the in-process harness is in `common/mod.rs`.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use tokio::sync::mpsc;
use tonic::transport::Channel as GrpcChannel;

/// How long the binary may take to start listening or to exit.
pub(crate) const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of the `consentd` binary cargo built for the tests.
pub(crate) const CONSENTD_BIN: &str = env!("CARGO_BIN_EXE_consentd");

/// A `consentd serve` child process, killed when dropped (also when a test panics).
pub(crate) struct ServerProcess {
    child: Child,
    /// Lines of the child's stderr, forwarded by a reader thread; closed at EOF.
    stderr_lines: mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far, for failure messages.
    seen: Vec<String>,
}

/// The arguments of `consentd serve` on `data_dir`, listening on an ephemeral port.
pub(crate) fn serve_args(data_dir: &Path) -> Vec<&OsStr> {
    vec![
        OsStr::new("serve"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
    ]
}

impl ServerProcess {
    /// Starts `consentd serve --listen 127.0.0.1:0 --data-dir <data_dir>`.
    pub(crate) fn start(data_dir: &Path) -> ServerProcess {
        let mut command = Command::new(CONSENTD_BIN);
        command.args(serve_args(data_dir));
        Self::spawn(command)
    }

    /// Starts `consentd serve --listen 127.0.0.1:0 --data-dir <dir> <extra...>`
    /// with `RUST_LOG=<log>`, and waits until it listens.
    pub(crate) async fn serve(
        data_dir: &Path,
        log: &str,
        extra: &[&str],
    ) -> (ServerProcess, SocketAddr) {
        let mut command = Command::new(CONSENTD_BIN);
        command
            .args(serve_args(data_dir))
            .args(extra)
            .env("RUST_LOG", log);
        let mut server = Self::spawn(command);
        let addr = server.wait_listening().await;
        (server, addr)
    }

    /// Starts `consentd` with exactly these arguments.
    pub(crate) fn start_with<S: AsRef<OsStr>>(args: &[S]) -> ServerProcess {
        let mut command = Command::new(CONSENTD_BIN);
        command.args(args);
        Self::spawn(command)
    }

    /// Starts `command` (consentd itself, or a wrapper such as strace that
    /// runs it), with info logs on a piped stderr.
    pub(crate) fn spawn(mut command: Command) -> ServerProcess {
        if !command.get_envs().any(|(key, _)| key == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
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

    /// Every stderr line the child wrote so far (without waiting for more).
    pub(crate) fn lines_so_far(&mut self) -> &[String] {
        while let Ok(line) = self.stderr_lines.try_recv() {
            self.seen.push(strip_ansi(&line));
        }
        &self.seen
    }

    pub(crate) fn stderr_text(&self) -> String {
        self.seen.join("\n")
    }

    /// Reads stderr until the `listening on ADDR` line and returns ADDR.
    pub(crate) async fn wait_listening(&mut self) -> SocketAddr {
        self.wait_listening_within(PROCESS_TIMEOUT).await
    }

    /// [`Self::wait_listening`], waiting up to `timeout` (for a command that
    /// may compile the binary first, such as `cargo run`).
    pub(crate) async fn wait_listening_within(&mut self, timeout: Duration) -> SocketAddr {
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
        match tokio::time::timeout(timeout, read).await {
            Ok(Some(addr)) => addr,
            Ok(None) => panic!(
                "consentd closed stderr before listening; stderr:\n{}",
                self.stderr_text()
            ),
            Err(_) => panic!(
                "consentd did not listen within {timeout:?}; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Reads stderr to its end (the process exited) and returns the exit
    /// status and the whole of stderr. Fails if the process starts listening.
    pub(crate) async fn wait_exit(&mut self) -> (ExitStatus, String) {
        self.read_to_exit(true).await
    }

    /// Reads stderr to its end (the process exited, after serving) and
    /// returns the exit status and the whole of stderr.
    pub(crate) async fn wait_stopped(&mut self) -> (ExitStatus, String) {
        self.read_to_exit(false).await
    }

    async fn read_to_exit(&mut self, refuse_listening: bool) -> (ExitStatus, String) {
        let read = async {
            while let Some(line) = self.stderr_lines.recv().await {
                let line = strip_ansi(&line);
                let listening = line.contains("listening on ");
                self.seen.push(line);
                assert!(
                    !(refuse_listening && listening),
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

    /// The first stderr line containing `needle`: one already read, or the
    /// next one to come.
    pub(crate) async fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        let read = async {
            while let Some(line) = self.stderr_lines.recv().await {
                let line = strip_ansi(&line);
                let found = line.contains(needle);
                self.seen.push(line.clone());
                if found {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(PROCESS_TIMEOUT, read).await {
            Ok(Some(line)) => line,
            _ => panic!(
                "consentd never logged {needle:?}; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Sends SIGTERM (the polite stop) with the system's `kill`.
    pub(crate) fn terminate(&self) {
        signal(self.child.id(), "TERM");
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

/// Sends `SIG<name>` to `pid` with the system's `kill`.
pub(crate) fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
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

/// A connection to the server at `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> GrpcChannel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint URI")
        .connect()
        .await
        .expect("connect to consentd")
}

/// The first whitespace-separated word after `marker` in `line`.
pub(crate) fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
}
