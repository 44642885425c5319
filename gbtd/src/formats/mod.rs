//! Tensor files: reading `.npy`, `.npz` and `.safetensors` tensors, writing `.npy` and
//! `.safetensors` files atomically, and the `gbtd` factors file. One file per format:
//! [`npy`], [`npz`], [`safetensors`] (reading and writing), [`factors`] (the factors-file layout
//! on top of safetensors) and [`atomic`] (the write-to-temporary-then-rename helper every writer
//! uses, and [`check_output_path`], the checks of an output path made before any work).
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
//! Every file is written atomically ([`atomic::write_atomic`]): into a temporary file in the
//! destination's directory, flushed and synced, then renamed over the destination. On any error
//! the temporary file is removed and the destination is left as it was, so no partial output
//! ever appears.
use std::fmt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use thiserror::Error;

use crate::error::GbtdError;
use crate::real::Real;
use crate::tensor::validate_tensor;

pub mod atomic;
pub mod checkpoint;
pub mod factors;
pub mod npy;
pub mod npz;
pub mod safetensors;

pub use atomic::{check_output_path, write_atomic};
pub use factors::{AnyFactors, FactorsFile, read_factors, read_factors_any, write_factors};
pub use npy::write_npy;
pub use safetensors::{read_safetensors_metadata, write_safetensors};

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
    /// The destination's directory does not exist (nothing was written).
    #[error("cannot write {}: directory {} does not exist; create it first or choose another path", path.display(), dir.display())]
    MissingDirectory {
        /// The destination.
        path: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
    },
    /// An output's name does not end in the extension of what is written there (nothing was
    /// written).
    #[error("{}: {what} must be written to a {expected} file; use a name ending in {expected}", path.display())]
    OutputExtension {
        /// The destination.
        path: PathBuf,
        /// What would be written there ("the factors", "the report" ...).
        what: String,
        /// The extensions accepted, with their dots (`.safetensors`, `.json or .csv`).
        expected: String,
    },
    /// An output names the input file (nothing was written).
    #[error("{} is the {input_role} file; choose another name", path.display())]
    OutputIsInput {
        /// The destination.
        path: PathBuf,
        /// What the input is called ("input", "model").
        input_role: String,
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
        "{}: tensor '{}' has dtype {}, which is not supported (use float64, float32, float16 or bfloat16)",
        path.display(),
        escape_controls(name),
        escape_controls(dtype)
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
    #[error("{}: no tensor named '{}'; the file holds: {available}", path.display(), escape_controls(name))]
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
    /// A PyTorch checkpoint written by `torch.save` (`.pth`, `.pt`, `.bin`, `.ckpt`; zip or
    /// legacy format), read without running its pickled code.
    Pth,
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
            Some("pth" | "pt" | "bin" | "ckpt") => Ok(Format::Pth),
            _ => Err(IoError::UnknownFormat {
                path: path.to_path_buf(),
                expected: ".npy, .npz, .safetensors or a PyTorch checkpoint (.pth, .pt, .bin, .ckpt)",
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

    pub(crate) fn safetensors(self) -> ::safetensors::Dtype {
        match self {
            DType::F16 => ::safetensors::Dtype::F16,
            DType::BF16 => ::safetensors::Dtype::BF16,
            DType::F32 => ::safetensors::Dtype::F32,
            DType::F64 => ::safetensors::Dtype::F64,
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

/// Lists the tensors of a file with their shapes and dtypes, in file order (`.npz`) or sorted by
/// name (`.safetensors`). Only headers are parsed and no tensor data is decoded: a `.npy` file
/// and each `.npz` member are read up to the end of their header (a compressed member is
/// decompressed only that far); a `.safetensors` file is read whole, but only its JSON header is
/// parsed.
pub fn list_tensors(path: &Path) -> IoResult<Vec<TensorInfo>> {
    match Format::from_path(path)? {
        Format::Npy => Ok(vec![npy::header_info(path)?]),
        Format::Npz => npz::list(path),
        Format::Safetensors => safetensors::list(path),
        Format::Pth => checkpoint::list(path),
    }
}

/// Reads one floating-point tensor from a `.npy`, `.npz` or `.safetensors` file (see the module
/// documentation), checked non-empty and finite.
///
/// `name` selects the tensor of an `.npz` or `.safetensors` file; it may be omitted when the file
/// holds exactly one, and must be omitted for `.npy`.
pub fn read_tensor(path: &Path, name: Option<&str>) -> IoResult<NamedTensor> {
    let t = match Format::from_path(path)? {
        Format::Npy => {
            if name.is_some() {
                return Err(IoError::NameNotApplicable {
                    path: path.to_path_buf(),
                });
            }
            npy::read(path)?
        }
        Format::Npz => npz::read(path, name)?,
        Format::Safetensors => safetensors::read(path, name)?,
        Format::Pth => checkpoint::read(path, name)?,
    };
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

pub(crate) fn read_bytes(path: &Path) -> IoResult<Vec<u8>> {
    std::fs::read(path).map_err(|source| IoError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A [`IoError::Corrupt`] error. Control characters in `msg` (from names read out of a corrupt
/// file) are escaped, so the message stays on one line.
pub(crate) fn corrupt(path: &Path, msg: impl Into<String>) -> IoError {
    let msg: String = msg.into();
    IoError::Corrupt {
        path: path.to_path_buf(),
        msg: escape_controls(&msg),
    }
}

/// `s` with control characters written as escapes (`\n`, `\u{3}`); other characters unchanged.
pub(crate) fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Names joined for an error message: all of them up to 16, otherwise the first 16 and a count.
pub(crate) fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 16;
    if names.is_empty() {
        return "(no tensors)".into();
    }
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("'{}'", escape_controls(n)))
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
pub(crate) fn checked_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Decodes `bytes` (a whole number of elements of `dtype`) into a tensor of `shape` (standard
/// layout); `None` when the byte count does not match the shape. `f16` and `bf16` are widened to
/// `f32` exactly by the `half` crate.
pub(crate) fn decode(
    bytes: &[u8],
    dtype: DType,
    big_endian: bool,
    shape: &[usize],
    fortran: bool,
) -> Option<AnyTensor> {
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
            let v: Vec<f32> = bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(two(c)).to_f32())
                .collect();
            AnyTensor::F32(build(shape, fortran, v)?)
        }
        DType::BF16 => {
            let v: Vec<f32> = bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(two(c)).to_f32())
                .collect();
            AnyTensor::F32(build(shape, fortran, v)?)
        }
    })
}
