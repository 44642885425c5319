//! `.safetensors` files (Hugging Face): named tensors and string metadata after a JSON header,
//! parsed by the `safetensors` crate. Readable dtypes are `F64`, `F32`, `F16` and `BF16`; files
//! are written in the computation's precision (`F32` or `F64`).
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use ::safetensors::{Dtype, SafeTensors};
use ndarray::ArrayD;

use super::{
    DType, IoError, IoResult, NamedTensor, TensorInfo, corrupt, decode, name_list, read_bytes, write_atomic,
};
use crate::real::Real;

pub(crate) fn deserialize_safetensors<'a>(bytes: &'a [u8], path: &Path) -> IoResult<SafeTensors<'a>> {
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
pub(crate) fn st_names(st: &SafeTensors<'_>) -> Vec<String> {
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
}

pub(crate) fn st_tensor(st: &SafeTensors<'_>, name: &str, path: &Path) -> IoResult<NamedTensor> {
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

/// The tensors of a `.safetensors` file, sorted by name (only the header is parsed).
pub fn list(path: &Path) -> IoResult<Vec<TensorInfo>> {
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

/// Reads the tensor `name`, or the only tensor when `name` is `None` (not yet checked finite: see
/// [`super::read_tensor`]).
pub fn read(path: &Path, name: Option<&str>) -> IoResult<NamedTensor> {
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
        let view = ::safetensors::tensor::TensorView::new(dtype.safetensors(), shape.clone(), bytes)
            .map_err(|e| IoError::Write {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
        views.push((name.clone(), view));
    }
    let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let bytes = ::safetensors::serialize(views, Some(meta)).map_err(|e| IoError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomic(path, |w| w.write_all(&bytes))
}
