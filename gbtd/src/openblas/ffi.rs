//! Safe wrappers over the OpenBLAS functions gbtd calls.
//!
//! `openblas_get_corename`, `openblas_get_num_threads` and `openblas_set_num_threads` are
//! OpenBLAS's public API (declared in its `cblas.h`) and are linked directly. Joining the idle
//! worker threads has no public entry point: it uses `blas_thread_shutdown_`, the routine behind
//! OpenBLAS's own `fork` handler, looked up at run time so that gbtd still loads (without that
//! feature) with an OpenBLAS build that lacks it, such as a single-threaded one. Choosing another
//! kernel family in a running process ([`reselect_core`]) likewise uses the `DYNAMIC_ARCH`
//! build's own `gotoblas_dynamic_quit` / `gotoblas_dynamic_init`, looked up at run time.
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::sync::OnceLock;

unsafe extern "C" {
    fn openblas_get_corename() -> *const c_char;
    fn openblas_get_num_threads() -> c_int;
    fn openblas_set_num_threads(num_threads: c_int);
}

/// The name of the kernel family OpenBLAS runs, e.g. `"Haswell"`, `"SkylakeX"`, `"Prescott"`
/// (as `OPENBLAS_VERBOSE=2` prints it at load time).
pub fn core_name() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string (or null on odd builds).
    let p = unsafe { openblas_get_corename() };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated, static.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_string()
}

/// OpenBLAS's process-wide thread count.
pub fn num_threads() -> usize {
    // SAFETY: a plain getter.
    let n = unsafe { openblas_get_num_threads() };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Sets OpenBLAS's process-wide thread count (it may exceed the number of cores; OpenBLAS starts
/// the extra workers on its next threaded call).
pub fn set_num_threads(n: usize) {
    let n = c_int::try_from(n.max(1)).unwrap_or(c_int::MAX);
    // SAFETY: a plain setter of OpenBLAS's global thread count.
    unsafe { openblas_set_num_threads(n) };
}

type Shutdown = unsafe extern "C" fn() -> c_int;

fn shutdown_fn() -> Option<Shutdown> {
    static F: OnceLock<Option<Shutdown>> = OnceLock::new();
    *F.get_or_init(|| {
        // SAFETY: dlsym on the global scope with a NUL-terminated name; the symbol, when present,
        // is OpenBLAS's `int blas_thread_shutdown_(void)`.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"blas_thread_shutdown_".as_ptr()) };
        // SAFETY: a non-null result is the address of that function.
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, Shutdown>(p) })
    })
}

/// Whether [`join_idle_workers`] can do anything with the linked OpenBLAS.
pub fn can_join_idle_workers() -> bool {
    shutdown_fn().is_some()
}

/// Joins OpenBLAS's worker threads (they start again on the next threaded call); returns whether
/// the linked OpenBLAS offers this.
///
/// OpenBLAS's idle workers spin (`sched_yield`) for up to about 0.1 s after BLAS activity before
/// they sleep, and switching OpenBLAS to one thread does not stop them; threads of the program
/// then share the cores with them.
///
/// # Safety
/// No other thread may be inside a BLAS or LAPACK call, or start one, until this returns.
pub unsafe fn join_idle_workers() -> bool {
    match shutdown_fn() {
        Some(f) => {
            // SAFETY: the caller guarantees that no BLAS call is in flight.
            unsafe { f() };
            true
        }
        None => false,
    }
}

type DynamicArch = unsafe extern "C" fn();

fn dynamic_fn(name: &std::ffi::CStr) -> Option<DynamicArch> {
    // SAFETY: dlsym on the global scope with a NUL-terminated name; the symbols looked up here,
    // when present, are OpenBLAS's `void gotoblas_dynamic_quit(void)` / `..._init(void)`.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    // SAFETY: a non-null result is the address of that function.
    (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, DynamicArch>(p) })
}

/// Makes a `DYNAMIC_ARCH` OpenBLAS run the kernel family `coretype` (an `OPENBLAS_CORETYPE`
/// value such as `"SkylakeX"`) from now on, without restarting the process: its selection is
/// undone (`gotoblas_dynamic_quit`) and made again (`gotoblas_dynamic_init`) with
/// `OPENBLAS_CORETYPE` set for the moment of the call (the variable is restored afterwards, so
/// child processes and other libraries do not see it). Returns whether OpenBLAS now reports
/// `coretype`; false, changing nothing, when the linked OpenBLAS lacks these routines.
///
/// This is for a process that cannot run itself again to set the variable before OpenBLAS
/// loads, such as a Python interpreter importing gbtd's extension module.
///
/// # Safety
/// No thread may be inside a BLAS or LAPACK call of this OpenBLAS, or start one, until this
/// returns, and no other thread may read or write the environment meanwhile.
pub unsafe fn reselect_core(coretype: &str) -> bool {
    let (Some(quit), Some(init)) = (
        dynamic_fn(c"gotoblas_dynamic_quit"),
        dynamic_fn(c"gotoblas_dynamic_init"),
    ) else {
        return false;
    };
    let previous = std::env::var_os("OPENBLAS_CORETYPE");
    // SAFETY: the caller guarantees that no other thread touches the environment or OpenBLAS.
    unsafe {
        std::env::set_var("OPENBLAS_CORETYPE", coretype);
        quit();
        init();
        match previous {
            Some(v) => std::env::set_var("OPENBLAS_CORETYPE", v),
            None => std::env::remove_var("OPENBLAS_CORETYPE"),
        }
    }
    core_name().eq_ignore_ascii_case(coretype)
}
