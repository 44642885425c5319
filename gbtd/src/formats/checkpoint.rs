//! PyTorch checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt`) as tensor files: [`crate::pth`] reads
//! them (both `torch.save` formats, never running pickled code); this adapter maps its tensors
//! and errors onto [`TensorInfo`], [`NamedTensor`] and [`IoError`].
//!
//! Listed: every model tensor with torch's dtype name (`float32`, `int64` ...), readable when it
//! is floating point. Read: `float64` stays `f64`; `float32`, `float16` and `bfloat16` become
//! `f32`. Integer and bool buffers (`num_batches_tracked` ...) are listed but not readable.
use std::path::Path;

use super::{AnyTensor, DType, IoError, IoResult, NamedTensor, TensorInfo};
use crate::pth::{self, PthData, PthError};

/// A checkpoint error as a file error (a missing file stays a missing file).
pub(crate) fn to_io(path: &Path, e: PthError) -> IoError {
    match e {
        PthError::Io { source, .. } => IoError::Read {
            path: path.to_path_buf(),
            source,
        },
        PthError::NoSuchTensor { name, available } => IoError::TensorNotFound {
            path: path.to_path_buf(),
            name,
            available,
        },
        PthError::NameRequired { count, available } => IoError::NameRequired {
            path: path.to_path_buf(),
            count,
            available,
        },
        other => IoError::Corrupt {
            path: path.to_path_buf(),
            msg: other.to_string(),
        },
    }
}

/// The model tensors of a checkpoint, in file order; no storage is read.
pub fn list(path: &Path) -> IoResult<Vec<TensorInfo>> {
    let listing = pth::list(path).map_err(|e| to_io(path, e))?;
    Ok(listing
        .tensors
        .into_iter()
        .map(|t| TensorInfo {
            name: t.name,
            dtype: t.dtype.name().to_string(),
            shape: t.shape,
            readable: pth::is_float(t.dtype),
        })
        .collect())
}

/// One floating-point tensor of a checkpoint (see [`pth::read_tensor`] for `name`).
pub fn read(path: &Path, name: Option<&str>) -> IoResult<NamedTensor> {
    let t = pth::read_tensor(path, name).map_err(|e| to_io(path, e))?;
    let (dtype, data) = match t.data {
        PthData::F64(_) => (DType::F64, AnyTensor::F64(t.to_f64())),
        PthData::F32(_) => (DType::F32, AnyTensor::F32(t.to_f32())),
        PthData::F16(_) => (DType::F16, AnyTensor::F32(t.to_f32())),
        PthData::BF16(_) => (DType::BF16, AnyTensor::F32(t.to_f32())),
        _ => {
            return Err(IoError::UnsupportedDtype {
                path: path.to_path_buf(),
                name: t.name,
                dtype: t.dtype.name().to_string(),
            });
        }
    };
    Ok(NamedTensor {
        name: t.name,
        dtype,
        data,
    })
}
