//! `gbtd._gbtd`, the native module of gbtd's Python package: a thin layer over the `gbtd` crate.
//! The package's Python modules (`gbtd`, `gbtd.torch`) give it TensorLy's function names and
//! argument conventions and build PyTorch modules; this module only converts arrays, releases the
//! GIL, maps errors and calls the library.
mod arrays;
mod compress;
mod decompose;
mod io;
mod run;

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// OpenBLAS's kernel family, what gbtd decided about it at import, and the thread count.
#[pyfunction]
fn blas_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("core", gbtd::openblas::ffi::core_name())?;
    d.set_item(
        "decision",
        KERNELS.get().map(|(s, _)| s.clone()).unwrap_or_default(),
    )?;
    d.set_item("switched", KERNELS.get().is_some_and(|(_, b)| *b))?;
    d.set_item("threads", run::threads())?;
    Ok(d)
}

/// Sets the threads of OpenBLAS and of gbtd's workers for the following computations (0: back to
/// the default, `OPENBLAS_NUM_THREADS` or the number of CPUs).
#[pyfunction]
fn set_num_threads(n: usize) {
    run::set_threads(n);
}

/// The threads computations run with.
#[pyfunction]
fn get_num_threads() -> usize {
    run::threads()
}

/// What [`gbtd::openblas::coretype::match_kernels_in_place`] decided when the module was loaded.
static KERNELS: std::sync::OnceLock<(String, bool)> = std::sync::OnceLock::new();

#[pymodule]
fn _gbtd(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // OpenBLAS kernels that match the CPU, chosen before any BLAS call of this library: the
    // extension's OpenBLAS is its own (NumPy and PyTorch bring theirs), and nothing has used it
    // yet while the module initialises.
    KERNELS.get_or_init(|| {
        // SAFETY: module initialisation runs once, holding the GIL, before any gbtd call; no
        // other code of the process calls this OpenBLAS, and the environment is only touched
        // here for the moment of OpenBLAS's own selection.
        let (decision, switched) = unsafe { gbtd::openblas::coretype::match_kernels_in_place() };
        (decision.describe(), switched)
    });
    m.add_function(wrap_pyfunction!(decompose::decompose, m)?)?;
    m.add_function(wrap_pyfunction!(decompose::collective, m)?)?;
    m.add_function(wrap_pyfunction!(decompose::unfold, m)?)?;
    m.add_function(wrap_pyfunction!(decompose::fold, m)?)?;
    m.add_function(wrap_pyfunction!(decompose::mode_dot, m)?)?;
    m.add_function(wrap_pyfunction!(io::load, m)?)?;
    m.add_function(wrap_pyfunction!(io::read_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(io::save, m)?)?;
    m.add_function(wrap_pyfunction!(io::verify, m)?)?;
    m.add_function(wrap_pyfunction!(compress::compress_layers, m)?)?;
    m.add_function(wrap_pyfunction!(blas_info, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
