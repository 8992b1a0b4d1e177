//! Clients in other languages and grpcurl, with the real tools, against the
//! real binary that cargo built.
//!
//! - The Python and Node scenario scripts (`clients/python/test_scenarios.py`,
//!   `clients/node/test.js`) generate their client from `proto/`, start the
//!   binary on a free port with a temporary data directory, and stop it.
//! - The README's grpcurl walk-through is run command block by command block
//!   against a fresh server, and each block's output must match the output
//!   block the README shows after it (see [`matches_shortened`]).
//! - The README's Python and Node snippets must be the example files the
//!   scripts run, verbatim.
//!
//! The tools are installed by `.ci/run` (see the README, "Clients in other
//! languages"). When one is missing, its test is skipped with a message, unless
//! `CI` is set: then it fails.

use crate::common::process::ServerProcess;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BINARY: &str = env!("CARGO_BIN_EXE_consentd");

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// True when `tool` exists. When it does not: fails under CI, else says why
/// the test is skipped and returns false.
fn tool_present(tool: &Path, install: &str) -> bool {
    if tool.exists() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false");
    assert!(
        !ci,
        "{} is missing, and CI is set: install it with `{install}` (.ci/run does)",
        tool.display()
    );
    eprintln!(
        "SKIPPED: {} is missing; install it with `{install}` (.ci/run does). Under CI=true this fails.",
        tool.display()
    );
    false
}

/// Runs `program args` in the repository root; fails with its output unless it exits 0.
fn run_script(program: &Path, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .arg(BINARY)
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

#[test]
fn python_client_runs_the_scenarios() {
    let python = root().join("clients/python/.venv/bin/python");
    let install = "python3 -m venv clients/python/.venv && clients/python/.venv/bin/pip install -r clients/python/requirements.txt";
    if tool_present(&python, install) {
        run_script(&python, &["clients/python/test_scenarios.py"]);
    }
}

#[test]
fn node_client_runs_the_scenarios() {
    let modules = root().join("clients/node/node_modules/@grpc/grpc-js");
    if tool_present(&modules, "npm ci --prefix clients/node") {
        run_script(Path::new("node"), &["clients/node/test.js"]);
    }
}

/// The fenced blocks of `markdown` between the heading `from` and the next
/// heading of the same level: (info string, body).
fn fenced_blocks(markdown: &str, from: &str) -> Vec<(String, String)> {
    let start = markdown
        .find(from)
        .unwrap_or_else(|| panic!("README has no {from:?}"));
    let level = from.split(' ').next().unwrap_or("##");
    let section = &markdown[start + from.len()..];
    let end = section
        .find(&format!("\n{level} "))
        .unwrap_or(section.len());
    let mut blocks = Vec::new();
    let mut lines = section[..end].lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((info.trim().to_owned(), body.join("\n") + "\n"));
        }
    }
    blocks
}

/// Whether `actual` matches the README's shortened `expected` output:
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
async fn the_readme_grpcurl_walk_through_runs_as_written() {
    let tools = root().join(".venv-tools/bin");
    let install = "python3 -m venv .venv-tools && .venv-tools/bin/pip install -r tools/grpcurl-requirements.txt";
    if !tool_present(&tools.join("grpcurl"), install) {
        return;
    }
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let blocks = fenced_blocks(&readme, "## A walk-through with grpcurl");
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let (_server, addr) = ServerProcess::serve(data_dir.path(), "info", &[]).await;
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut ran = Vec::new();
    let mut blocks = blocks.into_iter().peekable();
    while let Some((info, commands)) = blocks.next() {
        // The install and server-start blocks are what this test did itself.
        if info != "sh" || !commands.contains("grpcurl ") || commands.contains("pip install") {
            continue;
        }
        let expected = match blocks.peek() {
            Some((info, output)) if info.is_empty() => Some(output.clone()),
            _ => None,
        };
        let script = commands.replace("localhost:50051", &addr.to_string());
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
                "README block\n{commands}\ndoes not print what the README shows ({problem});\nit printed:\n{actual}"
            );
        }
        ran.push(commands);
    }
    let all = ran.concat();
    for needed in [
        " list",
        "describe consent.v1.EligibilityService",
        "consent.v1.ConsentService/OptOut",
        "consent.v1.EligibilityService/BatchCheckEligibility",
        "grpc.health.v1.Health/Check",
    ] {
        assert!(
            all.contains(needed),
            "the walk-through no longer runs {needed:?}"
        );
    }
}

/// The README's code block that starts with `first_line`, in the section `section`.
fn readme_snippet(section: &str, info: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    fenced_blocks(&readme, section)
        .into_iter()
        .find(|(i, _)| i == info)
        .unwrap_or_else(|| panic!("README section {section:?} has no {info} block"))
        .1
}

#[test]
fn the_readme_snippets_are_the_code_the_tests_run() {
    for (info, file) in [
        ("python", "clients/python/example.py"),
        ("js", "clients/node/example.js"),
    ] {
        let snippet = readme_snippet("## Clients in other languages", info);
        let source: PathBuf = root().join(file);
        let source = std::fs::read_to_string(&source).expect("example file");
        assert_eq!(
            snippet, source,
            "the README's {info} snippet differs from {file}: copy the file into the README"
        );
    }
}
