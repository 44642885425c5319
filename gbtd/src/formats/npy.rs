//! `.npy` files: one array, read in full ([`read`]) or up to the end of its header
//! ([`header_info`]), and written atomically ([`write_npy`]).
//!
//! Supported element types are little- and big-endian `f2`, `f4` and `f8`, in C or Fortran
//! order; anything else (integers, pickled objects `|O`) is reported as unsupported without
//! being decoded. The header is parsed by `ndarray-npy`.
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::WriteNpyExt;
use ndarray_npy::npy::header::{Header, Layout};

use super::{
    DType, IoError, IoResult, NamedTensor, TensorInfo, checked_len, corrupt, decode, read_bytes, write_atomic,
};
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

/// Name, dtype and shape of a `.npy` stream from its header alone (`what` names it in errors).
pub(crate) fn header_info_from<R: std::io::Read>(
    reader: &mut R,
    path: &Path,
    what: &str,
    name: &str,
) -> IoResult<TensorInfo> {
    let header =
        Header::from_reader(reader).map_err(|e| corrupt(path, format!("{what}: bad .npy header: {e}")))?;
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
    let file = File::open(path).map_err(|source| IoError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    header_info_from(&mut BufReader::new(file), path, "array", "")
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
    let header =
        Header::from_reader(&mut rest).map_err(|e| corrupt(path, format!("{what}: bad .npy header: {e}")))?;
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
