//! The thread policy: whether gbtd may change OpenBLAS's process-wide thread count and run
//! threads of its own, chosen by the program that owns the process.
//!
//! **Default (no policy entered): nothing.** The library never calls `openblas_set_num_threads`,
//! never joins OpenBLAS's workers and starts no threads: every BLAS call runs with the thread
//! count the process has (`OPENBLAS_NUM_THREADS` or what the program set), and medium products
//! are computed on the calling thread in the same fixed pieces as below.
//!
//! **Inside a [`ThreadPolicy`] scope** (on the thread that entered it), with `n` threads:
//! - OpenBLAS runs with `n` threads (set on entry, restored on exit), even above the number of
//!   cores;
//! - decompositions of small problems (below [`crate::linalg::SMALL_BLAS_WORK`] flops per product)
//!   run with OpenBLAS on one thread ([`SingleThreadedBlas`]): their thousands of small BLAS calls
//!   would each pay a thread hand-off (on 2 cores that made HOOI of a 100³ tensor twice slower);
//! - their medium products go in fixed pieces over the calling thread and `n − 1` workers
//!   ([`crate::parallel`]);
//! - with [`ThreadPolicy::parking`], switching OpenBLAS to one thread also joins its idle workers
//!   ([`super::ffi::join_idle_workers`]).
//!
//! Every output entry comes from the same BLAS calls whatever `n` is, so a decomposition gives
//! bitwise the same factors at any thread count under a policy.
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Mutex;

use super::ffi;

/// How gbtd's decompositions use threads, for the thread that enters it ([`ThreadPolicy::enter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadPolicy {
    threads: usize,
    park: bool,
}

impl ThreadPolicy {
    /// `threads` threads (at least 1) for OpenBLAS and gbtd's workers; no parking.
    pub fn new(threads: usize) -> Self {
        ThreadPolicy {
            threads: threads.max(1),
            park: false,
        }
    }

    /// [`default_threads`] threads.
    pub fn from_env() -> Self {
        Self::new(default_threads())
    }

    /// The same policy that also joins OpenBLAS's idle workers whenever it switches OpenBLAS to
    /// one thread. Measured with `examples/blas_parking.rs`: inside a one-thread scope the idle
    /// worker still burnt 0.01–0.05 s of CPU while the process slept 0.3 s, against none when
    /// parked. Does nothing with an OpenBLAS that cannot join its workers.
    ///
    /// # Safety
    /// While the policy is entered, no other thread of the process may make BLAS or LAPACK calls
    /// except through gbtd's own workers (the `gbtd` CLI makes all its BLAS calls from the
    /// decomposition it runs).
    pub unsafe fn parking(self) -> Self {
        ThreadPolicy { park: true, ..self }
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether it joins OpenBLAS's idle workers.
    pub fn parks(&self) -> bool {
        self.park
    }

    /// Applies the policy on this thread until the returned scope is dropped (scopes nest; the
    /// previous policy and OpenBLAS thread count come back on drop).
    pub fn enter(self) -> PolicyScope {
        let previous = CURRENT.with(|c| c.replace(Some(self)));
        let blas_threads = ffi::num_threads();
        ffi::set_num_threads(self.threads);
        PolicyScope {
            previous,
            blas_threads,
            _not_send: PhantomData,
        }
    }

    /// The policy entered on this thread, if any.
    pub fn current() -> Option<ThreadPolicy> {
        CURRENT.with(|c| c.get())
    }
}

thread_local! {
    static CURRENT: Cell<Option<ThreadPolicy>> = const { Cell::new(None) };
}

/// The extent of an entered [`ThreadPolicy`]; restores the previous state on drop. Not `Send`:
/// it must be dropped on the thread that entered it.
#[derive(Debug)]
pub struct PolicyScope {
    previous: Option<ThreadPolicy>,
    blas_threads: usize,
    _not_send: PhantomData<*const ()>,
}

impl Drop for PolicyScope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
        ffi::set_num_threads(self.blas_threads);
    }
}

/// The thread count a program gets by default: `OPENBLAS_NUM_THREADS` when set (capped by the
/// hardware parallelism, as OpenBLAS caps it), else the hardware parallelism.
pub fn default_threads() -> usize {
    let hw = std::thread::available_parallelism().map_or(1, |n| n.get());
    let env = std::env::var("OPENBLAS_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    env.map_or(hw, |e| e.min(hw)).max(1)
}

/// Nesting depth of live one-thread guards and the thread count to restore after the last.
static SINGLE: Mutex<(usize, usize)> = Mutex::new((0, 0));

/// While alive, keeps OpenBLAS on one thread, if the current thread's [`ThreadPolicy`] allows
/// it; otherwise does nothing. Guards are counted process-wide: the first one switches OpenBLAS
/// to one thread, the last one dropped restores the count, in whatever order they go.
#[derive(Debug)]
pub struct SingleThreadedBlas {
    active: bool,
}

impl SingleThreadedBlas {
    /// One OpenBLAS thread until the guard is dropped (inside a policy scope).
    pub fn new() -> Self {
        let Some(policy) = ThreadPolicy::current() else {
            return SingleThreadedBlas { active: false };
        };
        let mut s = SINGLE.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == 0 {
            s.1 = ffi::num_threads();
            if s.1 > 1 {
                ffi::set_num_threads(1);
                if policy.park {
                    // SAFETY: `ThreadPolicy::parking`'s caller guarantees that no other BLAS
                    // call is in flight; this thread makes none while creating the guard.
                    unsafe { ffi::join_idle_workers() };
                }
            }
        }
        s.0 += 1;
        SingleThreadedBlas { active: true }
    }

    /// A guard if `work` (floating-point operations of the typical BLAS call) is below
    /// [`crate::linalg::SMALL_BLAS_WORK`], else `None` (OpenBLAS keeps its thread count).
    pub fn for_work(work: f64) -> Option<Self> {
        (work < crate::linalg::SMALL_BLAS_WORK).then(Self::new)
    }

    /// Whether this guard holds OpenBLAS on one thread (false outside a policy scope).
    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl Default for SingleThreadedBlas {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SingleThreadedBlas {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let mut s = SINGLE.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= 1;
        if s.0 == 0 && s.1 > 1 {
            ffi::set_num_threads(s.1);
        }
    }
}
