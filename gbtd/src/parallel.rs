//! The worker pool behind the products `gbtd` splits itself (see [`crate::tucker`]).
//!
//! A rayon pool of [`blas_parallelism`] threads, so that the process's thread budget
//! (`OPENBLAS_NUM_THREADS`, else the hardware parallelism) holds for these threads as for
//! OpenBLAS's. Work is handed out item by item, so a core the host stalls for a moment does not
//! hold up the others; callers make each item a whole BLAS call (or a sum added up in a fixed
//! order), so results never depend on how the items were scheduled.
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::linalg::{SingleThreadedBlas, blas_parallelism};

/// The pool, started on first use; `None` if the process may use one thread only or the pool
/// could not be started (then items run in order on the calling thread).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = blas_parallelism();
        (n > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("gbtd-{i}"))
                    .build()
                    .ok()
            })
            .flatten()
    })
    .as_ref()
}

/// `f(item)` for every item, in parallel on the pool when `parallel` (with OpenBLAS kept on one
/// thread meanwhile, as the items are BLAS calls), else in order on this thread.
pub(crate) fn map_items<I, R, F>(items: Vec<I>, parallel: bool, f: F) -> Vec<R>
where
    I: Send,
    R: Send,
    F: Fn(I) -> R + Sync + Send,
{
    match pool().filter(|_| parallel && items.len() > 1) {
        Some(pool) => {
            let _single = SingleThreadedBlas::new();
            pool.install(|| items.into_par_iter().map(f).collect())
        }
        None => items.into_iter().map(f).collect(),
    }
}
