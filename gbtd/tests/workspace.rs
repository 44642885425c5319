//! The memory estimates that decompositions check before allocating
//! (`gbtd::{cp,btd,tucker}::workspace_bytes`, refused above `gbtd::options::workspace_limit`):
//! measured against the real peak of live heap bytes (a counting allocator) on small problems,
//! and oversized requests refused without any large allocation.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use gbtd::GbtdError;
use gbtd::btd::{BtdOptions, btd};
use gbtd::cp::{CpOptions, parafac};
use gbtd::tucker::{TuckerOptions, tucker};
use ndarray::{ArrayD, IxDyn};

/// Tracks the bytes currently allocated and their peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Old and new blocks may coexist during the copy.
        grow(new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak live bytes above the level at the start while `f` runs, and `f`'s result.
fn measure<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (PEAK.load(Ordering::Relaxed).saturating_sub(base), r)
}

fn tensor(shape: &[usize]) -> ArrayD<f64> {
    let mut k = 0.0_f64;
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        k += 1.0;
        (k * 0.7311).sin() + 0.1 * (k * 0.13).cos()
    })
}

/// Bookkeeping that does not scale with the problem (option structs, small vectors, error
/// records) is not in the estimates; they must hold up to this many bytes.
const FIXED_SLACK: u128 = 256 << 10;

/// Checks `peak <= estimate + FIXED_SLACK` and prints both.
fn bounded(what: String, peak: usize, est: u128) {
    eprintln!("{what}: peak {peak} bytes, estimate {est} bytes");
    assert!(
        peak as u128 <= est + FIXED_SLACK,
        "{what}: peak {peak} > estimate {est}"
    );
}

/// One test (the allocator is global: concurrent tests would mix their counts).
#[test]
fn estimates_bound_the_measured_peak_and_oversized_runs_are_refused() {
    let e = std::mem::size_of::<f64>();
    for (shape, r) in [
        (vec![6, 5, 4], 3),
        (vec![6, 5, 4], 10),
        (vec![8, 6, 3, 3], 5),
        (vec![16, 12, 3, 3], 20),
        (vec![96, 64, 3, 3], 40),
        (vec![40, 30, 20], 300),
    ] {
        let x = tensor(&shape);
        let opts = CpOptions::new(r).with_n_iter_max(3);
        let (peak, res) = measure(|| parafac(&x.view(), &opts));
        res.unwrap();
        let est = gbtd::cp::workspace_bytes(&shape, r, e);
        bounded(format!("CP {shape:?} rank {r}"), peak, est);
    }
    for (shape, modes, rank, terms) in [
        (vec![8, 6, 3, 3], vec![0, 1], vec![2, 2], 3),
        (vec![8, 6, 3, 3], vec![0, 1], vec![2, 2], 5),
        (vec![6, 5, 4], vec![0, 1, 2], vec![2, 2, 2], 2),
        (vec![16, 12, 3, 3], vec![0, 1], vec![4, 3], 4),
        (vec![96, 64, 3, 3], vec![0, 1], vec![16, 8], 4),
        (vec![32, 16, 3, 3], vec![0, 1], vec![4, 4], 40),
        // Above DIRECT_CORE_SOLVE_MAX core unknowns (2·48·24): block Gauss–Seidel core updates.
        (vec![96, 64, 1, 1], vec![0, 1], vec![48, 24], 2),
    ] {
        let x = tensor(&shape);
        let opts = BtdOptions::new(terms, rank.clone())
            .with_modes(modes.clone())
            .with_n_iter_max(3);
        let (peak, res) = measure(|| btd(&x.view(), &opts));
        res.unwrap();
        let est = gbtd::btd::workspace_bytes(&shape, &modes, &rank, terms, e);
        bounded(format!("BTD {shape:?} {terms}x{rank:?}"), peak, est);
    }
    for (shape, modes, rank) in [
        (vec![8, 6, 3, 3], vec![0, 1], vec![3, 2]),
        (vec![8, 6, 3, 3], vec![0, 1, 2, 3], vec![3, 2, 2, 2]),
        (vec![40, 3, 2], vec![0], vec![5]),
        (vec![96, 64, 3, 3], vec![0, 1], vec![24, 16]),
        (vec![600, 200], vec![0, 1], vec![10, 10]),
    ] {
        let x = tensor(&shape);
        let opts = TuckerOptions::new(rank.clone())
            .with_modes(modes.clone())
            .with_n_iter_max(3);
        let (peak, res) = measure(|| tucker(&x.view(), &opts));
        res.unwrap();
        let est = gbtd::tucker::workspace_bytes(&shape, &modes, &rank, e);
        bounded(format!("Tucker {shape:?} {rank:?}"), peak, est);
    }

    // Refused at once: CP rank 100000 (a 100000² Gram matrix, 80 GB) and a BTD of a million
    // rank-(1,1) terms on a small kernel; nothing near that size is allocated.
    let x = tensor(&[6, 4, 3, 3]);
    let (peak, res) = measure(|| parafac(&x.view(), &CpOptions::new(100_000)));
    match res {
        Err(GbtdError::Memory(msg)) => assert!(msg.contains("bytes"), "{msg}"),
        other => panic!("CP rank 100000 not refused: {other:?}"),
    }
    assert!(peak < 1 << 20, "refusing CP allocated {peak} bytes");
    let opts = BtdOptions::new(1_000_000, vec![1, 1]).with_modes(vec![0, 1]);
    let (peak, res) = measure(|| btd(&x.view(), &opts));
    assert!(matches!(res, Err(GbtdError::Memory(_))), "{res:?}");
    assert!(peak < 1 << 20, "refusing BTD allocated {peak} bytes");
    // A wide matrix: Tucker on its 10⁶-long mode would need a 10⁶ × 10⁶ Gram matrix.
    let x = ArrayD::<f64>::zeros(IxDyn(&[1_000_000, 1]));
    let (peak, res) = measure(|| tucker(&x.view(), &TuckerOptions::new(vec![1]).with_modes(vec![0])));
    assert!(matches!(res, Err(GbtdError::Memory(_))), "{res:?}");
    assert!(peak < 1 << 20, "refusing Tucker allocated {peak} bytes");
}
