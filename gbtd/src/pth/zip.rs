//! The zip `torch.save` archive (torch >= 1.6): `PREFIX/data.pkl` holds the pickled object,
//! `PREFIX/data/KEY` the raw bytes of each storage and `PREFIX/byteorder` the byte order (little
//! when absent); `PREFIX` is whatever directory the archive uses (torch writes the file's stem).
//! Every member's size is checked against the bytes the file holds before it is read.

use std::io::{Read, Seek};

use super::pickle::{self, Limits, Object};
use super::{PthError, PthResult};

/// Largest `data.pkl` accepted (real ones are kilobytes to a few megabytes).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Deflate's largest possible expansion: one compressed byte inflates to at most 1032 bytes
/// (a maximal back-reference of 258 bytes costs at least 2 bits). The one such bound of the
/// crate: `.npz` members are checked against it too.
pub(crate) const DEFLATE_MAX_RATIO: u64 = 1032;

/// The most bytes a zip member of `compressed` stored bytes can inflate to in a file of
/// `file_len` bytes: its stored bytes (at most the whole file), times [`DEFLATE_MAX_RATIO`]
/// unless it is stored uncompressed.
pub(crate) fn max_member_size(compressed: u64, method: ::zip::CompressionMethod, file_len: u64) -> u64 {
    let compressed = compressed.min(file_len);
    match method {
        ::zip::CompressionMethod::Stored => compressed,
        _ => compressed.saturating_mul(DEFLATE_MAX_RATIO),
    }
}

/// An open zip checkpoint.
pub(super) struct Archive<R> {
    archive: ::zip::ZipArchive<R>,
    /// The directory of `data.pkl`, with its trailing `/` (or empty).
    prefix: String,
    file_len: u64,
}

impl<R: Read + Seek> Archive<R> {
    /// Opens the archive of a `file_len`-byte file and reads its byte order (`true`: big-endian).
    pub(super) fn open(r: R, file_len: u64) -> PthResult<(Self, bool)> {
        let mut archive = ::zip::ZipArchive::new(r).map_err(|e| PthError::Zip(e.to_string()))?;
        let prefix = archive
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.len())
            .map(|n| n[..n.len() - "data.pkl".len()].to_string())
            .ok_or_else(|| PthError::Zip("no data.pkl entry (not a torch.save archive)".into()))?;
        let mut big_endian = false;
        let order_name = format!("{prefix}byteorder");
        if archive.file_names().any(|n| n == order_name) {
            let order = read_entry(&mut archive, &order_name, 64, file_len)?;
            big_endian = match order.as_slice() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(PthError::Zip(format!(
                        "unknown byteorder {:?}",
                        String::from_utf8_lossy(other)
                    )));
                }
            };
        }
        let archive = Archive {
            archive,
            prefix,
            file_len,
        };
        Ok((archive, big_endian))
    }

    /// The pickled object of `data.pkl`.
    pub(super) fn object(&mut self) -> PthResult<Object> {
        let name = format!("{}data.pkl", self.prefix);
        let pkl = read_entry(&mut self.archive, &name, MAX_PICKLE_BYTES, self.file_len)?;
        Ok(pickle::unpickle(&pkl, Limits::for_len(pkl.len()))?.0)
    }

    /// The declared size in bytes of storage `key`.
    pub(super) fn storage_size(&mut self, key: &str) -> PthResult<u64> {
        let entry = format!("{}data/{key}", self.prefix);
        let f = self.archive.by_name(&entry).map_err(|e| PthError::BadStorage {
            key: key.to_string(),
            what: format!("missing from the archive ({e})"),
        })?;
        Ok(f.size())
    }

    /// The first `needed` bytes of storage `key`.
    pub(super) fn read_storage(&mut self, key: &str, needed: u64) -> PthResult<Vec<u8>> {
        let name = format!("{}data/{key}", self.prefix);
        read_storage(&mut self.archive, &name, needed, self.file_len, key)
    }
}

/// Reads a whole small archive member, refusing more than `max` bytes.
fn read_entry<R: Read + Seek>(
    archive: &mut ::zip::ZipArchive<R>,
    name: &str,
    max: u64,
    file_len: u64,
) -> PthResult<Vec<u8>> {
    let f = archive
        .by_name(name)
        .map_err(|e| PthError::Zip(format!("{name}: {e}")))?;
    check_ratio(&f, f.size(), file_len, name)?;
    if f.size() > max {
        return Err(PthError::Zip(format!(
            "{name} is {} bytes (limit {max})",
            f.size()
        )));
    }
    let mut out = Vec::new();
    // `take` bounds the read even if the declared size lies; the vector grows with real data.
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| PthError::Zip(format!("{name}: {e}")))?;
    if out.len() as u64 > max {
        return Err(PthError::Zip(format!("{name} exceeds {max} bytes")));
    }
    Ok(out)
}

/// Reads the first `needed` bytes of a storage member.
fn read_storage<R: Read + Seek>(
    archive: &mut ::zip::ZipArchive<R>,
    name: &str,
    needed: u64,
    file_len: u64,
    key: &str,
) -> PthResult<Vec<u8>> {
    let f = archive.by_name(name).map_err(|e| PthError::BadStorage {
        key: key.into(),
        what: format!("missing from the archive ({e})"),
    })?;
    check_ratio(&f, needed, file_len, name)?;
    // A stored member's bytes are in the file (check_ratio): reserving them is justified. A
    // compressed one grows with the data actually inflated.
    let mut out = if f.compression() == ::zip::CompressionMethod::Stored {
        Vec::with_capacity(needed as usize)
    } else {
        Vec::new()
    };
    f.take(needed)
        .read_to_end(&mut out)
        .map_err(|e| PthError::BadStorage {
            key: key.into(),
            what: format!("cannot be read ({e})"),
        })?;
    if (out.len() as u64) < needed {
        return Err(PthError::BadStorage {
            key: key.into(),
            what: format!("holds {} bytes, {needed} needed", out.len()),
        });
    }
    Ok(out)
}

/// Refuses members whose data could not have come from a file of `file_len` bytes.
fn check_ratio<R: Read>(
    f: &::zip::read::ZipFile<'_, R>,
    wanted: u64,
    file_len: u64,
    name: &str,
) -> PthResult<()> {
    let packed = f.compressed_size();
    if packed > file_len || wanted > max_member_size(packed, f.compression(), file_len) {
        return Err(PthError::Zip(format!(
            "{name} declares more data ({wanted} bytes from {packed} stored) than the {file_len}-byte file holds"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    #[test]
    fn deflate_reaches_but_never_passes_the_ratio_bound() {
        // 64 MiB of zeros, deflated at the highest level: the best case for deflate.
        let data = vec![0u8; 64 << 20];
        let mut w = ::zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = ::zip::write::SimpleFileOptions::default()
            .compression_method(::zip::CompressionMethod::Deflated)
            .compression_level(Some(9))
            .large_file(true);
        w.start_file("zeros", opts).unwrap();
        w.write_all(&data).unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let mut archive = ::zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
        let f = archive.by_name("zeros").unwrap();
        let bound = max_member_size(f.compressed_size(), f.compression(), bytes.len() as u64);
        let ratio = f.size() as f64 / f.compressed_size() as f64;
        assert!(
            f.size() <= bound,
            "{} bytes from {}",
            f.size(),
            f.compressed_size()
        );
        assert!(ratio > 1000.0, "ratio {ratio}");
        assert_eq!(max_member_size(10, ::zip::CompressionMethod::Stored, 100), 10);
        assert_eq!(max_member_size(1000, ::zip::CompressionMethod::Stored, 100), 100);
    }
}
