//! Criterion benches of `gbtd` at conv-kernel sizes (PyTorch layout `(out, in, kh, kw)`, f64
//! unless stated): one HOOI / ALS sweep count fixed per bench so that an iteration stays well
//! under a second, plus the two tensor-algebra kernels the decompositions are built on.
//!
//! Run: `cargo bench --bench decompositions` (add `-- tucker2` to filter). `cargo test
//! --all-targets` runs each bench once, as a smoke test.
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gbtd::btd::{BtdOptions, btd};
use gbtd::cp::{CpOptions, parafac};
use gbtd::options::IterOptions;
use gbtd::random::{randn, randn2, rng};
use gbtd::tucker::{TuckerOptions, tucker};
use gbtd::{khatri_rao, mode_dot};
use ndarray::ArrayD;

/// He-scaled Gaussian kernel, like a freshly initialised conv weight.
fn kernel(out: usize, inp: usize, k: usize, seed: u64) -> ArrayD<f64> {
    let mut g = rng(seed);
    let scale = (2.0 / (inp * k * k) as f64).sqrt();
    randn::<f64>(&[out, inp, k, k], &mut g).mapv(|v| v * scale)
}

fn sweeps(n: usize) -> IterOptions {
    IterOptions {
        n_iter_max: n,
        tol: 0.0,
        seed: 0,
    }
}

fn decompositions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decompose");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let k256 = kernel(256, 256, 3, 1);
    let opts = TuckerOptions {
        modes: Some(vec![0, 1]),
        iter: sweeps(5),
        ..TuckerOptions::new(vec![64, 64])
    };
    group.bench_function("tucker2 (256,256,3,3) rank (64,64), 5 sweeps", |b| {
        b.iter(|| tucker(black_box(&k256.view()), &opts).unwrap())
    });
    let k256_f32 = k256.mapv(|v| v as f32);
    let opts32 = TuckerOptions {
        modes: Some(vec![0, 1]),
        iter: sweeps(5),
        ..TuckerOptions::new(vec![64, 64])
    };
    group.bench_function("tucker2 f32 (256,256,3,3) rank (64,64), 5 sweeps", |b| {
        b.iter(|| tucker(black_box(&k256_f32.view()), &opts32).unwrap())
    });

    let k128 = kernel(128, 128, 3, 2);
    let cp_opts = CpOptions {
        iter: sweeps(10),
        ..CpOptions::new(32)
    };
    group.bench_function("cp (128,128,3,3) rank 32, 10 sweeps", |b| {
        b.iter(|| parafac(black_box(&k128.view()), &cp_opts).unwrap())
    });

    let btd_opts = BtdOptions::new(8, vec![8, 8])
        .with_modes(vec![0, 1])
        .with_iter(sweeps(1));
    group.bench_function("btd (256,256,3,3) R=8 rank (8,8), 1 sweep", |b| {
        b.iter(|| btd(black_box(&k256.view()), &btd_opts).unwrap())
    });
    group.finish();
}

fn algebra(c: &mut Criterion) {
    let mut group = c.benchmark_group("algebra");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let k = kernel(256, 256, 3, 3);
    let mut g = rng(4);
    let a = randn2::<f64>(64, 256, &mut g);
    group.bench_function("mode_dot (256,256,3,3) x_1 (64x256)", |b| {
        b.iter(|| mode_dot(black_box(&k.view()), &a.view(), 1).unwrap())
    });
    group.bench_function("mode_dot (256,256,3,3) x_0 (64x256)", |b| {
        b.iter(|| mode_dot(black_box(&k.view()), &a.view(), 0).unwrap())
    });
    let mats = [
        randn2::<f64>(256, 32, &mut g),
        randn2::<f64>(9, 32, &mut g),
        randn2::<f64>(128, 32, &mut g),
    ];
    let views: Vec<_> = mats.iter().map(|m| m.view()).collect();
    group.bench_function("khatri_rao (256x32, 9x32, 128x32)", |b| {
        b.iter(|| khatri_rao(black_box(&views), None).unwrap())
    });
    group.finish();
}

criterion_group!(benches, decompositions, algebra);
criterion_main!(benches);
