//! Where in the data directory sled's files are, and how a compaction
//! moves them (see [`super::SledStore::reclaim`]).
//!
//! sled never gives disk space back: under steady churn its `db` file keeps
//! growing although the records do not (docs/performance.md, "Retention").
//! So the store copies its records into a fresh sled database now and then,
//! a new *generation*, and switches to it:
//!
//! - generation 0 is sled's files in the data directory itself (`db`,
//!   `conf`, `blobs/`, `snap.*`): every store starts there;
//! - generation N > 0 is the directory `gen-N` (decimal) inside it;
//! - the file `CURRENT` names the generation in use (`gen-N`); without it,
//!   generation 0 is. It is replaced by an atomic rename, and only once the
//!   new generation is complete and durable, so a crash at any point leaves
//!   one complete generation named;
//! - at open, every other generation is deleted (what a crash or a
//!   compaction left behind).
//!
//! Invariant: only this module knows the layout of generations.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

/// The file that names the generation in use.
const CURRENT: &str = "CURRENT";
/// The name `CURRENT` is written under before it is renamed.
const CURRENT_NEXT: &str = "CURRENT.next";
/// The prefix of a generation's directory.
const GENERATION_PREFIX: &str = "gen-";
/// sled's files of generation 0, in the data directory itself.
const ROOT_FILES: [&str; 3] = ["db", "conf", "blobs"];
/// The prefix of sled's snapshot files.
const SNAPSHOT_PREFIX: &str = "snap.";

/// A generation: its number and where its sled files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Generation {
    /// 0 for the data directory itself.
    pub(crate) number: u64,
    /// sled's directory.
    pub(crate) path: PathBuf,
}

impl Generation {
    fn new(dir: &Path, number: u64) -> Self {
        let path = if number == 0 {
            dir.to_path_buf()
        } else {
            dir.join(format!("{GENERATION_PREFIX}{number}"))
        };
        Self { number, path }
    }

    /// The generation after this one, in `dir`.
    pub(crate) fn next(&self, dir: &Path) -> Self {
        Self::new(dir, self.number.saturating_add(1))
    }
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(GENERATION_PREFIX)?;
    // Only canonical decimal: `gen-01` is not ours.
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The generation in use in `dir`, after deleting every other one.
pub(crate) fn open(dir: &Path) -> io::Result<Generation> {
    let current = match fs::read_to_string(dir.join(CURRENT)) {
        Ok(text) => {
            let name = text.trim_end_matches('\n');
            let number = parse_name(name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{CURRENT} names {name:?}, which is not a generation (gen-N)"),
                )
            })?;
            let generation = Generation::new(dir, number);
            if !generation.path.join("db").is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{CURRENT} names {name}, which has no sled file ({name}/db)"),
                ));
            }
            generation
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Generation::new(dir, 0),
        Err(e) => return Err(e),
    };
    remove_all_but(dir, &current)?;
    Ok(current)
}

