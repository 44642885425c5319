//! Atomic file writing: every file `gbtd` writes appears whole or not at all.
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
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Say which directory is missing, not the temporary file that could not be created in it.
    if !dir.is_dir() {
        return Err(IoError::MissingDirectory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
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
