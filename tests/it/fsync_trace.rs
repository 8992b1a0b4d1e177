//! Power loss, not only `kill -9`: every acknowledgement is preceded by an
//! `fdatasync` of the data file that covers the acknowledged write.
//!
//! `kill -9` leaves the kernel's page cache intact, so it cannot show that
//! a write reached the disk. This test runs the real binary under
//! `strace -f` while clients write, and checks the trace. Each write is an
//! `UpsertProfile` with an e-mail address used by no other write, so the
//! address names the write in two places of the trace: in sled's `pwrite64`
//! of its log to `<data-dir>/db` (the profile record holds the address), and
//! in the server's socket write of the response (which echoes the profile).
//! For every write the client saw acknowledged, the trace must show, in this
//! order: the end of the first `pwrite64` to `db` holding the address, then an
//! `fdatasync` (or `fsync`) of `db` that starts after it and ends, then the
//! start of the first socket write holding the address.
//!
//! The check fails if the flush or the fdatasync is left out of the group
//! commit (tried by hand: see docs/durability.md, "What makes a write durable").
//!
//! strace comes from Debian's `strace` package, which `.ci/run` installs.
//! The test is ignored unless asked for (`cargo test -- --include-ignored`,
//! as in CI), and then fails when strace is missing.

use std::{collections::HashMap, process::Command};

use crate::common::process::{CONSENTD_BIN, ServerProcess, connect, serve_args, signal};
use consentd::pb::{self, ChangeContext, Source, profile_service_client::ProfileServiceClient};

/// Concurrent clients (so that group commits hold several writes).
const CLIENTS: usize = 8;
/// Writes per client.
const WRITES_PER_CLIENT: usize = 25;

/// Fails unless `strace` runs here.
fn require_strace() {
    let works = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        works,
        "strace does not run here: install it with `apt-get install strace` (.ci/run does)"
    );
}

/// One system call from the trace, joined from its `unfinished` and
/// `resumed` halves when strace split it.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    /// The arguments as strace printed them (fd paths included, `-yy`).
    args: String,
    /// Seconds since the epoch when it started and when it returned.
    start: f64,
    end: f64,
}

