//! Atomic file writing: every file `gbtd` writes appears whole or not at all; and the checks of
//! an output path that a program makes before any work ([`check_output_path`]).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{IoError, IoResult};

/// Writes a file atomically: `write` fills a temporary file in `path`'s directory, which is
/// flushed, synced and renamed to `path`. A missing directory is reported as such
/// ([`IoError::MissingDirectory`]) before anything is created. On any error the temporary file is removed and `path`
/// is untouched.
pub fn write_atomic<F>(path: &Path, write: F) -> IoResult<()>
where
    F: FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
{
    let werr = |source| IoError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Say which directory is missing, not the temporary file that could not be created in it.
    let dir = existing_dir(path)?;
    let tmp = tempfile::Builder::new()
        .prefix(".gbtd-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(werr)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w).map_err(werr)?;
        w.flush().map_err(werr)?;
    }
    tmp.as_file().sync_all().map_err(werr)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile creates 0600 files; give the output the usual 0644.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(werr)?;
    }
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

/// The directory a file at `path` goes to (`.` for a bare file name), checked to exist
/// ([`IoError::MissingDirectory`] otherwise).
fn existing_dir(path: &Path) -> IoResult<&Path> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(IoError::MissingDirectory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(dir)
}

/// Checks, before any work is done, that an output computed from the file `input` can be
/// written at `out`:
/// - the name ends in one of `extensions` (given without the dot, compared case-insensitively;
///   nothing is checked when the list is empty), else [`IoError::OutputExtension`], whose message
///   says that `what` (for example "the factors") must be written to such a file;
/// - its directory exists, else [`IoError::MissingDirectory`];
/// - it is not `input` itself (same file after resolving links), else [`IoError::OutputIsInput`],
///   whose message calls the input "the `input_role` file" (for example "model").
///
/// Nothing is created. A program prefixes the errors with the option that named `out`.
pub fn check_output_path(
    out: &Path,
    extensions: &[&str],
    what: &str,
    input: &Path,
    input_role: &str,
) -> IoResult<()> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if !extensions.is_empty() && !extensions.iter().any(|e| ext.as_deref() == Some(e)) {
        let expected: Vec<String> = extensions.iter().map(|e| format!(".{e}")).collect();
        return Err(IoError::OutputExtension {
            path: out.to_path_buf(),
            what: what.to_string(),
            expected: expected.join(" or "),
        });
    }
    existing_dir(out)?;
    if let (Ok(a), Ok(b)) = (out.canonicalize(), input.canonicalize())
        && a == b
    {
        return Err(IoError::OutputIsInput {
            path: out.to_path_buf(),
            input_role: input_role.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_are_checked_in_order() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("model.safetensors");
        std::fs::write(&input, b"x").unwrap();
        let ok = d.path().join("out.SafeTensors");
        assert!(check_output_path(&ok, &["safetensors"], "the model", &input, "input").is_ok());
        let e = check_output_path(
            &d.path().join("o.npy"),
            &["json", "csv"],
            "the report",
            &input,
            "input",
        )
        .unwrap_err();
        assert!(
            e.to_string().ends_with(
                "the report must be written to a .json or .csv file; use a name ending in .json or .csv"
            ),
            "{e}"
        );
        let deep = d.path().join("no/such/o.safetensors");
        let e = check_output_path(&deep, &["safetensors"], "the model", &input, "input").unwrap_err();
        assert!(matches!(e, IoError::MissingDirectory { .. }), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = check_output_path(&input, &["safetensors"], "the model", &input, "model").unwrap_err();
        assert!(
            e.to_string().ends_with("is the model file; choose another name"),
            "{e}"
        );
        // No extension required.
        assert!(check_output_path(&d.path().join("x"), &[], "it", &input, "input").is_ok());
    }
}
