//! The pinned Python peers (torch, torchvision in the project's `.venv`, made by
//! `scripts/setup.sh`) for the cross-checks of netgen's tests.
//!
//! Without a `.venv` the calling test is skipped with a message on stderr, so the crate's tests
//! can run outside the set-up; with the environment variable `CI` set (CI always has the set-up)
//! a missing interpreter fails the test instead. A peer that starts but fails always fails the test.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The interpreter: `$GBTD_PYTHON` if set, else the first `.venv/bin/python` above this crate.
fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GBTD_PYTHON") {
        let p = PathBuf::from(p);
        if !p.exists() {
            eprintln!("$GBTD_PYTHON = {} does not exist", p.display());
        }
        return p.exists().then_some(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join(".venv/bin/python"))
        .find(|p| p.exists())
}

/// Runs `script` with `args` and returns its standard output; `None` (after saying so on stderr)
/// when there is no Python set-up and `CI` is not set. Panics if the script fails.
pub fn run(test: &str, script: &str, args: &[&str]) -> Option<String> {
    let Some(py) = python() else {
        let msg = "no Python peers: neither $GBTD_PYTHON nor a .venv/bin/python above netgen/ exists \
                   (run scripts/setup.sh)";
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {msg}; CI is set, so this is an error");
        }
        eprintln!("SKIPPED {test}: {msg}");
        return None;
    };
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{test}: cannot start {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{test}: python peer exited with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
