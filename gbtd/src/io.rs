//! Reading tensors from `.npy`, `.npz` and `.safetensors` files, and writing `.npy` tensors and
//! factor files, atomically.
//!
//! # Reading
//! [`read_tensor`] loads one floating-point tensor, chosen by name where the file holds several:
//! - `.npy`: the single array of the file (no name; little- or big-endian `f2`, `f4`, `f8`, C or
//!   Fortran order).
//! - `.npz` (`numpy.savez`, compressed or not): the member called `NAME` (or `NAME.npy`); a file
//!   holding a single array needs no name.
//! - `.safetensors`: the tensor called `NAME` (`F64`, `F32`, `F16` or `BF16`); a file holding a
//!   single tensor needs no name.
//!
//! `f64` data loads as `f64`, `f32`, `f16` and `bf16` data as `f32` ([`AnyTensor`]). A missing name
//! is an error that lists the names the file holds. Every loaded tensor is checked to be
//! non-empty and finite (a NaN or infinity is an error, [`GbtdError::NonFinite`]).
//!
//! Files are parsed, never executed: pickled object arrays (`.npy` descriptor `|O`) are rejected
//! as an unsupported dtype. Before any data is decoded the size the header promises is checked
//! against the bytes present, so a corrupt or truncated file gives [`IoError::Corrupt`] rather
//! than an attempt to allocate what a broken header claims.
//!
//! # Writing
//! Every file is written atomically: into a temporary file in the destination's directory,
//! flushed and synced, then renamed over the destination. On any error the temporary file is
//! removed and the destination is left as it was, so no partial output ever appears.
//!
//! # Factor files
//! [`write_factors`] stores a decomposition ([`Decomposition`]: Tucker, Tucker-2, CP or BTD) in a
//! `.safetensors` file that [`read_factors`] turns back into the same decomposition, so that the
//! tensor can be rebuilt (`gbtd reconstruct`). The layout, version 1:
//!
//! | method | tensors (shapes for an input of shape `d_0 × … × d_{N-1}`) |
//! | --- | --- |
//! | `tucker`, `tucker2` | `core` (`r_m` on each factorized mode `m`, `d_m` elsewhere); `factor.{m}` (`d_m × r_m`) for each factorized mode `m` |
//! | `cp` | `weights` (`R`); `factor.{m}` (`d_m × R`) for every mode `m` |
//! | `btd` | for each term `t < R`: `term.{t}.core` and `term.{t}.factor.{m}`, as for Tucker |
//!
//! Factor names carry the tensor **mode** they multiply (`factor.1` multiplies mode 1), not the
//! position in the rank list. All tensors share one dtype (`F32` or `F64`, that of the
//! computation). The safetensors `__metadata__` holds, as strings:
//!
//! | key | value |
//! | --- | --- |
//! | `format` | `gbtd.factors` |
//! | `format_version` | `1` |
//! | `method` | `tucker`, `tucker2`, `cp` or `btd` |
//! | `shape` | JSON list, the shape of the decomposed tensor, e.g. `[512,512,3,3]` |
//! | `modes` | JSON list of the factorized modes, e.g. `[0,1]` (all modes for `cp`) |
//! | `ranks` | JSON list of the ranks, one per factorized mode (`[R]` for `cp`) |
//! | `terms` | number of terms: `R` for `btd` and `cp`, `1` for Tucker |
//! | `dtype` | `F32` or `F64` |
//!
//! plus free-form informational keys (see [`FactorsFile::info`]) such as `rel_error`,
//! `iterations`, `source`. [`read_factors`] checks the metadata against the tensors present
//! (names, shapes, finiteness) before rebuilding anything.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::WriteNpyExt;
use ndarray_npy::npy::header::{Header, Layout};
use safetensors::{Dtype, SafeTensors};
use thiserror::Error;

use crate::btd::{BlockTerm, Btd};
use crate::cp::Cp;
use crate::error::GbtdError;
use crate::options::Convergence;
use crate::real::Real;
use crate::tensor::validate_tensor;
use crate::tucker::Tucker;

/// Errors of reading and writing tensor files.
#[derive(Debug, Error)]
pub enum IoError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file could not be written (nothing was left at the destination).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The destination.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file name has none of the supported extensions.
    #[error("{}: unknown file type; expected {expected}", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The extensions accepted here.
        expected: &'static str,
    },
    /// The file is not a valid file of its format, or is truncated.
    #[error("{}: corrupt or truncated file: {msg}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The tensor is stored with an element type this crate does not read.
    #[error(
        "{}: tensor '{name}' has dtype {dtype}, which is not supported (use float64, float32, float16 or bfloat16)",
        path.display()
    )]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The dtype as the file names it.
        dtype: String,
    },
    /// No tensor of that name is in the file.
    #[error("{}: no tensor named '{name}'; the file holds: {available}", path.display())]
    TensorNotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The names present (abbreviated when there are many).
        available: String,
    },
    /// The file holds several tensors and none was named.
    #[error("{}: holds {count} tensors, name the one to use; the file holds: {available}", path.display())]
    NameRequired {
        /// The file.
        path: PathBuf,
        /// How many tensors the file holds.
        count: usize,
        /// The names present (abbreviated when there are many).
        available: String,
    },
    /// A name was given for a format that holds a single unnamed array.
    #[error("{}: a .npy file holds one unnamed array; do not name a tensor", path.display())]
    NameNotApplicable {
        /// The file.
        path: PathBuf,
    },
    /// The file is a valid safetensors file but not a valid `gbtd` factors file.
    #[error("{}: not a valid gbtd factors file: {msg}", path.display())]
    Factors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The tensor's values or shape are unusable (NaN, infinity, empty), or a rebuild failed.
    #[error("{}: {source}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: GbtdError,
    },
}

