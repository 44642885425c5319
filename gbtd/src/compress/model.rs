//! The input model of `compress`: its tensor list, one floating-point tensor at a time for
//! decomposing, and every tensor's raw bytes in its own dtype for copying unchanged.
//!
//! - `.safetensors`: the file is read once and kept; tensors are views into it (any dtype).
//! - PyTorch checkpoints (both `torch.save` formats): each tensor is read on demand from the file
//!   ([`crate::pth::read_tensor`]: the pickle is parsed again, only that tensor's storage is
//!   decoded), integer and bool buffers included.
//! - `.npz`: floating-point members only (an integer member cannot be copied and is an error
//!   when it would have to be).
//!
//! A `.npy` file holds one unnamed array, not a model, and is refused.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ::safetensors::{Dtype, SafeTensors};
use half::{bf16, f16};

use crate::formats::safetensors::{deserialize_safetensors, st_tensor};
use crate::formats::{
    self, AnyTensor, DType, Format, IoError, IoResult, NamedTensor, TensorInfo, checkpoint, npz, read_bytes,
};
use crate::pth::{self, PthData};
use crate::tensor::validate_tensor;

/// A tensor's bytes as a `.safetensors` file stores them: little-endian, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// The element type.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<usize>,
    /// `shape.product() * dtype size` bytes.
    pub bytes: Vec<u8>,
}

/// An opened model file.
pub(crate) enum ModelFile {
    /// The whole `.safetensors` file.
    Safetensors { path: PathBuf, bytes: Vec<u8> },
    /// A PyTorch checkpoint, read tensor by tensor.
    Pth { path: PathBuf },
    /// A NumPy `.npz` archive.
    Npz { path: PathBuf },
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelFile({})", self.path().display())
    }
}

impl ModelFile {
    /// Opens `path` (its format from the extension).
    pub fn open(path: &Path) -> IoResult<Self> {
        Ok(match Format::from_path(path)? {
            Format::Safetensors => {
                let bytes = read_bytes(path)?;
                deserialize_safetensors(&bytes, path)?;
                ModelFile::Safetensors {
                    path: path.to_path_buf(),
                    bytes,
                }
            }
            Format::Pth => ModelFile::Pth {
                path: path.to_path_buf(),
            },
            Format::Npz => ModelFile::Npz {
                path: path.to_path_buf(),
            },
            Format::Npy => {
                return Err(IoError::UnknownFormat {
                    path: path.to_path_buf(),
                    expected: "a model file (.safetensors, .npz or a PyTorch checkpoint .pth, .pt, .bin, .ckpt); a .npy file holds a single array",
                });
            }
        })
    }

    /// Whether the tensor list follows the model's module order (a PyTorch checkpoint keeps the
    /// state dict's order; a `.safetensors` listing is sorted by name).
    pub fn keeps_module_order(&self) -> bool {
        matches!(self, ModelFile::Pth { .. })
    }

    fn path(&self) -> &Path {
        match self {
            ModelFile::Safetensors { path, .. } | ModelFile::Pth { path } | ModelFile::Npz { path } => path,
        }
    }

    fn safetensors(&self) -> IoResult<Option<SafeTensors<'_>>> {
        match self {
            ModelFile::Safetensors { path, bytes } => Ok(Some(deserialize_safetensors(bytes, path)?)),
            _ => Ok(None),
        }
    }

    /// The tensors with their dtypes and shapes: file order for checkpoints and `.npz`, sorted by
    /// name for `.safetensors`.
    pub fn list(&self) -> IoResult<Vec<TensorInfo>> {
        match self {
            ModelFile::Safetensors { .. } => {
                let st = self.safetensors()?.expect("a safetensors model");
                let mut out: Vec<TensorInfo> = st
                    .iter()
                    .map(|(name, v)| TensorInfo {
                        name: name.to_string(),
                        dtype: format!("{:?}", v.dtype()),
                        shape: v.shape().to_vec(),
                        readable: matches!(v.dtype(), Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16),
                    })
                    .collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            }
            ModelFile::Pth { path } => checkpoint::list(path),
            ModelFile::Npz { path } => npz::list(path),
        }
    }

    /// The `.safetensors` input's own string metadata (empty for other formats).
    pub fn metadata(&self) -> IoResult<BTreeMap<String, String>> {
        match self {
            ModelFile::Safetensors { path, .. } => formats::read_safetensors_metadata(path),
            _ => Ok(BTreeMap::new()),
        }
    }

    /// One floating-point tensor (`f16`/`bf16` widened to `f32`), checked non-empty and finite.
    pub fn read_float(&self, name: &str) -> IoResult<NamedTensor> {
        let path = self.path();
        let t = match self {
            ModelFile::Safetensors { .. } => {
                st_tensor(&self.safetensors()?.expect("safetensors"), name, path)?
            }
            ModelFile::Pth { path } => checkpoint::read(path, Some(name))?,
            ModelFile::Npz { path } => npz::read(path, Some(name))?,
        };
        let what = format!("tensor '{name}'");
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

    /// One tensor's bytes in its own dtype, unchanged.
    pub fn read_raw(&self, name: &str) -> IoResult<RawTensor> {
        match self {
            ModelFile::Safetensors { path, .. } => {
                let st = self.safetensors()?.expect("safetensors");
                let v = st.tensor(name).map_err(|_| IoError::TensorNotFound {
                    path: path.clone(),
                    name: name.to_string(),
                    available: String::new(),
                })?;
                Ok(RawTensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    bytes: v.data().to_vec(),
                })
            }
            ModelFile::Pth { path } => {
                let t = pth::read_tensor(path, Some(name)).map_err(|e| checkpoint::to_io(path, e))?;
                Ok(raw_from_pth(t.shape, &t.data))
            }
            ModelFile::Npz { path } => Ok(raw_from_named(&npz::read(path, Some(name))?)),
        }
    }
}

