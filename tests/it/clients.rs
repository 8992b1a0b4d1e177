//! Outside tools against the real binary cargo built, and the documents that
//! show them.
//!
//! - The Python and Node scenario scripts (`clients/python/test_scenarios.py`,
//!   `clients/node/test.js`) generate their client from `proto/`, start the
//!   binary on a free port with a temporary data directory, and stop it.
//! - The grpcurl tours, the README's and `docs/walkthrough.md`, run as
//!   written: the block that starts the server (`cargo run ...`, with
//!   `--listen 127.0.0.1:0` added), then every grpcurl command block in
//!   order, whose output must match the output block shown after it (see
//!   [`matches_shortened`]).
//! - The Python and Node snippets of `docs/clients.md` must be the example
//!   files the scripts run, verbatim.
//!
//! The tests that need a tool are `#[ignore]`d, with the tool and its install
//! command as the reason: `cargo test -- --include-ignored` runs them (`.ci/run`
//! installs the tools first), and then a missing tool fails the test.

use crate::common::{
    markdown::{Fence, fences, section},
    process::{CONSENTD_BIN, ServerProcess},
};

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// How long the server-start block may take: `cargo run --release` compiles
/// the server first when no release build is there yet.
const CARGO_RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// Fails, saying how to install it, unless `tool` exists.
fn require(tool: &Path, install: &str) {
    assert!(
        tool.exists(),
        "{} is missing: install it with `{install}` (.ci/run does)",
        tool.display()
    );
}

/// Runs `program args` in the repository root; fails with its output unless it exits 0.
fn run_script(program: &Path, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .arg(CONSENTD_BIN)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{text}",
        program.display(),
        output.status
    );
    assert!(text.contains("all scenarios passed"), "{text}");
    println!("{text}");
}

const PYTHON_INSTALL: &str = "python3 -m venv clients/python/.venv && clients/python/.venv/bin/pip install -r clients/python/requirements.txt";
const NODE_INSTALL: &str = "npm ci --prefix clients/node";
const GRPCURL_INSTALL: &str =
    "python3 -m venv .venv-tools && .venv-tools/bin/pip install -r tools/grpcurl-requirements.txt";

#[test]
#[ignore = "needs the Python client: python3 -m venv clients/python/.venv && clients/python/.venv/bin/pip install -r clients/python/requirements.txt"]
fn python_client_runs_the_scenarios() {
    let python = root().join("clients/python/.venv/bin/python");
    require(&python, PYTHON_INSTALL);
    run_script(&python, &["clients/python/test_scenarios.py"]);
}

#[test]
#[ignore = "needs node and the Node client: npm ci --prefix clients/node"]
fn node_client_runs_the_scenarios() {
    require(
        &root().join("clients/node/node_modules/@grpc/grpc-js"),
        NODE_INSTALL,
    );
    run_script(Path::new("node"), &["clients/node/test.js"]);
}

/// Whether `actual` matches a document's shortened `expected` output:
/// white space is ignored, `…` stands for anything, and so does a timestamp
/// (`"2026-11-25T10:26:23.857Z"`); the remaining pieces must appear in order.
fn matches_shortened(expected: &str, actual: &str) -> Result<(), String> {
    let squeeze = |text: &str| text.split_whitespace().collect::<String>();
    let actual = squeeze(actual);
    // On a line with two `…`, the text between them describes what was left
    // out (`[ … alice: eligible … ]`): it is not output.
    let expected: Vec<String> = expected
        .lines()
        .map(|line| match line.split('…').collect::<Vec<_>>()[..] {
            [before, _description, after] => format!("{before}…{after}"),
            _ => line.to_owned(),
        })
        .collect();
    let mut pieces = Vec::new();
    for part in expected.join("\n").split('…') {
        let part = squeeze(part);
        let mut rest = part.as_str();
        // Cut at each quoted timestamp: `"` + 4 digits + `-`, up to the closing quote.
        while let Some(at) = rest
            .char_indices()
            .find(|&(i, c)| {
                c == '"'
                    && rest.len() > i + 6
                    && rest[i + 1..i + 5].bytes().all(|b| b.is_ascii_digit())
                    && rest.as_bytes()[i + 5] == b'-'
            })
            .map(|(i, _)| i)
        {
            pieces.push(rest[..at].to_owned());
            let close = rest[at + 1..].find('"').map_or(rest.len(), |j| at + 2 + j);
            rest = &rest[close..];
        }
        pieces.push(rest.to_owned());
    }
    let mut from = 0;
    for piece in pieces.iter().filter(|p| !p.is_empty()) {
        match actual[from..].find(piece.as_str()) {
            Some(at) => from += at + piece.len(),
            None => return Err(format!("missing, in order: {piece}")),
        }
    }
    Ok(())
}