/// Parses `strace -f -ttt -T -yy` output: `PID TIME NAME(ARGS) = RET <DUR>`,
/// or a call split in `PID TIME NAME(ARGS <unfinished ...>` and
/// `PID TIME <... NAME resumed>REST`.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut unfinished: HashMap<String, (String, String, f64)> = HashMap::new();
    for line in text.lines() {
        // strace pads the pid column (`9770  1795608575.59 ...` for a pid
        // shorter than its width), so split on runs of spaces.
        let mut parts = line.trim_start().splitn(2, ' ');
        let (Some(pid), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let mut parts = rest.trim_start().splitn(2, ' ');
        let (Some(time), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(time) = time.parse::<f64>() else {
            continue;
        };
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            if let Some((start_name, args, start)) = unfinished.remove(pid)
                && start_name == name
            {
                calls.push(Call {
                    name: start_name,
                    args: format!("{args}{tail}"),
                    start,
                    end: time,
                });
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if let Some(args) = args.strip_suffix(" <unfinished ...>") {
            unfinished.insert(pid.to_owned(), (name.to_owned(), args.to_owned(), time));
            continue;
        }
        // `<0.000123>` at the end is the time spent in the call.
        let duration = args
            .rsplit_once('<')
            .and_then(|(_, d)| d.strip_suffix('>'))
            .and_then(|d| d.parse::<f64>().ok())
            .unwrap_or(0.0);
        calls.push(Call {
            name: name.to_owned(),
            args: args.to_owned(),
            start: time,
            end: time + duration,
        });
    }
    calls.sort_by(|a, b| a.start.total_cmp(&b.start));
    calls
}

#[test]
fn padded_pids_parse() {
    let trace = "9770  1795608575.592643 fdatasync(11</d/db> <unfinished ...>\n\
                 12345 1795608575.592700 write(2<pipe:[1]>, \"x\", 1) = 1 <0.000010>\n\
                 9770  1795608575.593359 <... fdatasync resumed>) = 0 <0.000680>\n";
    let calls = parse_trace(trace);
    let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["fdatasync", "write"]);
    assert!(on_file(&calls[0], "/d/db"));
    assert!((calls[0].end - 1_795_608_575.593_359).abs() < 1e-6);
}

/// Whether the call's first argument is the file `path` (strace `-y` prints `fd</path>`).
fn on_file(call: &Call, path: &str) -> bool {
    call.args
        .split_once(',')
        .map_or(call.args.as_str(), |(fd, _)| fd)
        .contains(&format!("<{path}>"))
}

fn on_socket(call: &Call) -> bool {
    let fd = call.args.split_once(',').map_or("", |(fd, _)| fd);
    fd.contains("<TCP") || fd.contains("<socket:") || fd.contains("<TCPv6")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs strace: apt-get install strace"]
async fn every_acknowledgement_follows_an_fdatasync_of_the_data_file() {
    require_strace();
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let trace_dir = tempfile::tempdir().expect("temporary trace directory");
    let trace_path = trace_dir.path().join("trace");
    let db_path = data_dir.path().join("db");
    let db_path = db_path.to_str().expect("a UTF-8 temporary path");

    let mut command = Command::new("strace");
    command
        .args(["-f", "-ttt", "-T", "-yy", "-s", "1000000", "-o"])
        .arg(&trace_path)
        .args([
            "-e",
            "trace=pwrite64,pwritev,pwritev2,write,writev,sendto,sendmsg,fsync,fdatasync,sync_file_range",
        ])
        .arg(CONSENTD_BIN)
        .args(serve_args(data_dir.path()));
    let mut server = ServerProcess::spawn(command);
    let addr = server.wait_listening().await;

    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let channel = connect(addr).await;
        tasks.push(tokio::spawn(async move {
            let mut profiles = ProfileServiceClient::new(channel);
            let mut acknowledged = Vec::new();
            for n in 0..WRITES_PER_CLIENT {
                let email = format!("fsync-c{client}-n{n}@example.com");
                profiles
                    .upsert_profile(pb::UpsertProfileRequest {
                        tenant: "trace".into(),
                        profile_id: format!("fsync-{client}-{n}"),
                        emails: vec![email.clone()],
                        context: Some(ChangeContext {
                            source: Source::Api.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("UpsertProfile {email}: {e:?}"));
                acknowledged.push(email);
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.expect("a client panicked"));
    }

    // Stop consentd itself (strace exits with it and closes the trace).
    let lock = std::fs::read_to_string(data_dir.path().join("consentd.lock")).expect("lock file");
    let pid: u32 = lock
        .trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("lock file says {lock:?}"));
    signal(pid, "TERM");
    let (status, stderr) = server.wait_stopped().await;
    assert!(
        status.success(),
        "strace/consentd exit {status:?}; stderr:\n{stderr}"
    );

    let trace = std::fs::read_to_string(&trace_path).expect("read the trace");
    let calls = parse_trace(&trace);
    let syncs: Vec<&Call> = calls
        .iter()
        .filter(|c| (c.name == "fdatasync" || c.name == "fsync") && on_file(c, db_path))
        .collect();
    assert!(!syncs.is_empty(), "no fdatasync of {db_path} in the trace");
    let mut checked = 0;
    for email in &acknowledged {
        let written = calls
            .iter()
            .find(|c| {
                c.name.starts_with("pwrite")
                    && on_file(c, db_path)
                    && c.args.contains(email.as_str())
            })
            .unwrap_or_else(|| panic!("{email}: acknowledged, but never written to {db_path}"));
        let answered = calls
            .iter()
            .find(|c| {
                on_socket(c) && !c.name.starts_with("pwrite") && c.args.contains(email.as_str())
            })
            .unwrap_or_else(|| panic!("{email}: acknowledged, but no socket write holds it"));
        let covering = syncs
            .iter()
            .find(|s| s.start >= written.end && s.end <= answered.start);
        assert!(
            covering.is_some(),
            "{email}: written to {db_path} at {:.6} (ended {:.6}) and answered at {:.6}, with no \
             fdatasync of it in between; syncs near: {:?}",
            written.start,
            written.end,
            answered.start,
            syncs
                .iter()
                .filter(|s| (s.start - written.end).abs() < 0.05)
                .collect::<Vec<_>>()
        );
        checked += 1;
    }
    assert_eq!(checked, CLIENTS * WRITES_PER_CLIENT);
    eprintln!(
        "{checked} acknowledgements each preceded by a covering fdatasync ({} fdatasyncs of db in the trace)",
        syncs.len()
    );
}
