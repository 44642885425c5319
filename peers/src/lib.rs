//! Test support, never a dependency of the shipped crates: runs the pinned Python peers (numpy,
//! TensorLy, PyTorch, torchvision) that `scripts/setup.sh` installs into the project's `.venv`,
//! for tests and benchmarks that cross-check against them.
//!
//! The interpreter is `$GBTD_PYTHON` if set, otherwise the first `.venv/bin/python` found walking
//! up from this crate's directory. A test that needs it starts with
//!
//! ```no_run
//! # fn a_test() {
//! if !peers::available("a_test") {
//!     return;
//! }
//! # }
//! ```
//!
//! Outside the set-up the test then skips with a message on standard error. In CI (the
//! environment variable `CI` set to anything but `""`, `0` or `false`) a missing interpreter is
//! a failure instead, so that the cross-checks can never be skipped silently there.
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of the virtualenv's Python interpreter, or why there is none.
pub fn python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("GBTD_PYTHON") {
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(format!("GBTD_PYTHON={} does not exist", p.display()));
        }
        return Ok(p);
    }
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in start.ancestors() {
        let cand = dir.join(".venv/bin/python");
        if cand.exists() {
            return Ok(cand);
        }
    }
    Err(format!(
        "no .venv/bin/python in {} or above it and GBTD_PYTHON is not set; run scripts/setup.sh",
        start.display()
    ))
}

/// What a test that needs the Python peers does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The interpreter is there: run the cross-check.
    Run,
    /// Not in CI and no interpreter: skip, saying why.
    Skip(String),
    /// In CI and no interpreter: fail, saying why.
    Fail(String),
}

/// Whether the value of the `CI` variable means "running in CI".
fn is_ci(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The decision for `test` given the interpreter lookup and the value of `CI`.
pub fn decide(test: &str, python: &Result<PathBuf, String>, ci: Option<&OsStr>) -> Decision {
    match python {
        Ok(_) => Decision::Run,
        Err(why) if is_ci(ci) => Decision::Fail(format!(
            "{test}: the Python peers are required in CI (CI is set) but missing: {why}"
        )),
        Err(why) => Decision::Skip(format!(
            "SKIPPED {test}: the Python peers are not set up ({why}); set CI=1 to make this a failure"
        )),
    }
}

/// Whether the Python peers can run. When they cannot, prints a `SKIPPED` line naming `test` on
/// standard error and returns `false`, or panics when running in CI (see the crate
/// documentation).
pub fn available(test: &str) -> bool {
    match decide(test, &python(), std::env::var_os("CI").as_deref()) {
        Decision::Run => true,
        Decision::Skip(msg) => {
            eprintln!("{msg}");
            false
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// Runs `script` (Python source) with the given arguments and returns its standard output, or an
/// error holding its standard error.
pub fn run_python(script: &str, args: &[&str]) -> Result<String, String> {
    let py = python()?;
    let mut cmd = Command::new(&py);
    // When gbtd chose OPENBLAS_CORETYPE for this process (it then sets GBTD_OPENBLAS_CORETYPE to
    // the same value; see `gbtd::openblas::coretype`), numpy's own OpenBLAS makes its own choice.
    if let Ok(marker) = std::env::var("GBTD_OPENBLAS_CORETYPE") {
        if std::env::var("OPENBLAS_CORETYPE").is_ok_and(|v| v == marker) {
            cmd.env_remove("OPENBLAS_CORETYPE");
        }
        cmd.env_remove("GBTD_OPENBLAS_CORETYPE");
    }
    let out = cmd
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot start {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "python exited with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `script` for `test` when the peers are available (see [`available`]) and returns its
/// standard output; `None` after a `SKIPPED` line when they are not set up outside CI. Panics if the
/// script fails, or in CI when the peers are missing.
pub fn run(test: &str, script: &str, args: &[&str]) -> Option<String> {
    if !available(test) {
        return None;
    }
    Some(run_python(script, args).unwrap_or_else(|e| panic!("{test}: python peer failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_interpreter_runs_in_and_out_of_ci() {
        let found = Ok(PathBuf::from("/x/.venv/bin/python"));
        assert_eq!(decide("t", &found, None), Decision::Run);
        assert_eq!(decide("t", &found, Some(OsStr::new("true"))), Decision::Run);
    }

    #[test]
    fn a_missing_interpreter_skips_outside_ci_and_fails_in_ci() {
        let missing = Err("no venv".to_string());
        for ci in [None, Some(""), Some("0"), Some("false")] {
            match decide("t", &missing, ci.map(OsStr::new)) {
                Decision::Skip(m) => assert!(m.starts_with("SKIPPED t:") && m.contains("no venv"), "{m}"),
                other => panic!("CI={ci:?}: expected a skip, got {other:?}"),
            }
        }
        for ci in ["1", "true", "yes"] {
            match decide("t", &missing, Some(OsStr::new(ci))) {
                Decision::Fail(m) => assert!(m.contains("required in CI") && m.contains("no venv"), "{m}"),
                other => panic!("CI={ci}: expected a failure, got {other:?}"),
            }
        }
    }
}