#[test]
fn shortened_output_matching() {
    assert!(matches_shortened("{\n  \"a\": 1,\n  …\n}", "{\"a\": 1, \"b\": 2}").is_ok());
    assert!(
        matches_shortened(
            "\"at\": \"2026-01-01T00:00:00Z\", \"x\": 1",
            "\"at\":\"1999-12-31T23:59:59.999Z\",\"x\":1"
        )
        .is_ok()
    );
    assert!(matches_shortened("\"x\": 1 … \"y\": 2", "\"y\": 2, \"x\": 1").is_err());
    assert!(matches_shortened("\"x\": 2", "\"x\": 1").is_err());
    assert!(matches_shortened("[ … one: eligible … ]", "[{\"id\": \"one\"}]").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl: python3 -m venv .venv-tools && .venv-tools/bin/pip install -r tools/grpcurl-requirements.txt"]
async fn the_readme_tour_runs_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let ran = run_tour(section(&readme, "## A five-minute tour with grpcurl")).await;
    assert!(
        ran.contains("consent.v1.EligibilityService/BatchCheckEligibility"),
        "the README's tour no longer checks eligibility"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl: python3 -m venv .venv-tools && .venv-tools/bin/pip install -r tools/grpcurl-requirements.txt"]
async fn the_grpcurl_walk_through_runs_as_written() {
    let text = std::fs::read_to_string(root().join("docs/walkthrough.md")).expect("walkthrough");
    let ran = run_tour(&text).await;
    for needed in [
        " list",
        "describe consent.v1.EligibilityService",
        "consent.v1.ConsentService/OptOut",
        "consent.v1.EligibilityService/BatchCheckEligibility",
        "grpc.health.v1.Health/Check",
    ] {
        assert!(
            ran.contains(needed),
            "the walk-through no longer runs {needed:?}"
        );
    }
}

/// Runs a grpcurl tour (`markdown`) as a reader would: its `cargo run` block
/// starts a server on an empty data directory (`--listen 127.0.0.1:0` added,
/// so that tests can run side by side), then each command block that calls
/// grpcurl runs in order, with the server's address in place of
/// `localhost:50051`, and must print what the output block after it shows.
/// The install block is not run: grpcurl must be installed already. Returns
/// the command blocks it ran.
async fn run_tour(markdown: &str) -> String {
    let tools = root().join(".venv-tools/bin");
    require(&tools.join("grpcurl"), GRPCURL_INSTALL);
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut blocks = fences(markdown).into_iter().peekable();
    let start = blocks
        .by_ref()
        .find(|block| block.info == "sh" && block.body.starts_with("cargo run "))
        .expect("a block that starts the server with `cargo run` before the grpcurl commands");
    let command = start.body.trim();
    assert!(
        !command.contains('\n') && !command.contains('#'),
        "the server-start block is one command without comments: {command}"
    );
    // The block's `$(mktemp -d)` lands in this directory, removed at the end.
    let temp = tempfile::tempdir().expect("temporary directory");
    let mut shell = Command::new("bash");
    shell
        .arg("-c")
        .arg(format!("exec {command} --listen 127.0.0.1:0"))
        .current_dir(root())
        .env("TMPDIR", temp.path());
    // Run it in a reader's environment, without what cargo set for this test
    // (`OUT_DIR`, `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...): build scripts that
    // watch those variables (ring's does) would make cargo rebuild the release
    // build here, and the next plain `cargo run` rebuild it again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let prefixes = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_PRIMARY_",
            "CARGO_BIN_",
        ];
        if name == "CARGO" || name == "OUT_DIR" || prefixes.iter().any(|p| name.starts_with(p)) {
            shell.env_remove(&*name);
        }
    }
    // cargo runs the binary in its own place (exec), so the child is the server.
    let mut server = ServerProcess::spawn(shell);
    let addr = server.wait_listening_within(CARGO_RUN_TIMEOUT).await;

    let mut ran = String::new();
    while let Some(Fence { info, body }) = blocks.next() {
        if info != "sh" || !body.contains("grpcurl ") || body.contains("pip install") {
            continue;
        }
        let expected = match blocks.peek() {
            Some(next) if next.info.is_empty() => Some(next.body.clone()),
            _ => None,
        };
        let script = body.replace("localhost:50051", &addr.to_string());
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 2>&1\n{script}"))
            .env("PATH", &path)
            .current_dir(root())
            .output()
            .expect("run bash");
        let actual = String::from_utf8_lossy(&output.stdout).into_owned();
        if let Some(expected) = expected
            && let Err(problem) = matches_shortened(&expected, &actual)
        {
            panic!(
                "block\n{body}\ndoes not print what the text shows ({problem});\nit printed:\n{actual}"
            );
        }
        ran.push_str(&body);
    }
    ran
}

#[test]
fn the_client_snippets_are_the_code_the_tests_run() {
    let doc = std::fs::read_to_string(root().join("docs/clients.md")).expect("docs/clients.md");
    let blocks = fences(&doc);
    for (info, file) in [
        ("python", "clients/python/example.py"),
        ("js", "clients/node/example.js"),
    ] {
        let snippet = &blocks
            .iter()
            .find(|block| block.info == info)
            .unwrap_or_else(|| panic!("docs/clients.md has no {info} block"))
            .body;
        let source: PathBuf = root().join(file);
        let source = std::fs::read_to_string(&source).expect("example file");
        assert_eq!(
            *snippet, source,
            "the {info} snippet of docs/clients.md differs from {file}: copy the file into it"
        );
    }
}
