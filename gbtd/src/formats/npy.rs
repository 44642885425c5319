//! `.npy` files: one array, read in full ([`read`]) or up to the end of its header
//! ([`header_info`]), and written atomically ([`write_npy`]).
//!
//! Supported element types are little- and big-endian `f2`, `f4` and `f8`, in C or Fortran
//! order; anything else (integers, pickled objects `|O`) is reported as unsupported without
//! being decoded. The header is parsed by `ndarray-npy`.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::WriteNpyExt;
use ndarray_npy::npy::header::{Header, Layout};

use super::{
    DType, IoError, IoResult, NamedTensor, TensorInfo, checked_len, corrupt, decode, read_bytes, write_atomic,
};
use crate::error::one_line;
use crate::real::Real;

/// The element type and byte order (`true` for big-endian) of a `.npy` descriptor, if readable.
fn dtype_of(descr: &str) -> Option<(DType, bool)> {
    match descr {
        "<f8" => Some((DType::F64, false)),
        ">f8" => Some((DType::F64, true)),
        "<f4" => Some((DType::F32, false)),
        ">f4" => Some((DType::F32, true)),
        "<f2" => Some((DType::F16, false)),
        ">f2" => Some((DType::F16, true)),
        _ => None,
    }
}

/// The descriptor string of a parsed header (its display form quotes strings: `'<f8'`).
fn descr_of(header: &Header) -> String {
    let descr = header.type_descriptor.to_string();
    descr.trim_matches(|c| c == '\'' || c == '"').to_string()
}

/// Largest `.npy` header text accepted, in bytes. numpy itself refuses headers over 10,000
/// bytes unless told otherwise; a header this long would describe an array of thousands of
/// dimensions.
pub const NPY_MAX_HEADER_LEN: u64 = 1 << 16;

/// Parses the header of a `.npy` stream of at most `available` bytes.
///
/// The preamble is read here first: 6 magic bytes `\x93NUMPY`, the major and minor version, then
/// the header length (`u16` little-endian in version 1, `u32` in versions 2 and 3). The length
/// must fit both [`NPY_MAX_HEADER_LEN`] and the bytes left in the stream, so a corrupt length
/// never makes the header parser allocate more than the file justifies. The checked preamble
/// and the rest of the stream then go to `ndarray-npy`'s parser.
fn read_header<R: Read>(reader: &mut R, available: u64, path: &Path, what: &str) -> IoResult<Header> {
    let bad = |msg: String| corrupt(path, format!("{what}: bad .npy header: {msg}"));
    let mut pre = vec![0u8; 10];
    reader
        .read_exact(&mut pre)
        .map_err(|_| bad("shorter than the 10-byte .npy preamble".into()))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad(
            "missing the \\x93NUMPY magic string (not a .npy file?)".into()
        ));
    }
    let header_len = match pre[6] {
        1 => u64::from(u16::from_le_bytes([pre[8], pre[9]])),
        2 | 3 => {
            let mut more = [0u8; 2];
            reader
                .read_exact(&mut more)
                .map_err(|_| bad("truncated inside the preamble".into()))?;
            pre.extend_from_slice(&more);
            u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]))
        }
        v => {
            return Err(bad(format!(
                "unsupported format version {v}.{} (expected 1, 2 or 3)",
                pre[7]
            )));
        }
    };
    let left = available.saturating_sub(pre.len() as u64);
    if header_len > left || header_len > NPY_MAX_HEADER_LEN {
        return Err(bad(format!(
            "declares a {header_len}-byte header but {left} bytes follow the preamble (at most {NPY_MAX_HEADER_LEN} accepted)"
        )));
    }
    Header::from_reader(&mut pre.as_slice().chain(reader)).map_err(|e| bad(one_line(&e.to_string())))
}

