//! The worker pool behind the products `gbtd` splits itself (see [`crate::tucker`]).
//!
//! Only inside a [`ThreadPolicy`] scope of `n > 1` threads (see [`crate::openblas::threads`]):
//! the calling thread plus a rayon pool of `n − 1` helpers, with OpenBLAS kept on one thread
//! meanwhile. Without a policy, items run in order on the calling thread and no thread is
//! started. Items are handed out one at a time from a shared counter: the caller works from the
//! start instead of waiting for a pool thread to wake up, and a core the host stalls for a moment
//! does not hold up the others. Callers make each item a whole BLAS call (or a sum added up in a
//! fixed order), so results never depend on who computed which item.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::openblas::{SingleThreadedBlas, ThreadPolicy};

/// A pool of `helpers` threads, started on first use and kept for later scopes of the same size;
/// `None` if it could not be started (then items run in order on the calling thread).
fn helpers(helpers: usize) -> Option<Arc<rayon::ThreadPool>> {
    static POOL: Mutex<Option<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pool.as_ref().filter(|(n, _)| *n == helpers) {
        return Some(Arc::clone(p));
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(helpers)
        .thread_name(|i| format!("gbtd-{i}"))
        .build()
        .ok()
        .map(Arc::new)?;
    *pool = Some((helpers, Arc::clone(&p)));
    Some(p)
}

/// `f(item)` for every item, in item order, computed by this thread and the helpers when
/// `parallel` and the current [`ThreadPolicy`] has several threads (with OpenBLAS kept on one
/// thread meanwhile, as the items are BLAS calls), else in order on this thread.
pub(crate) fn map_items<I, R, F>(items: Vec<I>, parallel: bool, f: F) -> Vec<R>
where
    I: Send,
    R: Send,
    F: Fn(I) -> R + Sync + Send,
{
    let threads = ThreadPolicy::current().map_or(1, |p| p.threads());
    let Some(pool) = (parallel && threads > 1 && items.len() > 1)
        .then(|| helpers(threads - 1))
        .flatten()
    else {
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
