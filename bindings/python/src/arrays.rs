//! NumPy arrays in and out: `float32` / `float64` inputs with any strides are borrowed as
//! `ndarray` views (no copy); results are moved into NumPy arrays (no copy either).
use ndarray::{ArrayViewD, Dimension};
use numpy::{Element, PyArray, PyReadonlyArrayDyn};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// A borrowed floating-point NumPy array.
pub enum Floats<'py> {
    /// `float32`.
    F32(PyReadonlyArrayDyn<'py, f32>),
    /// `float64`.
    F64(PyReadonlyArrayDyn<'py, f64>),
}

impl<'py> Floats<'py> {
    /// Borrows `x`, which must be a `float32` or `float64` NumPy array (the Python front
    /// converts everything else first).
    pub fn extract(x: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(a) = x.extract::<PyReadonlyArrayDyn<'py, f64>>() {
            return Ok(Floats::F64(a));
        }
        if let Ok(a) = x.extract::<PyReadonlyArrayDyn<'py, f32>>() {
            return Ok(Floats::F32(a));
        }
        Err(PyTypeError::new_err(format!(
            "{what} must be a float32 or float64 numpy array"
        )))
    }

    /// Whether the array is `float64`.
    pub fn is_f64(&self) -> bool {
        matches!(self, Floats::F64(_))
    }
}

/// A view of a borrowed array in the element type `T` (`None` when it has the other type).
pub trait ViewAs<T> {
    /// The view, when the element type is `T`.
    fn view_as(&self) -> Option<ArrayViewD<'_, T>>;
}

impl ViewAs<f32> for Floats<'_> {
    fn view_as(&self) -> Option<ArrayViewD<'_, f32>> {
        match self {
            Floats::F32(a) => Some(a.as_array()),
            Floats::F64(_) => None,
        }
    }
}

impl ViewAs<f64> for Floats<'_> {
    fn view_as(&self) -> Option<ArrayViewD<'_, f64>> {
        match self {
            Floats::F64(a) => Some(a.as_array()),
            Floats::F32(_) => None,
        }
    }
}

/// Moves `a` into a NumPy array (its buffer becomes the array's, no copy).
pub fn to_numpy<'py, T: Element, D: Dimension>(
    py: Python<'py>,
    a: ndarray::Array<T, D>,
) -> Bound<'py, PyAny> {
    PyArray::from_owned_array(py, a).into_any()
}

/// Moves each of `arrays` into a NumPy array, as a Python list.
pub fn list_of<'py, T: Element, D: Dimension>(
    py: Python<'py>,
    arrays: Vec<ndarray::Array<T, D>>,
) -> PyResult<Bound<'py, PyAny>> {
    let items: Vec<Bound<'py, PyAny>> = arrays.into_iter().map(|a| to_numpy(py, a)).collect();
    Ok(pyo3::types::PyList::new(py, items)?.into_any())
}