/// Name, dtype and shape of a `.npy` stream of at most `available` bytes from its header alone
/// (`what` names it in errors).
pub(crate) fn header_info_from<R: Read>(
    reader: &mut R,
    available: u64,
    path: &Path,
    what: &str,
    name: &str,
) -> IoResult<TensorInfo> {
    let header = read_header(reader, available, path, what)?;
    let descr = descr_of(&header);
    Ok(TensorInfo {
        name: name.to_string(),
        readable: dtype_of(&descr).is_some(),
        dtype: descr,
        shape: header.shape,
    })
}

/// Name (empty), dtype and shape of a `.npy` file, reading only its header.
pub fn header_info(path: &Path) -> IoResult<TensorInfo> {
    let read_err = |source| IoError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    header_info_from(&mut BufReader::new(file), len, path, "array", "")
}

/// Reads the array of a `.npy` file (not yet checked finite: see [`super::read_tensor`]).
pub fn read(path: &Path) -> IoResult<NamedTensor> {
    let bytes = read_bytes(path)?;
    let parts = parse_npy(&bytes, path, "array")?;
    npy_to_tensor(parts, path, "")
}

/// A parsed `.npy` header and the data bytes after it.
pub(crate) struct NpyParts<'a> {
    pub(crate) descr: String,
    pub(crate) dtype: Option<(DType, bool)>,
    pub(crate) shape: Vec<usize>,
    pub(crate) fortran: bool,
    pub(crate) data: &'a [u8],
}

/// Parses an `.npy` byte buffer's header (magic, version, dictionary) and checks that the data
/// that follows has exactly the size the header describes (for supported dtypes).
pub(crate) fn parse_npy<'a>(bytes: &'a [u8], path: &Path, what: &str) -> IoResult<NpyParts<'a>> {
    let mut rest = bytes;
    let header = read_header(&mut rest, bytes.len() as u64, path, what)?;
    let descr = descr_of(&header);
    let dtype = dtype_of(&descr);
    if let Some((dt, _)) = dtype {
        let n = checked_len(&header.shape)
            .and_then(|n| n.checked_mul(dt.size()))
            .ok_or_else(|| corrupt(path, format!("{what}: shape {:?} overflows", header.shape)))?;
        if rest.len() < n {
            return Err(corrupt(
                path,
                format!(
                    "{what}: header describes shape {:?} ({n} bytes of data) but only {} bytes follow",
                    header.shape,
                    rest.len()
                ),
            ));
        }
        if rest.len() > n {
            return Err(corrupt(
                path,
                format!("{what}: {} unexpected bytes after the data", rest.len() - n),
            ));
        }
    }
    Ok(NpyParts {
        descr,
        dtype,
        shape: header.shape,
        fortran: header.layout == Layout::Fortran,
        data: rest,
    })
}

pub(crate) fn npy_to_tensor(parts: NpyParts<'_>, path: &Path, name: &str) -> IoResult<NamedTensor> {
    let Some((dtype, big)) = parts.dtype else {
        return Err(IoError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: parts.descr,
        });
    };
    let data = decode(parts.data, dtype, big, &parts.shape, parts.fortran).ok_or_else(|| {
        corrupt(
            path,
            format!("'{name}': data size does not match shape {:?}", parts.shape),
        )
    })?;
    Ok(NamedTensor {
        name: name.to_string(),
        dtype,
        data,
    })
}

/// Writes `x` as an `.npy` file (`<f4` for `f32`, `<f8` for `f64`, C order), atomically.
pub fn write_npy<T: Real>(path: &Path, x: &ArrayD<T>) -> IoResult<()> {
    let to_io = |e: ndarray_npy::WriteNpyError| std::io::Error::other(e.to_string());
    if DType::of::<T>() == DType::F32 {
        let a = x.mapv(|v| v.to_f64_exact() as f32);
        write_atomic(path, |w| a.write_npy(w).map_err(to_io))
    } else {
        let a = x.mapv(|v| v.to_f64_exact());
        write_atomic(path, |w| a.write_npy(w).map_err(to_io))
    }
}