/// Result alias of this module.
pub type IoResult<T> = std::result::Result<T, IoError>;

/// The file formats read by [`read_tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// NumPy `.npy`: one array.
    Npy,
    /// NumPy `.npz`: a zip archive of named `.npy` arrays.
    Npz,
    /// Hugging Face `.safetensors`: named tensors and string metadata.
    Safetensors,
}

impl Format {
    /// The format given by the path's extension (case-insensitive).
    pub fn from_path(path: &Path) -> IoResult<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("npy") => Ok(Format::Npy),
            Some("npz") => Ok(Format::Npz),
            Some("safetensors") => Ok(Format::Safetensors),
            _ => Err(IoError::UnknownFormat {
                path: path.to_path_buf(),
                expected: ".npy, .npz or .safetensors",
            }),
        }
    }
}

/// Element type of a tensor as stored in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the upper half of an `f32`).
    BF16,
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    /// The storage type matching the computation type `T` (`F32` for `f32`, `F64` for `f64`).
    pub fn of<T: Real>() -> DType {
        if std::mem::size_of::<T>() == 4 {
            DType::F32
        } else {
            DType::F64
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        })
    }
}

/// A loaded tensor in the precision it was stored with (`f16`/`bf16` widened to `f32`).
#[derive(Debug, Clone, PartialEq)]
pub enum AnyTensor {
    /// Single precision (stored as `f32`, `f16` or `bf16`).
    F32(ArrayD<f32>),
    /// Double precision.
    F64(ArrayD<f64>),
}

impl AnyTensor {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            AnyTensor::F32(a) => a.shape(),
            AnyTensor::F64(a) => a.shape(),
        }
    }

    /// The tensor converted to `T` (exact when widening, rounded when narrowing `f64` to `f32`).
    pub fn to_real<T: Real>(&self) -> ArrayD<T> {
        match self {
            AnyTensor::F32(a) => a.mapv(|v| T::from_f64_lossy(v as f64)),
            AnyTensor::F64(a) => a.mapv(T::from_f64_lossy),
        }
    }
}

/// A tensor read from a file: its name (empty for `.npy`), stored dtype and values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The name in the file (empty for a `.npy` file).
    pub name: String,
    /// The element type in the file.
    pub dtype: DType,
    /// The values, checked finite and non-empty.
    pub data: AnyTensor,
}

/// Shape and dtype of one tensor in a file, as listed by [`list_tensors`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The name in the file (empty for a `.npy` file).
    pub name: String,
    /// The dtype as the file names it (`<f8`, `F32`, ...), readable or not.
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// Whether [`read_tensor`] can load it (a floating-point dtype it decodes).
    pub readable: bool,
}

