//! The decompositions and the tensor algebra, on NumPy arrays (the Python front `gbtd/__init__.py`
//! gives them TensorLy's names, arguments and return types).
use gbtd::collective::{ChannelRanks, CollectiveOptions, collective_btd};
use gbtd::fit::{Fit, FitOptions, fit};
use gbtd::options::{Init, IterOptions};
use gbtd::{Method, Real};
use ndarray::Ix2;
use numpy::{Element, PyReadonlyArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::arrays::{Floats, ViewAs, list_of, to_numpy};
use crate::run::{detached, gbtd_err, guarded};

/// `svd` or `random`.
fn init<T>(name: &str) -> PyResult<Init<T>> {
    match name {
        "svd" => Ok(Init::Svd),
        "random" => Ok(Init::Random),
        other => Err(PyValueError::new_err(format!(
            "init must be 'svd' or 'random', got {other:?}"
        ))),
    }
}

/// The method of `name` (`tucker`, `tucker2`, `cp`, `btd`) with `n_terms` for BTD.
fn method(name: &str, n_terms: usize) -> PyResult<Method> {
    Method::parse(name, n_terms).ok_or_else(|| PyValueError::new_err(format!("unknown method {name:?}")))
}

/// Fits one method to one tensor (see `gbtd.fit` in the library): returns a dict with the
/// factors (`core` and `factors` for Tucker, `weights` and `factors` for CP, `terms` as a list of
/// `(core, factors)` for BTD), `modes`, `errors` (after the initialisation and each sweep),
/// `n_iter`, `converged` and `rel_error`. The arrays have the input's dtype.
#[pyfunction]
#[pyo3(signature = (tensor, method_name, rank, modes, n_terms, n_iter_max, tol, init_name, seed))]
#[allow(clippy::too_many_arguments)]
pub fn decompose<'py>(
    py: Python<'py>,
    tensor: &Bound<'py, PyAny>,
    method_name: &str,
    rank: Vec<usize>,
    modes: Vec<usize>,
    n_terms: usize,
    n_iter_max: usize,
    tol: f64,
    init_name: &str,
    seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let x = Floats::extract(tensor, "tensor")?;
    let m = method(method_name, n_terms)?;
    let iter = IterOptions {
        n_iter_max,
        tol,
        seed,
    };
    if x.is_f64() {
        decompose_typed::<f64>(py, &x, m, rank, modes, iter, init_name)
    } else {
        decompose_typed::<f32>(py, &x, m, rank, modes, iter, init_name)
    }
}

fn decompose_typed<'py, T>(
    py: Python<'py>,
    x: &Floats<'py>,
    method: Method,
    ranks: Vec<usize>,
    modes: Vec<usize>,
    iter: IterOptions,
    init_name: &str,
) -> PyResult<Bound<'py, PyDict>>
where
    T: Real + Element,
    for<'a> Floats<'a>: ViewAs<T>,
{
    let view = x
        .view_as()
        .ok_or_else(|| PyValueError::new_err("dtype mismatch"))?;
    let init = init::<T>(init_name)?;
    let fitted = detached(
        py,
        |progress| {
            fit(
                &view,
                &FitOptions {
                    method,
                    modes,
                    ranks,
                    iter,
                    init,
                    progress,
                },
            )
        },
        gbtd_err,
    )?;
    let out = PyDict::new(py);
    let conv = fitted.decomposition.as_dyn().convergence().clone();
    out.set_item("modes", fitted.decomposition.as_dyn().modes())?;
    match fitted.decomposition {
        Fit::Tucker(t) => {
            out.set_item("core", to_numpy(py, t.core))?;
            out.set_item("factors", list_of(py, t.factors)?)?;
        }
        Fit::Cp(c) => {
            out.set_item("weights", to_numpy(py, c.weights))?;
            out.set_item("factors", list_of(py, c.factors)?)?;
        }
        Fit::Btd(b) => {
            let terms = PyList::empty(py);
            for t in b.terms {
                terms.append((to_numpy(py, t.core), list_of(py, t.factors)?))?;
            }
            out.set_item("terms", terms)?;
        }
    }
    out.set_item("errors", conv.errors)?;
    out.set_item("n_iter", conv.iterations)?;
    out.set_item("converged", conv.converged)?;
    out.set_item("rel_error", fitted.rel_error)?;
    Ok(out)
}

/// The collective factorization of conv kernels `(d4_l, d3, kh, kw)` sharing `(d3, kh, kw)`:
/// returns `terms` (per term `(core, [A4 stacked over the kernels, A3])`), `out_channels` (the
/// `d4_l`), `rel_errors` (per kernel), and the fit's `errors`, `n_iter`, `converged`,
/// `rel_error` (of the concatenated kernel).
#[pyfunction]
#[pyo3(signature = (kernels, n_terms, rank_out, rank_in, n_iter_max, tol, init_name, seed))]
#[allow(clippy::too_many_arguments)]
pub fn collective<'py>(
    py: Python<'py>,
    kernels: Vec<Bound<'py, PyAny>>,
    n_terms: usize,
    rank_out: usize,
    rank_in: usize,
    n_iter_max: usize,
    tol: f64,
    init_name: &str,
    seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let xs = kernels
        .iter()
        .enumerate()
        .map(|(l, k)| Floats::extract(k, &format!("kernel {l}")))
        .collect::<PyResult<Vec<_>>>()?;
    let iter = IterOptions {
        n_iter_max,
        tol,
        seed,
    };
    let rank = ChannelRanks::new(rank_out, rank_in);
    if xs.iter().any(Floats::is_f64) {
        if !xs.iter().all(Floats::is_f64) {
            return Err(PyValueError::new_err("the kernels must all have the same dtype"));
        }
        collective_typed::<f64>(py, &xs, n_terms, rank, iter, init_name)
    } else {
        collective_typed::<f32>(py, &xs, n_terms, rank, iter, init_name)
    }
}

