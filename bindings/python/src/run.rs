//! Running a gbtd computation from Python: the GIL released, Ctrl-C turned into
//! `KeyboardInterrupt` between sweeps, one computation at a time under gbtd's thread policy, no
//! Rust panic crossing into Python, and gbtd's errors as ordinary Python exceptions.
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use gbtd::GbtdError;
use gbtd::compress::CompressError;
use gbtd::formats::IoError;
use gbtd::openblas::{ThreadPolicy, default_threads};
use gbtd::options::{Event, Progress};
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;

/// Threads for OpenBLAS and gbtd's workers; 0 means [`default_threads`].
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// One computation at a time: gbtd's thread policy sets OpenBLAS's process-wide thread count.
static COMPUTE: Mutex<()> = Mutex::new(());

/// The thread count computations run with.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => default_threads(),
        n => n,
    }
}

/// Sets the thread count (0: back to the default).
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// A gbtd library error as the Python exception a user expects.
pub fn gbtd_err(e: GbtdError) -> PyErr {
    let msg = e.to_string();
    match e {
        GbtdError::Memory(_) => PyMemoryError::new_err(msg),
        GbtdError::Interrupted => PyKeyboardInterrupt::new_err(msg),
        GbtdError::Linalg(_) | GbtdError::Internal(_) => PyRuntimeError::new_err(msg),
        GbtdError::Shape(_)
        | GbtdError::Rank(_)
        | GbtdError::NonFinite(_)
        | GbtdError::Mode(_)
        | GbtdError::Empty(_)
        | GbtdError::Options(_) => PyValueError::new_err(msg),
    }
}

/// A file error: `FileNotFoundError` for a missing file, `OSError` otherwise (corrupt, truncated,
/// refused pickle code, unsupported dtype, unwritable destination).
pub fn io_err(e: IoError) -> PyErr {
    match &e {
        IoError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        IoError::Tensor { .. } => PyValueError::new_err(e.to_string()),
        _ => PyOSError::new_err(e.to_string()),
    }
}

/// A compression error: its file, rule or layer cause as above.
pub fn compress_err(e: CompressError) -> PyErr {
    match e {
        CompressError::Io(io) => io_err(io),
        CompressError::Layer { name, source } => {
            let inner = gbtd_err(source);
            Python::attach(|py| {
                let msg = format!("layer '{name}': {}", inner.value(py));
                PyErr::from_type(inner.get_type(py), msg)
            })
        }
        CompressError::Rule { .. } => PyValueError::new_err(e.to_string()),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// How a computation ended.
enum Ended<R> {
    Done(R),
    Signal(PyErr),
    Panic(String),
}

/// Runs `f` with the GIL released, under gbtd's thread policy and with a progress callback that
/// checks for signals (Ctrl-C) before each layer and after each sweep: a pending
/// `KeyboardInterrupt` stops the computation there and is raised. A panic becomes a
/// `RuntimeError`; `err` maps the computation's own error.
pub fn detached<R, E>(
    py: Python<'_>,
    f: impl FnOnce(Progress<'_>) -> Result<R, E> + Send,
    err: impl FnOnce(E) -> PyErr,
) -> PyResult<R>
where
    R: Send,
    E: Send,
{
    let ended = py.detach(|| {
        let pending: Mutex<Option<PyErr>> = Mutex::new(None);
        let check = |_: Event<'_>| match Python::attach(|py| py.check_signals()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                ControlFlow::Break(())
            }
        };
        let _one = COMPUTE.lock().unwrap_or_else(|p| p.into_inner());
        let _scope = ThreadPolicy::new(threads()).enter();
        let out = catch_unwind(AssertUnwindSafe(|| f(Progress::interruptible(&check))));
        let signal = pending.into_inner().unwrap_or_else(|p| p.into_inner());
        match (out, signal) {
            (_, Some(e)) => Ended::Signal(e),
            (Ok(r), None) => Ended::Done(r),
            (Err(p), None) => Ended::Panic(panic_text(&p)),
        }
    });
    match ended {
        Ended::Done(r) => r.map_err(err),
        Ended::Signal(e) => Err(e),
        Ended::Panic(msg) => Err(PyRuntimeError::new_err(format!(
            "internal error in gbtd (a bug, please report it with the input's shape and options): {msg}"
        ))),
    }
}

/// Runs a short computation while holding the GIL, with panics turned into `RuntimeError`.
pub fn guarded<R>(f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(PyRuntimeError::new_err(format!(
            "internal error in gbtd (a bug, please report it): {}",
            panic_text(&p)
        ))),
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}