/// Every tensor of a model file (a PyTorch checkpoint of either `torch.save` format,
/// `.safetensors`, `.npz`) or the array of a `.npy` file (named `""`), each with its bytes in its
/// own dtype: all dtypes of checkpoints and `.safetensors` files, the floating-point members of
/// `.npz` files (checked finite). Nothing in the file is executed (see [`crate::pth`]). In file
/// order for checkpoints and `.npz`, sorted by name for `.safetensors`.
pub fn read_all(path: &Path) -> IoResult<Vec<(String, RawTensor)>> {
    match Format::from_path(path)? {
        Format::Npy => {
            let t = formats::read_tensor(path, None)?;
            Ok(vec![(String::new(), raw_from_named(&t))])
        }
        Format::Pth => {
            let ck = pth::read(path).map_err(|e| checkpoint::to_io(path, e))?;
            Ok(ck
                .tensors
                .into_iter()
                .map(|t| (t.name, raw_from_pth(t.shape, &t.data)))
                .collect())
        }
        _ => {
            let m = ModelFile::open(path)?;
            m.list()?
                .into_iter()
                .map(|t| {
                    let raw = m.read_raw(&t.name)?;
                    Ok((t.name, raw))
                })
                .collect()
        }
    }
}

fn le<const N: usize, V>(v: &[V], f: impl Fn(&V) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * N);
    for x in v {
        out.extend_from_slice(&f(x));
    }
    out
}

/// A checkpoint tensor's data as little-endian bytes of the matching safetensors dtype.
fn raw_from_pth(shape: Vec<usize>, data: &PthData) -> RawTensor {
    let (dtype, bytes) = match data {
        PthData::F32(v) => (Dtype::F32, le(v, |x| x.to_le_bytes())),
        PthData::F64(v) => (Dtype::F64, le(v, |x| x.to_le_bytes())),
        PthData::F16(v) => (Dtype::F16, le(v, |x| x.to_le_bytes())),
        PthData::BF16(v) => (Dtype::BF16, le(v, |x| x.to_le_bytes())),
        PthData::I64(v) => (Dtype::I64, le(v, |x| x.to_le_bytes())),
        PthData::I32(v) => (Dtype::I32, le(v, |x| x.to_le_bytes())),
        PthData::I16(v) => (Dtype::I16, le(v, |x| x.to_le_bytes())),
        PthData::I8(v) => (Dtype::I8, le(v, |x| x.to_le_bytes())),
        PthData::U8(v) => (Dtype::U8, v.clone()),
        PthData::Bool(v) => (Dtype::BOOL, v.iter().map(|&b| b as u8).collect()),
    };
    RawTensor { dtype, shape, bytes }
}

/// A decoded floating-point tensor back in its stored dtype (exact: `f16`/`bf16` were widened
/// exactly).
fn raw_from_named(t: &NamedTensor) -> RawTensor {
    let shape = t.data.shape().to_vec();
    let (dtype, bytes) = match (&t.data, t.dtype) {
        (AnyTensor::F64(a), _) => (
            Dtype::F64,
            le(&a.iter().copied().collect::<Vec<_>>(), |x| x.to_le_bytes()),
        ),
        (AnyTensor::F32(a), DType::F16) => (
            Dtype::F16,
            le(&a.iter().collect::<Vec<_>>(), |x| {
                f16::from_f32(**x).to_le_bytes()
            }),
        ),
        (AnyTensor::F32(a), DType::BF16) => (
            Dtype::BF16,
            le(&a.iter().collect::<Vec<_>>(), |x| {
                bf16::from_f32(**x).to_le_bytes()
            }),
        ),
        (AnyTensor::F32(a), _) => (Dtype::F32, le(&a.iter().collect::<Vec<_>>(), |x| x.to_le_bytes())),
    };
    RawTensor { dtype, shape, bytes }
}

/// Little-endian bytes of `f32`/`f64` values (for the chain tensors written in the computation's
/// precision).
pub(crate) fn raw_from_real<T: crate::real::Real>(
    shape: &[usize],
    values: impl Iterator<Item = T>,
) -> RawTensor {
    let f64_out = std::mem::size_of::<T>() == 8;
    let mut bytes = Vec::new();
    for v in values {
        if f64_out {
            bytes.extend_from_slice(&v.to_f64_exact().to_le_bytes());
        } else {
            bytes.extend_from_slice(&(v.to_f64_exact() as f32).to_le_bytes());
        }
    }
    RawTensor {
        dtype: if f64_out { Dtype::F64 } else { Dtype::F32 },
        shape: shape.to_vec(),
        bytes,
    }
}
