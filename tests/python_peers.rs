//! Smoke test: the pinned Python peers in `.venv` run and agree with Rust.
//! numpy computes singular values and TensorLy an unfolding of tensors Rust wrote as `.npy`;
//! Rust checks them against its own LAPACK SVD and unfolding.
use approx::assert_abs_diff_eq;
use ndarray::{Array2, ArrayD, IxDyn};
use ndarray_npy::{read_npy, write_npy};
use peers::run_python;

#[test]
fn numpy_and_tensorly_agree_with_rust() {
    if !peers::available("numpy_and_tensorly_agree_with_rust") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = Array2::from_shape_fn((6, 4), |(i, j)| {
        ((i * 7 + j * 3) % 5) as f64 - 1.5 + 0.1 * j as f64
    });
    let x = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |ix| (ix[0] * 100 + ix[1] * 10 + ix[2]) as f64);
    let mp = dir.path().join("m.npy");
    let xp = dir.path().join("x.npy");
    let sp = dir.path().join("s.npy");
    let up = dir.path().join("u.npy");
    write_npy(&mp, &m).unwrap();
    write_npy(&xp, &x).unwrap();

    let out = run_python(
        r#"
import sys, numpy as np, tensorly as tl, torch, torchvision
m = np.load(sys.argv[1]); x = np.load(sys.argv[2])
np.save(sys.argv[3], np.linalg.svd(m, compute_uv=False))
np.save(sys.argv[4], tl.unfold(tl.tensor(x), 1))
print(tl.__version__, torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])
"#,
        &[
            mp.to_str().unwrap(),
            xp.to_str().unwrap(),
            sp.to_str().unwrap(),
            up.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(out.trim(), "0.10.0 2.13.0 0.28.0", "pinned peer versions");

    let s_np: ndarray::Array1<f64> = read_npy(&sp).unwrap();
    let s_rs = gbtd::linalg::singular_values(&m.view()).unwrap();
    for (a, b) in s_np.iter().zip(s_rs.iter()) {
        assert_abs_diff_eq!(a, b, epsilon = 1e-12);
    }
    let u_tl: Array2<f64> = read_npy(&up).unwrap();
    let u_rs = gbtd::unfold(&x.view(), 1).unwrap();
    assert_eq!(u_tl, u_rs);
}
