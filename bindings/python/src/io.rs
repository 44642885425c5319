//! Files: `load` (every tensor of a checkpoint, `.safetensors`, `.npz` or `.npy`, without running
//! any code from it), a `.safetensors` file's metadata, and `save` (tensors and metadata to a
//! `.safetensors` file, atomically).
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use gbtd::compress::verify::{VerifyError, VerifyOptions, verify_checkpoint};
use gbtd::compress::{RawTensor, read_all, writer};
use gbtd::formats::read_safetensors_metadata;
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use numpy::{Element, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use safetensors::Dtype;

use crate::arrays::to_numpy;
use crate::run::{detached, io_err};

/// Little-endian bytes as values of `T`.
fn values<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N bytes")))
        .collect()
}

fn array<'py, T: Element>(py: Python<'py>, shape: &[usize], v: Vec<T>) -> PyResult<Bound<'py, PyAny>> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(to_numpy(py, a))
}

/// A tensor's bytes as a NumPy array of its dtype (`bfloat16`, which NumPy lacks, as `float32`,
/// exactly).
fn raw_to_numpy<'py>(py: Python<'py>, t: RawTensor) -> PyResult<Bound<'py, PyAny>> {
    let s = &t.shape;
    let b = &t.bytes;
    match t.dtype {
        Dtype::F64 => array(py, s, values(b, f64::from_le_bytes)),
        Dtype::F32 => array(py, s, values(b, f32::from_le_bytes)),
        Dtype::F16 => array(py, s, values(b, f16::from_le_bytes)),
        Dtype::BF16 => array(py, s, values(b, |c| bf16::from_le_bytes(c).to_f32())),
        Dtype::I64 => array(py, s, values(b, i64::from_le_bytes)),
        Dtype::I32 => array(py, s, values(b, i32::from_le_bytes)),
        Dtype::I16 => array(py, s, values(b, i16::from_le_bytes)),
        Dtype::I8 => array(py, s, values(b, i8::from_le_bytes)),
        Dtype::U8 => array(py, s, b.clone()),
        Dtype::BOOL => array(py, s, b.iter().map(|&x| x != 0).collect::<Vec<bool>>()),
        other => Err(PyTypeError::new_err(format!("dtype {other:?} is not supported"))),
    }
}

/// Every tensor of the file at `path` as a dict of NumPy arrays, in file order (sorted by name
/// for `.safetensors`). PyTorch checkpoints (both `torch.save` formats) are read by gbtd's
/// restricted pickle reader, which never runs code from the file: a pickle that calls anything
/// but the tensor-rebuilding functions is refused with `OSError`.
#[pyfunction]
pub fn load<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let tensors = detached(py, |_| read_all(&path), io_err)?;
    let out = PyDict::new(py);
    for (name, t) in tensors {
        out.set_item(name, raw_to_numpy(py, t)?)?;
    }
    Ok(out)
}

/// The string metadata of a `.safetensors` file (`{}` when it has none).
#[pyfunction]
pub fn read_metadata(py: Python<'_>, path: PathBuf) -> PyResult<BTreeMap<String, String>> {
    detached(py, |_| read_safetensors_metadata(&path), io_err)
}

/// A NumPy array's dtype and little-endian bytes in C order.
fn to_raw(a: &Bound<'_, PyAny>, name: &str) -> PyResult<RawTensor> {
    fn take<T: Element + Copy, const N: usize>(
        a: &Bound<'_, PyAny>,
        dtype: Dtype,
        f: fn(T) -> [u8; N],
    ) -> Option<RawTensor> {
        let r = a.extract::<PyReadonlyArrayDyn<'_, T>>().ok()?;
        let v = r.as_array();
        let mut bytes = Vec::with_capacity(v.len() * N);
        for &x in v.iter() {
            bytes.extend_from_slice(&f(x));
        }
        Some(RawTensor {
            dtype,
            shape: v.shape().to_vec(),
            bytes,
        })
    }
    let raw = take::<f32, 4>(a, Dtype::F32, f32::to_le_bytes)
        .or_else(|| take::<f64, 8>(a, Dtype::F64, f64::to_le_bytes))
        .or_else(|| take::<f16, 2>(a, Dtype::F16, f16::to_le_bytes))
        .or_else(|| take::<i64, 8>(a, Dtype::I64, i64::to_le_bytes))
        .or_else(|| take::<i32, 4>(a, Dtype::I32, i32::to_le_bytes))
        .or_else(|| take::<i16, 2>(a, Dtype::I16, i16::to_le_bytes))
        .or_else(|| take::<i8, 1>(a, Dtype::I8, i8::to_le_bytes))
        .or_else(|| take::<u8, 1>(a, Dtype::U8, u8::to_le_bytes))
        .or_else(|| take::<bool, 1>(a, Dtype::BOOL, |b| [u8::from(b)]));
    raw.ok_or_else(|| {
        let dtype = a
            .cast::<PyUntypedArray>()
            .map(|x| format!("of dtype {}", x.dtype()))
            .unwrap_or_else(|_| "not a numpy array".into());
        PyTypeError::new_err(format!(
            "tensor '{name}' is {dtype}; save float64/32/16, int64/32/16/8, uint8 or bool numpy arrays"
        ))
    })
}

/// Writes `tensors` (name, NumPy array) and the string `metadata` to the `.safetensors` file
/// `path`, atomically (a temporary file renamed into place; nothing is left on failure).
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata=None))]
pub fn save(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<(String, Bound<'_, PyAny>)>,
    metadata: Option<HashMap<String, String>>,
) -> PyResult<()> {
    let entries = tensors
        .iter()
        .map(|(n, a)| Ok((n.clone(), to_raw(a, n)?)))
        .collect::<PyResult<Vec<_>>>()?;
    let meta = metadata.unwrap_or_default();
    detached(py, |_| writer::write_raw(&path, &entries, meta), io_err)
}

/// `gbtd verify` from Python: every layer that the compressed checkpoint's description lists runs
/// against the original model's layer on seeded Gaussian input (`batch` images of
/// `input_size × input_size`); returns the report as JSON text (each layer's kernel error, output
/// error, its expectation and tolerance, and whether they agree).
#[pyfunction]
#[pyo3(signature = (original, compressed, input_size=56, batch=4, seed=0))]
pub fn verify(
    py: Python<'_>,
    original: PathBuf,
    compressed: PathBuf,
    input_size: usize,
    batch: usize,
    seed: u64,
) -> PyResult<String> {
    let opts = VerifyOptions {
        input_size,
        batch,
        seed,
        max_error: None,
    };
    let report = detached(
        py,
        |progress| verify_checkpoint(&original, &compressed, &opts, progress),
        |e| match e {
            VerifyError::Io(io) => io_err(io),
            VerifyError::Gbtd(g) => crate::run::gbtd_err(g),
            other => PyValueError::new_err(other.to_string()),
        },
    )?;
    serde_json::to_string(&report).map_err(|e| PyValueError::new_err(e.to_string()))
}
