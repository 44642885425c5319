//! Everything specific to the OpenBLAS that gbtd links (Debian's `libopenblas`, through
//! `ndarray-linalg` and `blas-src`): the one place that calls OpenBLAS's own API.
//!
//! - [`coretype`]: which kernel family OpenBLAS runs, and the choice of one that matches the CPU's
//!   instruction set when OpenBLAS's detection by CPU model number fell back to an older one
//!   (OpenBLAS 0.3.21 runs its SSE3 `Prescott` kernels on Intel CPUs of model numbers it does not
//!   know, AVX-512 ones included). The choice can only be applied before OpenBLAS is loaded, so a
//!   program applies it by running itself again with `OPENBLAS_CORETYPE` set
//!   ([`coretype::ensure_kernels_match_cpu`]).
//! - [`threads`]: the thread policy. By default the library never changes OpenBLAS's process-wide
//!   thread count and runs no threads of its own; a program that owns the process (the `gbtd`
//!   CLI) enters a [`ThreadPolicy`] around its decompositions to let small problems run with
//!   OpenBLAS on one thread and medium products be shared out over gbtd's workers.
//! - [`ffi`]: the few OpenBLAS functions used, behind safe wrappers.
pub mod coretype;
pub mod ffi;
pub mod threads;

pub use coretype::{CoretypeVar, CpuFeatures, Decision, KernelLevel, decide, ensure_kernels_match_cpu};
pub use threads::{PolicyScope, SingleThreadedBlas, ThreadPolicy, default_threads};