fn read_bytes(path: &Path) -> IoResult<Vec<u8>> {
    std::fs::read(path).map_err(|source| IoError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn corrupt(path: &Path, msg: impl Into<String>) -> IoError {
    IoError::Corrupt {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Names joined for an error message: all of them up to 16, otherwise the first 16 and a count.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 16;
    if names.is_empty() {
        return "(no tensors)".into();
    }
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(
            ", ... and {} more (list them with `gbtd info`)",
            names.len() - SHOWN
        ));
    }
    s
}

/// Number of elements of `shape`, or `None` on overflow.
fn checked_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

// ---------------------------------------------------------------------------------------------
// Element decoding
// ---------------------------------------------------------------------------------------------

/// Converts IEEE 754 binary16 bits to `f32` (exactly: every `f16` value is an `f32` value).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m · 2^-24; normalise the mantissa.
            let mut e: i32 = -14;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            let m = m & 0x3ff;
            sign | (((e + 127) as u32) << 23) | (m << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Converts bfloat16 bits (the upper 16 bits of an `f32`) to `f32`.
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Decodes `bytes` (a whole number of elements of `dtype`) into a tensor of `shape` (standard
/// layout); `None` when the byte count does not match the shape.
fn decode(bytes: &[u8], dtype: DType, big_endian: bool, shape: &[usize], fortran: bool) -> Option<AnyTensor> {
    if checked_len(shape)?.checked_mul(dtype.size())? != bytes.len() {
        return None;
    }
    let two = |c: &[u8]| {
        let a = [c[0], c[1]];
        if big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    };
    fn build<A: Clone>(shape: &[usize], fortran: bool, v: Vec<A>) -> Option<ArrayD<A>> {
        let a = ArrayD::from_shape_vec(IxDyn(shape).set_f(fortran), v).ok()?;
        Some(if fortran {
            a.as_standard_layout().into_owned()
        } else {
            a
        })
    }
    Some(match dtype {
        DType::F64 => {
            let v: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|c| {
                    let a = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                    if big_endian {
                        f64::from_be_bytes(a)
                    } else {
                        f64::from_le_bytes(a)
                    }
                })
                .collect();
            AnyTensor::F64(build(shape, fortran, v)?)
        }
        DType::F32 => {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| {
                    let a = [c[0], c[1], c[2], c[3]];
                    if big_endian {
                        f32::from_be_bytes(a)
                    } else {
                        f32::from_le_bytes(a)
                    }
                })
                .collect();
            AnyTensor::F32(build(shape, fortran, v)?)
        }
        DType::F16 => {
            let v: Vec<f32> = bytes.chunks_exact(2).map(|c| f16_bits_to_f32(two(c))).collect();
            AnyTensor::F32(build(shape, fortran, v)?)
        }
        DType::BF16 => {
            let v: Vec<f32> = bytes.chunks_exact(2).map(|c| bf16_bits_to_f32(two(c))).collect();
            AnyTensor::F32(build(shape, fortran, v)?)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// .npy / .npz
// ---------------------------------------------------------------------------------------------

/// A parsed `.npy` header and the data bytes after it.
struct NpyParts<'a> {
    descr: String,
    dtype: Option<(DType, bool)>,
    shape: Vec<usize>,
    fortran: bool,
    data: &'a [u8],
}

/// Parses an `.npy` byte buffer's header (magic, version, dictionary) and checks that the data
/// that follows has exactly the size the header describes (for supported dtypes).
fn parse_npy<'a>(bytes: &'a [u8], path: &Path, what: &str) -> IoResult<NpyParts<'a>> {
    let mut rest = bytes;
    let header =
        Header::from_reader(&mut rest).map_err(|e| corrupt(path, format!("{what}: bad .npy header: {e}")))?;
    // The descriptor is a Python literal; its display form quotes strings: '<f8'.
    let descr = header.type_descriptor.to_string();
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    let dtype = match descr.as_str() {
        "<f8" => Some((DType::F64, false)),
        ">f8" => Some((DType::F64, true)),
        "<f4" => Some((DType::F32, false)),
        ">f4" => Some((DType::F32, true)),
        "<f2" => Some((DType::F16, false)),
        ">f2" => Some((DType::F16, true)),
        _ => None,
    };
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

fn npy_to_tensor(parts: NpyParts<'_>, path: &Path, name: &str) -> IoResult<NamedTensor> {
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

/// Upper bound on the bytes read from one `.npz` member (and on its declared size): 64 GiB.
const NPZ_MEMBER_LIMIT: u64 = 64 << 30;

type Zip = zip::ZipArchive<std::io::Cursor<Vec<u8>>>;

fn open_npz(path: &Path) -> IoResult<Zip> {
    let bytes = read_bytes(path)?;
    zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| corrupt(path, format!("not a readable .npz (zip) archive: {e}")))
}

/// The array names of an `.npz` archive (member names without their `.npy` suffix), in archive
/// order.
fn npz_names(zip: &Zip) -> Vec<String> {
    (0..zip.len())
        .filter_map(|i| zip.name_for_index(i))
        .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
        .collect()
}

fn npz_member_bytes(zip: &mut Zip, index: usize, path: &Path, name: &str) -> IoResult<Vec<u8>> {
    let mut f = zip
        .by_index(index)
        .map_err(|e| corrupt(path, format!("member '{name}': {e}")))?;
    let declared = f.size();
    if declared > NPZ_MEMBER_LIMIT {
        return Err(corrupt(
            path,
            format!("member '{name}' declares {declared} bytes"),
        ));
    }
    let mut out = Vec::with_capacity(declared.min(64 << 20) as usize);
    (&mut f)
        .take(NPZ_MEMBER_LIMIT)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(path, format!("member '{name}': {e}")))?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// .safetensors
// ---------------------------------------------------------------------------------------------

fn deserialize_safetensors<'a>(bytes: &'a [u8], path: &Path) -> IoResult<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| corrupt(path, format!("not a readable .safetensors file: {e}")))
}

fn st_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F64 => Some(DType::F64),
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Sorted tensor names of a safetensors file.
fn st_names(st: &SafeTensors<'_>) -> Vec<String> {
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
}

