//! The documentation stands alone: every link of every Markdown file of the
//! repository leads to a file of the repository (and, for `file.md#anchor`,
//! to a heading of that file), or is an absolute `https://` address.

use std::path::{Path, PathBuf};

use crate::common::markdown::{anchors, links};

/// Directories that hold no documentation of ours: build output, installed
/// tools, and hidden directories (`.git`, `.venv-tools`, ...).
fn skipped(name: &str) -> bool {
    name.starts_with('.') || name == "target" || name == "node_modules" || name == "gen"
}

/// Every `*.md` file below `dir`, outside skipped directories.
fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !skipped(name) {
                markdown_files(&path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// What is wrong with the link `dest` of the file `from`, if anything.
fn problem(root: &Path, from: &Path, dest: &str) -> Option<String> {
    if dest.is_empty() {
        return Some("empty link".to_owned());
    }
    if let Some((scheme, _)) = dest.split_once(':')
        && scheme.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return (!matches!(scheme, "https" | "mailto"))
            .then(|| format!("{scheme}: links are not allowed; use https"));
    }
    let (path, anchor) = dest.split_once('#').unwrap_or((dest, ""));
    if path.starts_with('/') {
        return Some("absolute path; link relative to the file".to_owned());
    }
    let target = if path.is_empty() {
        from.to_owned()
    } else {
        from.parent().expect("a file's directory").join(path)
    };
    let Ok(target) = target.canonicalize() else {
        return Some("no such file or directory".to_owned());
    };
    if !target.starts_with(root) {
        return Some("outside the repository".to_owned());
    }
    if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
        let text = std::fs::read_to_string(&target).expect("read the linked file");
        if !anchors(&text).iter().any(|a| a == anchor) {
            return Some(format!("no heading for #{anchor}"));
        }
    }
    None
}

#[test]
fn every_markdown_link_resolves_inside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .expect("the repository root");
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "found no README.md below {}",
        root.display()
    );
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a Markdown file");
        for (line, dest) in links(&text) {
            if let Some(problem) = problem(&root, file, &dest) {
                let name = file.strip_prefix(&root).unwrap_or(file).display();
                broken.push(format!("{name}:{line}: ({dest}): {problem}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn links_are_judged_as_a_reader_follows_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .expect("the repository root");
    let readme = root.join("README.md");
    for ok in [
        "https://docs.rs/sled",
        "docs/api.md",
        "docs/api.md#errors",
        "#the-api-at-a-glance",
        "proto/consent/v1",
        "src/main.rs#L1",
    ] {
        assert_eq!(problem(&root, &readme, ok), None, "{ok}");
    }
    for bad in [
        "../README.md",
        "docs/missing.md",
        "docs/api.md#no-such-heading",
        "#no-such-heading",
        "/etc/passwd",
        "http://example.com",
        "",
    ] {
        assert!(problem(&root, &readme, bad).is_some(), "{bad}");
    }
}
