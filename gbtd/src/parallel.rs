//! The worker pool behind the products `gbtd` splits itself (see [`crate::tucker`]).
//!
//! The calling thread plus a rayon pool of [`blas_parallelism`]` − 1` helpers, so that the
//! process's thread budget (`OPENBLAS_NUM_THREADS`, else the hardware parallelism) holds for
//! these threads as for OpenBLAS's. Items are handed out one at a time from a shared counter: the
//! caller works from the start instead of waiting for a pool thread to wake up, and a core the
//! host stalls for a moment does not hold up the others. Callers make each item a whole BLAS call
//! (or a sum added up in a fixed order), so results never depend on who computed which item.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::linalg::{SingleThreadedBlas, blas_parallelism};

/// The helper pool, started on first use; `None` if the process may use one thread only or the
/// pool could not be started (then items run in order on the calling thread).
fn helpers() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = blas_parallelism();
        (n > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n - 1)
                    .thread_name(|i| format!("gbtd-{i}"))
                    .build()
                    .ok()
            })
            .flatten()
    })
    .as_ref()
}

/// `f(item)` for every item, in item order, computed by this thread and the helpers when
/// `parallel` (with OpenBLAS kept on one thread meanwhile, as the items are BLAS calls), else in
/// order on this thread.
pub(crate) fn map_items<I, R, F>(items: Vec<I>, parallel: bool, f: F) -> Vec<R>
where
    I: Send,
    R: Send,
    F: Fn(I) -> R + Sync + Send,
{
    let Some(pool) = helpers().filter(|_| parallel && items.len() > 1) else {
        return items.into_iter().map(f).collect();
    };
    let _single = SingleThreadedBlas::new();
    let n = items.len();
    let slots: Vec<Mutex<Option<I>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let take = |m: &Mutex<Option<I>>| m.lock().unwrap_or_else(|e| e.into_inner()).take();
    let work = || {
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = slots.get(k) else { break };
            if let Some(item) = take(slot) {
                let r = f(item);
                *results[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            }
        }
    };
    pool.in_place_scope(|scope| {
        for _ in 0..pool.current_num_threads() {
            scope.spawn(|_| work());
        }
        work();
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item is taken exactly once and the scope waits for all of them")
        })
        .collect()
}
