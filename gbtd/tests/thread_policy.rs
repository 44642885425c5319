//! The thread policy (`gbtd::openblas::threads`): the library leaves OpenBLAS's process-wide
//! thread count alone unless a policy is entered, and one-thread guards restore it in any order.
//!
//! In a test binary of its own, the tests one at a time: OpenBLAS's thread count is process-wide.
use std::sync::Mutex;

use gbtd::openblas::{SingleThreadedBlas, ThreadPolicy, ffi};

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn guards_act_only_inside_a_policy_and_restore_in_any_order() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let original = ffi::num_threads();

    // No policy: the library leaves OpenBLAS alone.
    assert_eq!(ThreadPolicy::current(), None);
    {
        let g = SingleThreadedBlas::new();
        assert!(!g.is_active());
        assert_eq!(ffi::num_threads(), original);
    }

    {
        let _scope = ThreadPolicy::new(3).enter();
        assert_eq!(ThreadPolicy::current().map(|p| p.threads()), Some(3));
        // Possibly above the core count: a policy sets the count it names.
        assert_eq!(ffi::num_threads(), 3);
        let a = SingleThreadedBlas::new();
        let b = SingleThreadedBlas::for_work(1.0).expect("small work gets a guard");
        assert!(a.is_active() && b.is_active());
        assert_eq!(ffi::num_threads(), 1);
        assert!(SingleThreadedBlas::for_work(1e12).is_none());
        // Dropped out of creation order: the count comes back only after the last one.
        drop(a);
        assert_eq!(ffi::num_threads(), 1);
        drop(b);
        assert_eq!(ffi::num_threads(), 3);
        {
            let _inner = ThreadPolicy::new(2).enter();
            assert_eq!(ffi::num_threads(), 2);
        }
        assert_eq!(ThreadPolicy::current().map(|p| p.threads()), Some(3));
        assert_eq!(ffi::num_threads(), 3);
        // Another thread has no policy, and its guards do nothing.
        std::thread::spawn(|| {
            assert_eq!(ThreadPolicy::current(), None);
            assert!(!SingleThreadedBlas::new().is_active());
        })
        .join()
        .unwrap();
        assert_eq!(ffi::num_threads(), 3);
    }
    assert_eq!(ThreadPolicy::current(), None);
    assert_eq!(ffi::num_threads(), original);
}

/// Inside a small decomposition (progress callbacks run between sweeps), OpenBLAS keeps the
/// process's thread count without a policy, and runs on one thread with one.
#[test]
fn a_small_decomposition_changes_openblas_only_under_a_policy() {
    use gbtd::tucker::{TuckerOptions, tucker};
    // Tests in this binary run concurrently and the count is process-wide.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let x = gbtd::random::randn::<f64>(&[30, 30, 30], &mut gbtd::random::rng(5));
    let seen = |x: &ndarray::ArrayD<f64>| {
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |_: usize, _: f64| seen.borrow_mut().push(ffi::num_threads());
        let opts = TuckerOptions::new(vec![4, 4, 4]).with_progress(&record);
        tucker(&x.view(), &opts).unwrap();
        let seen = seen.into_inner();
        assert!(!seen.is_empty());
        seen
    };
    // Two threads even on a one-core machine, so that a switch to one would show.
    ffi::set_num_threads(2);
    assert!(
        seen(&x).iter().all(|&n| n == 2),
        "the library changed OpenBLAS's thread count"
    );
    assert_eq!(ffi::num_threads(), 2);
    {
        let _scope = ThreadPolicy::new(2).enter();
        assert!(
            seen(&x).iter().all(|&n| n == 1),
            "a small problem under a policy runs on one thread"
        );
        assert_eq!(ffi::num_threads(), 2);
    }
}