fn st_tensor(st: &SafeTensors<'_>, name: &str, path: &Path) -> IoResult<NamedTensor> {
    let view = st.tensor(name).map_err(|_| IoError::TensorNotFound {
        path: path.to_path_buf(),
        name: name.to_string(),
        available: name_list(&st_names(st)),
    })?;
    let Some(dtype) = st_dtype(view.dtype()) else {
        return Err(IoError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        });
    };
    // safetensors validated offsets and sizes against the header at deserialization.
    let data = decode(view.data(), dtype, false, view.shape(), false).ok_or_else(|| {
        corrupt(
            path,
            format!("'{name}': data size does not match shape {:?}", view.shape()),
        )
    })?;
    Ok(NamedTensor {
        name: name.to_string(),
        dtype,
        data,
    })
}

/// The string metadata (`__metadata__`) of a `.safetensors` file, empty when it has none.
pub fn read_safetensors_metadata(path: &Path) -> IoResult<BTreeMap<String, String>> {
    let bytes = read_bytes(path)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(path, format!("not a readable .safetensors file: {e}")))?;
    Ok(meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Public reading API
// ---------------------------------------------------------------------------------------------

/// Lists the tensors of a file with their shapes and dtypes, in file order (`.npz`) or sorted by
/// name (`.safetensors`). Only headers are parsed; no tensor data is decoded.
pub fn list_tensors(path: &Path) -> IoResult<Vec<TensorInfo>> {
    match Format::from_path(path)? {
        Format::Npy => {
            let bytes = read_bytes(path)?;
            let p = parse_npy(&bytes, path, "array")?;
            Ok(vec![TensorInfo {
                name: String::new(),
                dtype: p.descr,
                shape: p.shape,
                readable: p.dtype.is_some(),
            }])
        }
        Format::Npz => {
            let mut zip = open_npz(path)?;
            let names = npz_names(&zip);
            let mut out = Vec::with_capacity(names.len());
            for (i, name) in names.into_iter().enumerate() {
                let bytes = npz_member_bytes(&mut zip, i, path, &name)?;
                let p = parse_npy(&bytes, path, &format!("member '{name}'"))?;
                out.push(TensorInfo {
                    name,
                    dtype: p.descr,
                    shape: p.shape,
                    readable: p.dtype.is_some(),
                });
            }
            Ok(out)
        }
        Format::Safetensors => {
            let bytes = read_bytes(path)?;
            let st = deserialize_safetensors(&bytes, path)?;
            let mut out: Vec<TensorInfo> = st
                .iter()
                .map(|(name, v)| TensorInfo {
                    name: name.to_string(),
                    dtype: format!("{:?}", v.dtype()),
                    shape: v.shape().to_vec(),
                    readable: st_dtype(v.dtype()).is_some(),
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        }
    }
}

/// Reads one floating-point tensor from a `.npy`, `.npz` or `.safetensors` file (see the module
/// documentation), checked non-empty and finite.
///
/// `name` selects the tensor of an `.npz` or `.safetensors` file; it may be omitted when the file
/// holds exactly one, and must be omitted for `.npy`.
pub fn read_tensor(path: &Path, name: Option<&str>) -> IoResult<NamedTensor> {
    let t = read_tensor_unchecked(path, name)?;
    let what = if t.name.is_empty() {
        "the array".to_string()
    } else {
        format!("tensor '{}'", t.name)
    };
    let checked = match &t.data {
        AnyTensor::F32(a) => validate_tensor(&a.view(), &what),
        AnyTensor::F64(a) => validate_tensor(&a.view(), &what),
    };
    checked.map_err(|source| IoError::Tensor {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(t)
}

fn read_tensor_unchecked(path: &Path, name: Option<&str>) -> IoResult<NamedTensor> {
    match Format::from_path(path)? {
        Format::Npy => {
            if name.is_some() {
                return Err(IoError::NameNotApplicable {
                    path: path.to_path_buf(),
                });
            }
            let bytes = read_bytes(path)?;
            let parts = parse_npy(&bytes, path, "array")?;
            npy_to_tensor(parts, path, "")
        }
        Format::Npz => {
            let mut zip = open_npz(path)?;
            let names = npz_names(&zip);
            let index = match name {
                Some(n) => names
                    .iter()
                    .position(|m| m == n)
                    .ok_or_else(|| IoError::TensorNotFound {
                        path: path.to_path_buf(),
                        name: n.to_string(),
                        available: name_list(&names),
                    })?,
                None if names.len() == 1 => 0,
                None => {
                    return Err(IoError::NameRequired {
                        path: path.to_path_buf(),
                        count: names.len(),
                        available: name_list(&names),
                    });
                }
            };
            let member = names[index].clone();
            let bytes = npz_member_bytes(&mut zip, index, path, &member)?;
            let parts = parse_npy(&bytes, path, &format!("member '{member}'"))?;
            npy_to_tensor(parts, path, &member)
        }
        Format::Safetensors => {
            let bytes = read_bytes(path)?;
            let st = deserialize_safetensors(&bytes, path)?;
            let chosen = match name {
                Some(n) => n.to_string(),
                None => {
                    let names = st_names(&st);
                    if names.len() != 1 {
                        return Err(IoError::NameRequired {
                            path: path.to_path_buf(),
                            count: names.len(),
                            available: name_list(&names),
                        });
                    }
                    names[0].clone()
                }
            };
            st_tensor(&st, &chosen, path)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Atomic writing
// ---------------------------------------------------------------------------------------------

/// Writes a file atomically: `write` fills a temporary file in `path`'s directory, which is
/// flushed, synced and renamed to `path`. On any error the temporary file is removed and `path`
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

/// Writes named tensors and string metadata as a `.safetensors` file, atomically. Every tensor is
/// stored in `T`'s dtype (`F32` or `F64`).
pub fn write_safetensors<T: Real>(
    path: &Path,
    tensors: &[(String, ArrayD<T>)],
    metadata: &BTreeMap<String, String>,
) -> IoResult<()> {
    let dtype = DType::of::<T>();
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, a)| {
            let mut bytes = Vec::with_capacity(a.len() * dtype.size());
            for &v in a.as_standard_layout().iter() {
                match dtype {
                    DType::F32 => bytes.extend_from_slice(&(v.to_f64_exact() as f32).to_le_bytes()),
                    _ => bytes.extend_from_slice(&v.to_f64_exact().to_le_bytes()),
                }
            }
            (name.clone(), a.shape().to_vec(), bytes)
        })
        .collect();
    let mut views = Vec::with_capacity(buffers.len());
    for (name, shape, bytes) in &buffers {
        let view =
            safetensors::tensor::TensorView::new(dtype.safetensors(), shape.clone(), bytes).map_err(|e| {
                IoError::Write {
                    path: path.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        views.push((name.clone(), view));
    }
    let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| IoError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomic(path, |w| w.write_all(&bytes))
}

// ---------------------------------------------------------------------------------------------
// Factor files
// ---------------------------------------------------------------------------------------------

/// The decomposition methods of a factors file (and of `gbtd decompose --method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Tucker (HOOI) on all modes, or on the modes given.
    Tucker,
    /// Tucker-2: partial Tucker on two modes (the channel modes `(0, 1)` of a conv kernel).
    Tucker2,
    /// CP (PARAFAC) by ALS on all modes.
    Cp,
    /// Block term decomposition, partial on the channel modes of a conv kernel.
    Btd,
}

impl Method {
    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Tucker => "tucker",
            Method::Tucker2 => "tucker2",
            Method::Cp => "cp",
            Method::Btd => "btd",
        }
    }

    /// Parses `tucker`, `tucker2`, `cp` or `btd`.
    pub fn parse(s: &str) -> Option<Method> {
        [Method::Tucker, Method::Tucker2, Method::Cp, Method::Btd]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decomposition that a factors file stores.
#[derive(Debug, Clone, PartialEq)]
pub enum Decomposition<T> {
    /// Tucker or Tucker-2 ([`Method::Tucker`], [`Method::Tucker2`]).
    Tucker(Tucker<T>),
    /// CP ([`Method::Cp`]).
    Cp(Cp<T>),
    /// Block term decomposition ([`Method::Btd`]).
    Btd(Btd<T>),
}

impl<T: Real> Decomposition<T> {
    /// The full tensor the decomposition represents.
    pub fn reconstruct(&self) -> crate::Result<ArrayD<T>> {
        match self {
            Decomposition::Tucker(t) => t.reconstruct(),
            Decomposition::Cp(c) => c.reconstruct(),
            Decomposition::Btd(b) => b.reconstruct(),
        }
    }

    /// Number of stored parameters (cores, factors and weights).
    pub fn n_params(&self) -> usize {
        match self {
            Decomposition::Tucker(t) => t.n_params(),
            Decomposition::Cp(c) => c.n_params(),
            Decomposition::Btd(b) => b.n_params(),
        }
    }

    /// The fit's error history and iteration count.
    pub fn convergence(&self) -> &Convergence {
        match self {
            Decomposition::Tucker(t) => &t.convergence,
            Decomposition::Cp(c) => &c.convergence,
            Decomposition::Btd(b) => &b.convergence,
        }
    }

    /// The factorized modes (all modes for CP).
    pub fn modes(&self) -> Vec<usize> {
        match self {
            Decomposition::Tucker(t) => t.modes.clone(),
            Decomposition::Cp(c) => (0..c.factors.len()).collect(),
            Decomposition::Btd(b) => b.modes.clone(),
        }
    }

    /// The ranks, one per factorized mode (`[R]` for CP).
    pub fn ranks(&self) -> Vec<usize> {
        match self {
            Decomposition::Tucker(t) => t.factors.iter().map(|f| f.ncols()).collect(),
            Decomposition::Cp(c) => vec![c.weights.len()],
            Decomposition::Btd(b) => b.rank(),
        }
    }

    /// Number of terms: `R` for CP and BTD, 1 for Tucker.
    pub fn terms(&self) -> usize {
        match self {
            Decomposition::Tucker(_) => 1,
            Decomposition::Cp(c) => c.weights.len(),
            Decomposition::Btd(b) => b.terms.len(),
        }
    }
}

/// The contents of a factors file: the method, the shape of the decomposed tensor, the
/// decomposition and free-form information.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorsFile<T> {
    /// How the decomposition was computed.
    pub method: Method,
    /// Shape of the decomposed tensor.
    pub shape: Vec<usize>,
    /// The factors.
    pub decomposition: Decomposition<T>,
    /// Informational metadata (for example `rel_error`, `iterations`, `source`), stored in the
    /// safetensors `__metadata__` next to the layout keys. Keys must not be layout keys.
    pub info: BTreeMap<String, String>,
}

/// A factors file in the precision it was stored with.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyFactors {
    /// `F32` (or half-precision) factors.
    F32(FactorsFile<f32>),
    /// `F64` factors.
    F64(FactorsFile<f64>),
}

/// The value of the metadata key `format` in every factors file.
pub const FACTORS_FORMAT: &str = "gbtd.factors";
/// The factors layout version written by this crate.
pub const FACTORS_VERSION: &str = "1";
/// Metadata keys that describe the layout; [`FactorsFile::info`] may not use them.
pub const LAYOUT_KEYS: [&str; 8] = [
    "format",
    "format_version",
    "method",
    "shape",
    "modes",
    "ranks",
    "terms",
    "dtype",
];
/// The largest tensor [`read_factors`] accepts to describe (elements), 2^32: a guard against
/// metadata that would make a rebuild exhaust memory.
pub const MAX_ELEMENTS: usize = 1 << 32;

fn json_list(v: &[usize]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn factors_err(path: &Path, msg: impl Into<String>) -> IoError {
    IoError::Factors {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Checks that `modes` are distinct and below `ndim`.
fn check_mode_list(modes: &[usize], ndim: usize) -> std::result::Result<(), String> {
    let mut seen = vec![false; ndim];
    for &m in modes {
        if m >= ndim {
            return Err(format!("mode {m} out of range for a tensor of order {ndim}"));
        }
        if std::mem::replace(&mut seen[m], true) {
            return Err(format!("mode {m} listed twice"));
        }
    }
    Ok(())
}

/// Shape of a Tucker core for `shape` with `ranks` on `modes`.
fn core_shape(shape: &[usize], modes: &[usize], ranks: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    for (&m, &r) in modes.iter().zip(ranks) {
        s[m] = r;
    }
    s
}

/// The named tensors of a decomposition in the layout of the module documentation, after
/// checking that its parts fit `shape`.
fn factor_tensors<T: Real>(
    method: Method,
    shape: &[usize],
    d: &Decomposition<T>,
) -> std::result::Result<Vec<(String, ArrayD<T>)>, String> {
    let modes = d.modes();
    check_mode_list(&modes, shape.len())?;
    let ranks = d.ranks();
    let expect_factor = |name: &str, f: &ndarray::Array2<T>, m: usize, r: usize| {
        if f.dim() != (shape[m], r) {
            return Err(format!(
                "{name} has shape {:?}, expected ({}, {r})",
                f.dim(),
                shape[m]
            ));
        }
        Ok(())
    };
    let mut out = Vec::new();
    match (method, d) {
        (Method::Tucker | Method::Tucker2, Decomposition::Tucker(t)) => {
            if t.factors.len() != t.modes.len() {
                return Err(format!("{} factors for {} modes", t.factors.len(), t.modes.len()));
            }
            let cs = core_shape(shape, &modes, &ranks);
            if t.core.shape() != cs.as_slice() {
                return Err(format!("core has shape {:?}, expected {cs:?}", t.core.shape()));
            }
            out.push(("core".to_string(), t.core.clone()));
            for ((f, &m), &r) in t.factors.iter().zip(&modes).zip(&ranks) {
                let name = format!("factor.{m}");
                expect_factor(&name, f, m, r)?;
                out.push((name, f.clone().into_dyn()));
            }
        }
        (Method::Cp, Decomposition::Cp(c)) => {
            if c.factors.len() != shape.len() {
                return Err(format!(
                    "{} CP factors for a tensor of order {}",
                    c.factors.len(),
                    shape.len()
                ));
            }
            let r = c.weights.len();
            out.push(("weights".to_string(), c.weights.clone().into_dyn()));
            for (m, f) in c.factors.iter().enumerate() {
                let name = format!("factor.{m}");
                expect_factor(&name, f, m, r)?;
                out.push((name, f.clone().into_dyn()));
            }
        }
        (Method::Btd, Decomposition::Btd(b)) => {
            if b.shape != shape {
                return Err(format!("BTD of shape {:?} stored as shape {shape:?}", b.shape));
            }
            b.validate().map_err(|e| e.to_string())?;
            for (t, term) in b.terms.iter().enumerate() {
                let cs = core_shape(shape, &modes, &ranks);
                if term.core.shape() != cs.as_slice() {
                    return Err(format!(
                        "term {t}: core has shape {:?}; every term must have the ranks {ranks:?}",
                        term.core.shape()
                    ));
                }
                out.push((format!("term.{t}.core"), term.core.clone()));
                for ((f, &m), &r) in term.factors.iter().zip(&modes).zip(&ranks) {
                    let name = format!("term.{t}.factor.{m}");
                    expect_factor(&name, f, m, r)?;
                    out.push((name, f.clone().into_dyn()));
                }
            }
        }
        (m, _) => return Err(format!("method {m} does not match the decomposition given")),
    }
    Ok(out)
}

/// Writes a decomposition as a factors `.safetensors` file (layout in the module documentation),
/// atomically, in `T`'s precision. Its parts are checked against `file.shape` first.
pub fn write_factors<T: Real>(path: &Path, file: &FactorsFile<T>) -> IoResult<()> {
    let tensors =
        factor_tensors(file.method, &file.shape, &file.decomposition).map_err(|m| factors_err(path, m))?;
    let mut meta = BTreeMap::new();
    for (k, v) in &file.info {
        if LAYOUT_KEYS.contains(&k.as_str()) {
            return Err(factors_err(
                path,
                format!("info key '{k}' is reserved for the layout"),
            ));
        }
        meta.insert(k.clone(), v.clone());
    }
    let d = &file.decomposition;
    let put = |m: &mut BTreeMap<String, String>, k: &str, v: String| m.insert(k.to_string(), v);
    put(&mut meta, "format", FACTORS_FORMAT.into());
    put(&mut meta, "format_version", FACTORS_VERSION.into());
    put(&mut meta, "method", file.method.as_str().into());
    put(&mut meta, "shape", json_list(&file.shape));
    put(&mut meta, "modes", json_list(&d.modes()));
    put(&mut meta, "ranks", json_list(&d.ranks()));
    put(&mut meta, "terms", d.terms().to_string());
    put(
        &mut meta,
        "dtype",
        if DType::of::<T>() == DType::F32 {
            "F32"
        } else {
            "F64"
        }
        .into(),
    );
    write_safetensors(path, &tensors, &meta)
}

/// The layout keys of a factors file, parsed.
struct Layout1 {
    method: Method,
    shape: Vec<usize>,
    modes: Vec<usize>,
    ranks: Vec<usize>,
    terms: usize,
    dtype: DType,
}

fn parse_layout(meta: &BTreeMap<String, String>, path: &Path) -> IoResult<Layout1> {
    let get = |k: &str| {
        meta.get(k).ok_or_else(|| {
            factors_err(
                path,
                format!("metadata key '{k}' is missing (was it written by `gbtd decompose --out`?)"),
            )
        })
    };
    let list = |k: &str| -> IoResult<Vec<usize>> {
        let v = get(k)?;
        serde_json::from_str(v)
            .map_err(|_| factors_err(path, format!("metadata '{k}' = '{v}' is not a list of sizes")))
    };
    let format = get("format")?;
    if format != FACTORS_FORMAT {
        return Err(factors_err(
            path,
            format!("format is '{format}', expected '{FACTORS_FORMAT}'"),
        ));
    }
    let version = get("format_version")?;
    if version != FACTORS_VERSION {
        return Err(factors_err(
            path,
            format!("format_version {version} is not supported (this gbtd reads version {FACTORS_VERSION})"),
        ));
    }
    let m = get("method")?;
    let method = Method::parse(m).ok_or_else(|| factors_err(path, format!("unknown method '{m}'")))?;
    let t = get("terms")?;
    let terms: usize = t
        .parse()
        .map_err(|_| factors_err(path, format!("metadata 'terms' = '{t}' is not a count")))?;
    let dt = get("dtype")?;
    let dtype = match dt.as_str() {
        "F32" => DType::F32,
        "F64" => DType::F64,
        other => return Err(factors_err(path, format!("unsupported dtype '{other}'"))),
    };
    let layout = Layout1 {
        method,
        shape: list("shape")?,
        modes: list("modes")?,
        ranks: list("ranks")?,
        terms,
        dtype,
    };
    let bad = |msg: String| Err(factors_err(path, msg));
    let n = layout.shape.len();
    match checked_len(&layout.shape) {
        _ if n == 0 => return bad("the shape is empty".into()),
        Some(len) if len > 0 && len <= MAX_ELEMENTS => {}
        _ => {
            return bad(format!(
                "shape {:?} is empty or too large to rebuild",
                layout.shape
            ));
        }
    }
    check_mode_list(&layout.modes, n).map_err(|m| factors_err(path, m))?;
    if layout.modes.is_empty() {
        return bad("no factorized mode".into());
    }
    if method == Method::Cp {
        if layout.modes != (0..n).collect::<Vec<_>>() || layout.ranks.len() != 1 || layout.ranks[0] != terms {
            return bad(format!(
                "CP needs modes 0..{n}, one rank equal to terms; got modes {:?}, ranks {:?}, terms {terms}",
                layout.modes, layout.ranks
            ));
        }
    } else if layout.ranks.len() != layout.modes.len() {
        return bad(format!(
            "{} ranks for {} modes",
            layout.ranks.len(),
            layout.modes.len()
        ));
    }
    if layout.ranks.contains(&0)
        || terms == 0
        || (method != Method::Btd && method != Method::Cp && terms != 1)
    {
        return bad(format!("invalid ranks {:?} or terms {terms}", layout.ranks));
    }
    Ok(layout)
}

/// Reads a factors file written by [`write_factors`] in its stored precision.
pub fn read_factors_any(path: &Path) -> IoResult<AnyFactors> {
    let meta = read_safetensors_metadata(path)?;
    let layout = parse_layout(&meta, path)?;
    Ok(match layout.dtype {
        DType::F64 => AnyFactors::F64(read_factors(path)?),
        _ => AnyFactors::F32(read_factors(path)?),
    })
}

/// Reads a factors file written by [`write_factors`], converting to `T`. The metadata, the tensor
/// names and every shape are checked against each other (no missing or extra tensor) and the
/// values must be finite; any mismatch is [`IoError::Factors`].
pub fn read_factors<T: Real>(path: &Path) -> IoResult<FactorsFile<T>> {
    let bytes = read_bytes(path)?;
    let st = deserialize_safetensors(&bytes, path)?;
    let (_, raw_meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(path, format!("not a readable .safetensors file: {e}")))?;
    let meta: BTreeMap<String, String> = raw_meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let l = parse_layout(&meta, path)?;
    let mut used: Vec<String> = Vec::new();
    let mut load = |name: String, shape: &[usize]| -> IoResult<ArrayD<T>> {
        let t = st_tensor(&st, &name, path).map_err(|e| match e {
            IoError::TensorNotFound { .. } => factors_err(path, format!("tensor '{name}' is missing")),
            other => other,
        })?;
        if t.data.shape() != shape {
            return Err(factors_err(
                path,
                format!(
                    "tensor '{name}' has shape {:?}, expected {shape:?}",
                    t.data.shape()
                ),
            ));
        }
        let a = t.data.to_real::<T>();
        validate_tensor(&a.view(), &format!("tensor '{name}'")).map_err(|source| IoError::Tensor {
            path: path.to_path_buf(),
            source,
        })?;
        used.push(name);
        Ok(a)
    };
    let to2 = |a: ArrayD<T>| {
        a.into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| factors_err(path, e.to_string()))
    };
    let cs = core_shape(&l.shape, &l.modes, &l.ranks);
    let decomposition = match l.method {
        Method::Tucker | Method::Tucker2 => {
            let core = load("core".into(), &cs)?;
            let mut factors = Vec::with_capacity(l.modes.len());
            for (&m, &r) in l.modes.iter().zip(&l.ranks) {
                factors.push(to2(load(format!("factor.{m}"), &[l.shape[m], r])?)?);
            }
            Decomposition::Tucker(Tucker {
                core,
                factors,
                modes: l.modes.clone(),
                convergence: Convergence::default(),
            })
        }
        Method::Cp => {
            let weights = load("weights".into(), &[l.terms])?
                .into_dimensionality::<ndarray::Ix1>()
                .map_err(|e| factors_err(path, e.to_string()))?;
            let mut factors = Vec::with_capacity(l.shape.len());
            for (m, &d) in l.shape.iter().enumerate() {
                factors.push(to2(load(format!("factor.{m}"), &[d, l.terms])?)?);
            }
            Decomposition::Cp(Cp {
                weights,
                factors,
                convergence: Convergence::default(),
            })
        }
        Method::Btd => {
            let mut terms = Vec::with_capacity(l.terms);
            for t in 0..l.terms {
                let core = load(format!("term.{t}.core"), &cs)?;
                let mut factors = Vec::with_capacity(l.modes.len());
                for (&m, &r) in l.modes.iter().zip(&l.ranks) {
                    factors.push(to2(load(format!("term.{t}.factor.{m}"), &[l.shape[m], r])?)?);
                }
                terms.push(BlockTerm { core, factors });
            }
            Decomposition::Btd(Btd {
                terms,
                modes: l.modes.clone(),
                shape: l.shape.clone(),
                convergence: Convergence::default(),
            })
        }
    };
    let extra: Vec<String> = st_names(&st).into_iter().filter(|n| !used.contains(n)).collect();
    if !extra.is_empty() {
        return Err(factors_err(
            path,
            format!("unexpected tensors: {}", name_list(&extra)),
        ));
    }
    let info = meta
        .into_iter()
        .filter(|(k, _)| !LAYOUT_KEYS.contains(&k.as_str()))
        .collect();
    Ok(FactorsFile {
        method: l.method,
        shape: l.shape,
        decomposition,
        info,
    })
}
