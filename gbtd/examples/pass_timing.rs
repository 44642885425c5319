//! Times the three ways of computing one pass of HOOI / CP-ALS over a 100³ tensor, `Aᵀ · X_(0)`
//! with `X_(0)` `100 × 10⁴` and `A` `100 × 10` (the comparison behind `split` in gbtd's layout
//! module): one OpenBLAS call on all its threads, 512-column calls on one thread, and those calls shared
//! out over a rayon pool (`gbtd::parallel` also lets the calling thread take chunks). Best of 300.
//!
//! `OPENBLAS_NUM_THREADS=2 cargo run --release -p gbtd --example pass_timing`
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;
use std::time::Instant;

fn chunked(a: &ArrayView2<'_, f64>, x: &ArrayView2<'_, f64>, mut out: ArrayViewMut2<'_, f64>) {
    for (xc, mut oc) in x
        .axis_chunks_iter(Axis(1), 512)
        .zip(out.axis_chunks_iter_mut(Axis(1), 512))
    {
        general_mat_mul(1.0, &a.t(), &xc, 0.0, &mut oc);
    }
}

fn best_of<F: FnMut()>(mut f: F) -> f64 {
    (0..300)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let x = Array2::<f64>::from_shape_fn((100, 10_000), |(i, j)| {
        ((i * 7919 + j * 104_729) % 1000) as f64 / 1e3
    });
    let a = Array2::<f64>::from_shape_fn((100, 10), |(i, j)| ((i * 13 + j * 7) % 17) as f64);
    let mut out = Array2::<f64>::zeros((10, 10_000));
    let threads = gbtd::openblas::default_threads();
    // As the gbtd CLI does: OpenBLAS on `threads` threads, and one-thread scopes take effect.
    let _scope = gbtd::openblas::ThreadPolicy::new(threads).enter();
    let one_call = best_of(|| general_mat_mul(1.0, &a.t(), &x, 0.0, &mut out));
    let _single = gbtd::openblas::SingleThreadedBlas::new();
    let chunks_one_thread = best_of(|| chunked(&a.view(), &x.view(), out.view_mut()));
    let per = 10_000usize.div_ceil(512).div_ceil(threads) * 512;
    let chunks_split = best_of(|| {
        let parts: Vec<_> = x
            .axis_chunks_iter(Axis(1), per)
            .zip(out.axis_chunks_iter_mut(Axis(1), per))
            .collect();
        parts
            .into_par_iter()
            .for_each(|(xp, op)| chunked(&a.view(), &xp, op));
    });
    println!("one OpenBLAS call, {threads} OpenBLAS threads: {one_call:.3} ms");
    println!("512-column calls, one thread:        {chunks_one_thread:.3} ms");
    println!("512-column calls over {threads} rayon threads: {chunks_split:.3} ms");
}
