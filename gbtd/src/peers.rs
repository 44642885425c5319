//! Support for tests and benchmarks that cross-check against the pinned Python peers (numpy,
//! TensorLy, PyTorch, torchvision) installed by `scripts/setup.sh` into the project's `.venv`.
//!
//! Not part of the decomposition API. The interpreter is `$GBTD_PYTHON` if set, otherwise the
//! first `.venv/bin/python` found walking up from the crate's directory.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of the virtualenv's Python interpreter.
pub fn python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("GBTD_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in start.ancestors() {
        let cand = dir.join(".venv/bin/python");
        if cand.exists() {
            return Ok(cand);
        }
    }
    Err("no .venv/bin/python found above the crate; run scripts/setup.sh first".into())
}

/// Runs `script` (Python source) with the given arguments and returns its standard output, or an
/// error holding its standard error.
pub fn run_python(script: &str, args: &[&str]) -> Result<String, String> {
    let py = python()?;
    let mut cmd = Command::new(&py);
    // numpy chooses its own OpenBLAS kernels unless the user set them.
    crate::openblas::coretype::remove_own_coretype(&mut cmd);
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
