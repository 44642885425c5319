//! `.npy` files: one array, read in full ([`read`]) or up to the end of its header
//! ([`header_info`]), and written atomically ([`write_npy`]).
//!
//! Supported element types are little- and big-endian `f2`, `f4` and `f8`, in C or Fortran
//! order; anything else (integers, pickled objects `|O`) is reported as unsupported without
//! being decoded. The header is parsed by `ndarray-npy`.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use ndarray_npy::npy::header::{Header, Layout};

use super::{
    AnyTensor, DType, IoError, IoResult, NamedTensor, TensorInfo, checked_len, corrupt, decode, write_atomic,
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

/// Parses the header of a `.npy` stream of at most `available` bytes; the header and the number
/// of bytes it took (where the data starts).
///
/// The preamble is read here first: 6 magic bytes `\x93NUMPY`, the major and minor version, then
/// the header length (`u16` little-endian in version 1, `u32` in versions 2 and 3). The length
/// must fit both [`NPY_MAX_HEADER_LEN`] and the bytes left in the stream, so a corrupt length
/// never makes the header parser allocate more than the file justifies. The checked preamble
/// and the rest of the stream then go to `ndarray-npy`'s parser.
fn read_header<R: Read>(reader: &mut R, available: u64, path: &Path, what: &str) -> IoResult<(Header, u64)> {
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
    let header =
        Header::from_reader(&mut pre.as_slice().chain(reader)).map_err(|e| bad(one_line(&e.to_string())))?;
    Ok((header, pre.len() as u64 + header_len))
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
    let (header, _) = read_header(reader, available, path, what)?;
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

/// A `$t` from its bytes in the file's byte order (`$big`: big-endian).
macro_rules! from_bytes {
    ($t:ty, $big:expr) => {
        move |c| {
            if $big {
                <$t>::from_be_bytes(c)
            } else {
                <$t>::from_le_bytes(c)
            }
        }
    };
}

/// Reads the array of a `.npy` file (not yet checked finite: see [`super::read_tensor`]).
///
/// The header is parsed first and the data's size checked against the file's length; the data
/// then goes from the file into the array's own buffer a chunk at a time (converted from its
/// byte order, `f16` widened to `f32`, Fortran order placed in C order), so the array is the
/// only full-size allocation.
pub fn read(path: &Path) -> IoResult<NamedTensor> {
    let read_err = |source| IoError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut reader = BufReader::new(file);
    let (header, header_bytes) = read_header(&mut reader, len, path, "array")?;
    let descr = descr_of(&header);
    let Some((dtype, big)) = dtype_of(&descr) else {
        return Err(IoError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: String::new(),
            dtype: descr,
        });
    };
    let shape = header.shape;
    check_data_len(&shape, dtype, len - header_bytes, path, "array")?;
    let fortran = header.layout == Layout::Fortran;
    let data = (|| -> std::io::Result<AnyTensor> {
        let r = &mut reader;
        Ok(match dtype {
            DType::F64 => AnyTensor::F64(stream(r, &shape, fortran, from_bytes!(f64, big))?),
            DType::F32 => AnyTensor::F32(stream(r, &shape, fortran, from_bytes!(f32, big))?),
            DType::F16 => {
                let bits = from_bytes!(u16, big);
                AnyTensor::F32(stream(r, &shape, fortran, |c| f16::from_bits(bits(c)).to_f32())?)
            }
            DType::BF16 => {
                let bits = from_bytes!(u16, big);
                AnyTensor::F32(stream(r, &shape, fortran, |c| bf16::from_bits(bits(c)).to_f32())?)
            }
        })
    })()
    .map_err(|e| corrupt(path, format!("array: data cannot be read ({e})")))?;
    Ok(NamedTensor {
        name: String::new(),
        dtype,
        data,
    })
}

/// Bytes read from the file at a time by [`read`].
const CHUNK: usize = 1 << 16;

/// Reads the elements of an array of `shape` (each `N` bytes, converted by `convert`) from `r`
/// into one C-order array: `Fortran`-ordered data is placed at its C-order position as it comes.
fn stream<T: Copy + Default, const N: usize, R: Read>(
    r: &mut R,
    shape: &[usize],
    fortran: bool,
    convert: impl Fn([u8; N]) -> T,
) -> std::io::Result<ArrayD<T>> {
    let count: usize = shape.iter().product();
    let mut chunk = vec![0u8; CHUNK - CHUNK % N];
    let mut out: Vec<T> = if fortran {
        vec![T::default(); count]
    } else {
        Vec::with_capacity(count)
    };
    let mut place = FortranToC::new(shape);
    let mut left = count;
    while left > 0 {
        let k = left.min(chunk.len() / N);
        let bytes = &mut chunk[..k * N];
        r.read_exact(bytes)?;
        let values = bytes
            .chunks_exact(N)
            .map(|c| convert(c.try_into().expect("exact chunks of N bytes")));
        if fortran {
            for v in values {
                out[place.next()] = v;
            }
        } else {
            out.extend(values);
        }
        left -= k;
    }
    let mut probe = [0u8; 1];
    if r.read(&mut probe)? != 0 {
        return Err(std::io::Error::other("the file grew while it was read"));
    }
    Ok(ArrayD::from_shape_vec(IxDyn(shape), out).expect("count is the shape's product"))
}

/// C-order positions of the elements of an array listed in Fortran order (first axis fastest).
struct FortranToC {
    shape: Vec<usize>,
    /// C-order stride of each axis.
    strides: Vec<usize>,
    index: Vec<usize>,
    at: usize,
}

impl FortranToC {
    fn new(shape: &[usize]) -> Self {
        let mut strides = vec![1; shape.len()];
        for ax in (0..shape.len().saturating_sub(1)).rev() {
            strides[ax] = strides[ax + 1] * shape[ax + 1];
        }
        FortranToC {
            shape: shape.to_vec(),
            strides,
            index: vec![0; shape.len()],
            at: 0,
        }
    }

    /// The position of the next element.
    fn next(&mut self) -> usize {
        let here = self.at;
        for ax in 0..self.shape.len() {
            self.index[ax] += 1;
            self.at += self.strides[ax];
            if self.index[ax] < self.shape[ax] {
                break;
            }
            self.at -= self.strides[ax] * self.shape[ax];
            self.index[ax] = 0;
        }
        here
    }
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
    let (header, _) = read_header(&mut rest, bytes.len() as u64, path, what)?;
    let descr = descr_of(&header);
    let dtype = dtype_of(&descr);
    if let Some((dt, _)) = dtype {
        check_data_len(&header.shape, dt, rest.len() as u64, path, what)?;
    }
    Ok(NpyParts {
        descr,
        dtype,
        shape: header.shape,
        fortran: header.layout == Layout::Fortran,
        data: rest,
    })
}

/// Checks that `available` bytes of data are exactly the size of `shape` elements of `dtype`.
fn check_data_len(shape: &[usize], dtype: DType, available: u64, path: &Path, what: &str) -> IoResult<()> {
    let n = checked_len(shape)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| corrupt(path, format!("{what}: shape {shape:?} overflows")))? as u64;
    if available < n {
        return Err(corrupt(
            path,
            format!(
                "{what}: header describes shape {shape:?} ({n} bytes of data) but only {available} bytes follow"
            ),
        ));
    }
    if available > n {
        return Err(corrupt(
            path,
            format!("{what}: {} unexpected bytes after the data", available - n),
        ));
    }
    Ok(())
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
