//! Reader for the IDX format of MNIST and Fashion-MNIST, gzip-compressed (`.gz`) or plain.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (`0x08` = unsigned byte, the
//! only type these data sets use), the number of dimensions `k` — then `k` big-endian `u32`
//! sizes, then `prod(sizes)` bytes in row-major order. Image files have `k = 3`
//! (`count × rows × cols`), label files `k = 1`.
//!
//! The reader never trusts the header for allocation: the payload is read through a reader capped
//! at the announced size plus one byte, so memory grows only with bytes actually present, and the
//! length is then checked to be exactly the announced size.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::error::DataError;

/// An unsigned-byte IDX array: its dimensions and its row-major bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an unsigned-byte IDX file with `ndims` dimensions; a name ending in `.gz` is
/// decompressed on the fly.
pub fn read_idx(path: &Path, ndims: usize) -> Result<IdxArray, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let gz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let mut reader: Box<dyn Read> = if gz {
        Box::new(GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let io = |e: std::io::Error| {
        if gz && e.kind() != std::io::ErrorKind::UnexpectedEof {
            DataError::format(path, format!("not a valid gzip stream ({e})"))
        } else {
            DataError::io(path, e)
        }
    };
    let mut magic = [0u8; 4];
    read_exact_or(&mut reader, &mut magic, path, "the 4-byte IDX magic number").map_err(|e| e.or_io(&io))?;
    if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] as usize != ndims {
        return Err(DataError::format(
            path,
            format!(
                "wrong IDX magic number {:02x}{:02x}{:02x}{:02x}, expected 000008{:02x} (unsigned bytes, {ndims} dimensions)",
                magic[0], magic[1], magic[2], magic[3], ndims
            ),
        ));
    }
    let mut dims = Vec::with_capacity(ndims);
    for _ in 0..ndims {
        let mut b = [0u8; 4];
        read_exact_or(&mut reader, &mut b, path, "the IDX dimension sizes").map_err(|e| e.or_io(&io))?;
        dims.push(u32::from_be_bytes(b) as usize);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("IDX dimensions {dims:?} overflow")))?;
    if !gz {
        // A plain file's length is known: reject a header that promises more than is there before
        // reading anything.
        let len = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?.len();
        let header = 4 + 4 * ndims as u64;
        if len.saturating_sub(header) != expected as u64 {
            return Err(DataError::format(
                path,
                format!(
                    "IDX header announces {dims:?} = {expected} bytes of data but the file holds {}",
                    len.saturating_sub(header)
                ),
            ));
        }
    }
    let mut data = Vec::new();
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(io)?;
    if data.len() != expected {
        let what = if data.len() < expected {
            "truncated"
        } else {
            "has trailing data"
        };
        return Err(DataError::format(
            path,
            format!(
                "file {what}: IDX header announces {dims:?} = {expected} bytes of data, found {}{}",
                data.len().min(expected),
                if data.len() > expected { "+" } else { "" }
            ),
        ));
    }
    Ok(IdxArray { dims, data })
}

/// A short read of a fixed-size header part is a format error (truncated file), any other I/O
/// failure is passed on.
enum HeaderErr {
    Short(DataError),
    Io(std::io::Error),
}

impl HeaderErr {
    fn or_io(self, io: &impl Fn(std::io::Error) -> DataError) -> DataError {
        match self {
            HeaderErr::Short(e) => e,
            HeaderErr::Io(e) => io(e),
        }
    }
}

fn read_exact_or(r: &mut dyn Read, buf: &mut [u8], path: &Path, what: &str) -> Result<(), HeaderErr> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HeaderErr::Short(DataError::format(
            path,
            format!("file truncated inside {what}"),
        ))),
        Err(e) => Err(HeaderErr::Io(e)),
    }
}

/// Finds `stem` (e.g. `train-images-idx3-ubyte`) in `dir` as `stem.gz` or `stem`, also under the
/// dotted spelling some mirrors use (`train-images.idx3-ubyte`).
pub fn find_idx_file(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    for s in [stem, dotted.as_str()] {
        for ext in [".gz", ""] {
            let p = dir.join(format!("{s}{ext}"));
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(DataError::NotFound {
        what: "IDX file".into(),
        path: dir.join(format!("{stem}.gz")),
        hint: format!(
            "the directory must hold {stem}.gz or {stem} (train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte)"
        ),
    })
}

/// One IDX split (`prefix` = `train` or `t10k`): images `count × rows × cols` and their labels,
/// checked to agree in count and to lie below `classes`.
pub struct IdxSplit {
    pub rows: usize,
    pub cols: usize,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

/// Reads `{prefix}-images-idx3-ubyte[.gz]` and `{prefix}-labels-idx1-ubyte[.gz]` from `dir`.
pub fn read_idx_split(dir: &Path, prefix: &str, classes: usize) -> Result<IdxSplit, DataError> {
    let ip = find_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&ip, 3)?;
    let labels = read_idx(&lp, 1)?;
    let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    if n != labels.dims[0] {
        return Err(DataError::format(
            &lp,
            format!(
                "{} labels but {} holds {n} images; the two files must come from the same split",
                labels.dims[0],
                ip.display()
            ),
        ));
    }
    if n == 0 || rows == 0 || cols == 0 {
        return Err(DataError::format(
            &ip,
            format!("empty image array {:?}", images.dims),
        ));
    }
    if let Some(pos) = labels.data.iter().position(|&l| l as usize >= classes) {
        return Err(DataError::format(
            &lp,
            format!(
                "label {} at index {pos} is outside 0..{classes}",
                labels.data[pos]
            ),
        ));
    }
    Ok(IdxSplit {
        rows,
        cols,
        images: images.data,
        labels: labels.data,
    })
}
