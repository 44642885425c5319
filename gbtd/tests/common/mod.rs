//! Helpers shared by the property tests: seeded test data, a deterministic proptest
//! configuration, and a bridge to the pinned Python peers (numpy, TensorLy) through `.npy` files.
#![allow(dead_code)]

use std::path::Path;

use gbtd::random::{randn, rng};
use ndarray::{Array2, ArrayD, Dimension, IxDyn};
use ndarray_npy::{read_npy, write_npy};
use peers::run_python;
use proptest::test_runner::{Config, RngSeed};

/// A proptest configuration with `cases` cases and a fixed seed, so that CI runs are
/// reproducible.
pub fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A tensor with i.i.d. standard normal entries drawn from `seed`.
pub fn gaussian(shape: &[usize], seed: u64) -> ArrayD<f64> {
    randn::<f64>(shape, &mut rng(seed))
}

/// A matrix with i.i.d. standard normal entries drawn from `seed`.
pub fn gaussian2(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    gbtd::random::randn2::<f64>(rows, cols, &mut rng(seed))
}

/// Every multi-index of `shape` in C order.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    ArrayD::<u8>::zeros(IxDyn(shape))
        .indexed_iter()
        .map(|(i, _)| i.as_array_view().to_vec())
        .collect()
}

/// `Σ_r w_r · a_{0,r} ∘ ⋯ ∘ a_{N-1,r}`, written out elementwise.
pub fn cp_brute_force(weights: &[f64], factors: &[Array2<f64>]) -> ArrayD<f64> {
    let shape: Vec<usize> = factors.iter().map(|f| f.nrows()).collect();
    let mut out = ArrayD::<f64>::zeros(IxDyn(&shape));
    for idx in indices(&shape) {
        let mut s = 0.0;
        for (r, &w) in weights.iter().enumerate() {
            s += w * factors.iter().zip(&idx).map(|(f, &i)| f[[i, r]]).product::<f64>();
        }
        out[IxDyn(&idx)] = s;
    }
    out
}

/// Runs `script` with the pinned Python (tests calling it first check `peers::available`):
/// `inputs` are written as `NAME.npy` into a fresh
/// temporary directory whose path is `sys.argv[1]`; the script writes each of `outputs` as
/// `NAME.npy` there, and they are read back (as `f64`).
pub fn python_npy(script: &str, inputs: &[(&str, &ArrayD<f64>)], outputs: &[&str]) -> Vec<ArrayD<f64>> {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, arr) in inputs {
        write_npy(dir.path().join(format!("{name}.npy")), *arr).expect("write .npy");
    }
    let path = dir.path().to_str().expect("utf-8 temp path");
    let prelude = "import sys, os, numpy as np\nD = sys.argv[1]\n\
                   load = lambda n: np.load(os.path.join(D, n + '.npy'))\n\
                   save = lambda n, a: np.save(os.path.join(D, n + '.npy'), np.asarray(a, dtype=np.float64))\n";
    let full = format!("{prelude}{script}");
    if let Err(e) = run_python(&full, &[path]) {
        panic!("Python peer failed: {e}");
    }
    outputs.iter().map(|name| read_back(dir.path(), name)).collect()
}

fn read_back(dir: &Path, name: &str) -> ArrayD<f64> {
    read_npy(dir.join(format!("{name}.npy"))).unwrap_or_else(|e| panic!("read {name}.npy: {e}"))
}

/// Largest absolute entrywise difference of two tensors of equal shape.
pub fn max_abs_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