fn collective_typed<'py, T>(
    py: Python<'py>,
    xs: &[Floats<'py>],
    terms: usize,
    rank: ChannelRanks,
    iter: IterOptions,
    init_name: &str,
) -> PyResult<Bound<'py, PyDict>>
where
    T: Real + Element,
    for<'a> Floats<'a>: ViewAs<T>,
{
    let views = xs
        .iter()
        .map(|x| x.view_as().ok_or_else(|| PyValueError::new_err("dtype mismatch")))
        .collect::<PyResult<Vec<_>>>()?;
    let init = init::<T>(init_name)?;
    let c = detached(
        py,
        |progress| {
            let opts = CollectiveOptions::new(terms, rank)
                .with_iter(iter)
                .with_init(init)
                .with_callback(progress);
            collective_btd(&views, &opts)
        },
        gbtd_err,
    )?;
    let out = PyDict::new(py);
    let conv = c.btd.convergence.clone();
    let list = PyList::empty(py);
    for t in c.btd.terms {
        list.append((to_numpy(py, t.core), list_of(py, t.factors)?))?;
    }
    out.set_item("terms", list)?;
    out.set_item("out_channels", c.out_channels)?;
    out.set_item("rel_errors", c.rel_errors)?;
    out.set_item("errors", conv.errors.clone())?;
    out.set_item("n_iter", conv.iterations)?;
    out.set_item("converged", conv.converged)?;
    out.set_item("rel_error", conv.rel_error())?;
    Ok(out)
}

/// Row-major (TensorLy's) mode-`mode` unfolding `(d_mode, Π_{k≠mode} d_k)`.
#[pyfunction]
pub fn unfold<'py>(py: Python<'py>, tensor: &Bound<'py, PyAny>, mode: usize) -> PyResult<Bound<'py, PyAny>> {
    let x = Floats::extract(tensor, "tensor")?;
    guarded(|| match &x {
        Floats::F32(a) => Ok(to_numpy(py, gbtd::unfold(&a.as_array(), mode).map_err(gbtd_err)?)),
        Floats::F64(a) => Ok(to_numpy(py, gbtd::unfold(&a.as_array(), mode).map_err(gbtd_err)?)),
    })
}

/// The inverse of [`unfold`]: the tensor of `shape` whose mode-`mode` unfolding is `unfolded`.
#[pyfunction]
pub fn fold<'py>(
    py: Python<'py>,
    unfolded: &Bound<'py, PyAny>,
    mode: usize,
    shape: Vec<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let x = Floats::extract(unfolded, "unfolded_tensor")?;
    let two =
        |e: ndarray::ShapeError| PyValueError::new_err(format!("the unfolded tensor must be 2-D ({e})"));
    guarded(|| match &x {
        Floats::F32(a) => {
            let v = a.as_array().into_dimensionality::<Ix2>().map_err(two)?;
            Ok(to_numpy(py, gbtd::fold(&v, mode, &shape).map_err(gbtd_err)?))
        }
        Floats::F64(a) => {
            let v = a.as_array().into_dimensionality::<Ix2>().map_err(two)?;
            Ok(to_numpy(py, gbtd::fold(&v, mode, &shape).map_err(gbtd_err)?))
        }
    })
}

/// `tensor ×_mode matrix`: mode `mode` (of size `J`) becomes `I` for a matrix `(I, J)`. Large
/// products release the GIL.
#[pyfunction]
pub fn mode_dot<'py>(
    py: Python<'py>,
    tensor: &Bound<'py, PyAny>,
    matrix: &Bound<'py, PyAny>,
    mode: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let x = Floats::extract(tensor, "tensor")?;
    let m = Floats::extract(matrix, "matrix")?;
    match (&x, &m) {
        (Floats::F32(a), Floats::F32(b)) => mode_dot_typed(py, a, b, mode),
        (Floats::F64(a), Floats::F64(b)) => mode_dot_typed(py, a, b, mode),
        _ => Err(PyValueError::new_err(
            "tensor and matrix must have the same dtype",
        )),
    }
}

fn mode_dot_typed<'py, T: Real + Element>(
    py: Python<'py>,
    a: &PyReadonlyArrayDyn<'py, T>,
    b: &PyReadonlyArrayDyn<'py, T>,
    mode: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let (av, bv) = (a.as_array(), b.as_array());
    let bv = bv
        .into_dimensionality::<Ix2>()
        .map_err(|_| PyValueError::new_err("the matrix must be 2-D (use a (1, n) matrix for a vector)"))?;
    let out = detached(py, |_| gbtd::mode_dot(&av, &bv, mode), gbtd_err)?;
    Ok(to_numpy(py, out))
}