/// Deletes every generation in `dir` but `keep`, and a `CURRENT.next` that
/// was never renamed.
pub(crate) fn remove_all_but(dir: &Path, keep: &Generation) -> io::Result<()> {
    remove_if_present(&dir.join(CURRENT_NEXT))?;
    if keep.number != 0 {
        remove_root_files(dir)?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(parse_name) else {
            continue;
        };
        if number != keep.number {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

/// Deletes generation 0's files.
fn remove_root_files(dir: &Path) -> io::Result<()> {
    for name in ROOT_FILES {
        remove_if_present(&dir.join(name))?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX))
        {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Makes a newly written generation durable: every file in it, the
/// directory, and its entry in `dir`.
pub(crate) fn make_durable(dir: &Path, generation: &Generation) -> io::Result<()> {
    sync_tree(&generation.path)?;
    File::open(dir)?.sync_all()
}

fn sync_tree(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(path)?.sync_all()
}

/// Names `generation` in `CURRENT`, atomically and durably.
pub(crate) fn switch_to(dir: &Path, generation: &Generation) -> io::Result<()> {
    let next = dir.join(CURRENT_NEXT);
    let mut file = File::create(&next)?;
    writeln!(file, "{GENERATION_PREFIX}{}", generation.number)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&next, dir.join(CURRENT))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_sled_files(path: &Path) {
        fs::create_dir_all(path.join("blobs")).expect("mkdir");
        fs::write(path.join("db"), b"x").expect("write");
        fs::write(path.join("conf"), b"x").expect("write");
        fs::write(path.join("snap.0000000000001234"), b"x").expect("write");
    }

    #[test]
    fn names_parse_only_in_canonical_form() {
        assert_eq!(parse_name("gen-1"), Some(1));
        assert_eq!(parse_name("gen-42"), Some(42));
        for bad in [
            "gen-", "gen-01", "gen-0", "gen-1a", "gen--1", "gen-+1", "1", "db",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn without_current_generation_zero_is_used_and_strays_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch_sled_files(dir.path());
        fs::create_dir(dir.path().join("gen-3")).expect("mkdir");
        fs::write(dir.path().join("consentd.lock"), b"1").expect("write");
        let current = open(dir.path()).expect("open");
        assert_eq!(current, Generation::new(dir.path(), 0));
        assert_eq!(current.path, dir.path());
        assert!(
            !dir.path().join("gen-3").exists(),
            "an unnamed generation is removed"
        );
        assert!(dir.path().join("db").exists(), "generation 0 is kept");
        assert!(
            dir.path().join("consentd.lock").exists(),
            "other files are kept"
        );
    }

    #[test]
    fn a_switch_names_the_new_generation_and_open_removes_the_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch_sled_files(dir.path());
        let zero = open(dir.path()).expect("open");
        let one = zero.next(dir.path());
        assert_eq!(one.path, dir.path().join("gen-1"));
        touch_sled_files(&one.path);
        make_durable(dir.path(), &one).expect("durable");
        switch_to(dir.path(), &one).expect("switch");
        assert_eq!(
            fs::read_to_string(dir.path().join("CURRENT")).expect("read"),
            "gen-1\n"
        );
        fs::write(dir.path().join("CURRENT.next"), b"gen-9\n").expect("write");
        let current = open(dir.path()).expect("reopen");
        assert_eq!(current, one);
        for gone in [
            "db",
            "conf",
            "blobs",
            "snap.0000000000001234",
            "CURRENT.next",
        ] {
            assert!(!dir.path().join(gone).exists(), "{gone} is removed");
        }
        assert!(one.path.join("db").exists());
        // And on to the next, which removes gen-1.
        let two = current.next(dir.path());
        touch_sled_files(&two.path);
        switch_to(dir.path(), &two).expect("switch");
        assert_eq!(open(dir.path()).expect("reopen"), two);
        assert!(!one.path.exists());
    }

    #[test]
    fn an_unreadable_current_is_refused_rather_than_taken_for_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch_sled_files(dir.path());
        // Reading a directory fails with an error other than NotFound.
        fs::create_dir(dir.path().join("CURRENT")).expect("mkdir");
        open(dir.path()).expect_err("CURRENT cannot be read");
        assert!(dir.path().join("db").exists(), "nothing was removed");
    }

    #[test]
    fn removing_what_is_absent_is_fine_but_other_errors_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        remove_if_present(&dir.path().join("absent")).expect("nothing to remove");
        fs::write(dir.path().join("file"), b"x").expect("write");
        // A path through a file: ENOTDIR, not NotFound.
        remove_if_present(&dir.path().join("file").join("below")).expect_err("not a directory");
    }

    #[test]
    fn a_current_naming_nothing_usable_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("CURRENT"), b"gen-7\n").expect("write");
        let missing = open(dir.path()).expect_err("no gen-7/db");
        assert!(missing.to_string().contains("gen-7/db"), "{missing}");
        fs::write(dir.path().join("CURRENT"), b"../elsewhere\n").expect("write");
        let bad = open(dir.path()).expect_err("not a generation");
        assert!(bad.to_string().contains("not a generation"), "{bad}");
    }
}
