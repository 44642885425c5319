//! A counting global allocator, for tests that bound what the code under test allocates: the
//! largest single request and the total of all requests since the last [`reset`].
//!
//! A test binary includes it with `#[path = "common/counting_alloc.rs"] mod counting_alloc;`
//! and installs it with `#[global_allocator] static ALLOC: counting_alloc::Counting =
//! counting_alloc::Counting;`. The counters are global: every test of such a binary takes
//! [`serial`] first, so that concurrent tests do not mix their allocations.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The system allocator, counting.
pub struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);

/// Held for its whole run by each test of a binary that reads the counters (see [`serial`]).
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the binary's test lock: a test that reads the counters, and every test that runs
/// alongside it in the same binary, holds it from start to end, so that no other test
/// allocates while one measures.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(size: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    TOTAL.fetch_add(size, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Sets both counters to zero.
pub fn reset() {
    LARGEST.store(0, Ordering::Relaxed);
    TOTAL.store(0, Ordering::Relaxed);
}

/// The largest single request (bytes) since the last [`reset`].
pub fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// The bytes requested in total since the last [`reset`] (a `realloc` counts its new size).
pub fn total() -> usize {
    TOTAL.load(Ordering::Relaxed)
}

/// Runs `f` from zeroed counters; its result and the total bytes it requested.
pub fn total_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    reset();
    let r = f();
    (r, total())
}
