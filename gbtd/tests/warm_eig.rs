//! The warm-started leading-eigenspace solver HOOI uses (`gbtd::linalg::psd_eig_top_warm`),
//! checked against matrices built from a known spectrum `G = Q·diag(λ)·Qᵀ` (`Q` orthogonal from
//! the QR of a Gaussian matrix): what it certifies is the leading eigenspace, and it declines
//! when it cannot tell.
mod common;

use common::gaussian2;
use gbtd::linalg::{WarmEig, psd_eig_top_warm, sym_eig_top};
use ndarray::{Array1, Array2, s};
use ndarray_linalg::QRInto;

/// `(G, Q)` with `G = Q diag(λ) Qᵀ`; column `i` of `Q` is the eigenvector of `λ_i`.
fn with_spectrum(lambda: &[f64], seed: u64) -> (Array2<f64>, Array2<f64>) {
    let d = lambda.len();
    let (q, _) = gaussian2(d, d, seed).qr_into().unwrap();
    let scaled = &q * &Array1::from(lambda.to_vec()).insert_axis(ndarray::Axis(0));
    (scaled.dot(&q.t()), q)
}

fn projector(u: &Array2<f64>) -> Array2<f64> {
    u.dot(&u.t())
}

fn max_abs(a: &Array2<f64>) -> f64 {
    a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Leading eigenvalues 100 − i (i < k), the other d − k in (0, 0.1]: well separated.
fn separated(d: usize, k: usize) -> Vec<f64> {
    (0..d)
        .map(|i| {
            if i < k {
                100.0 - i as f64
            } else {
                0.1 * (d - i) as f64 / d as f64
            }
        })
        .collect()
}

#[test]
fn certified_pairs_are_the_known_leading_eigenpairs() {
    let (d, k) = (60, 10);
    let lambda = separated(d, k);
    for seed in 0..10u64 {
        let (g, q) = with_spectrum(&lambda, 100 + seed);
        let exact = q.slice(s![.., ..k]).to_owned();
        // A start 0.1 away from the leading eigenvectors, orthonormalised.
        let (start, _) = (&exact + &(gaussian2(d, k, 200 + seed) * 0.1)).qr_into().unwrap();
        let WarmEig::Certified(vals, u) = psd_eig_top_warm(&g.view(), k, &start.view()).unwrap() else {
            panic!("seed {seed}: a separated spectrum with a close start must be certified");
        };
        for (i, v) in vals.iter().enumerate() {
            assert!(
                (v - lambda[i]).abs() <= 1e-10 * lambda[0],
                "seed {seed}: eigenvalue {i}: {v}"
            );
        }
        let utu = u.t().dot(&u) - Array2::<f64>::eye(k);
        assert!(max_abs(&utu) < 1e-12, "seed {seed}: columns not orthonormal");
        let diff = projector(&u) - projector(&exact);
        assert!(
            max_abs(&diff) < 1e-9,
            "seed {seed}: subspace off by {}",
            max_abs(&diff)
        );
        // And the exact solver agrees.
        let (_, v) = sym_eig_top(&g.view(), k).unwrap();
        assert!(max_abs(&(projector(&v) - projector(&u))) < 1e-9);
    }
}

#[test]
fn a_flat_spectrum_is_declined() {
    // Eigenvalues in [1, 2]: the trace bound cannot separate the leading 10 from the other 50.
    let (d, k) = (60, 10);
    let lambda: Vec<f64> = (0..d).map(|i| 2.0 - i as f64 / d as f64).collect();
    let (g, q) = with_spectrum(&lambda, 7);
    let start = q.slice(s![.., ..k]).to_owned();
    // Even the exact eigenvectors as a start are not certifiable here.
    assert!(matches!(
        psd_eig_top_warm(&g.view(), k, &start.view()).unwrap(),
        WarmEig::Uncertified
    ));
}

#[test]
fn an_invariant_but_not_leading_start_is_never_certified_wrongly() {
    // The start spans the eigenvectors of λ_{k+1..2k}: an exact invariant subspace (zero
    // residual), which the residual test alone would accept.
    let (d, k) = (60, 5);
    let lambda = separated(d, 2 * k);
    for seed in 0..10u64 {
        let (g, q) = with_spectrum(&lambda, 300 + seed);
        let start = q.slice(s![.., k..2 * k]).to_owned();
        match psd_eig_top_warm(&g.view(), k, &start.view()).unwrap() {
            WarmEig::Certified(vals, u) => {
                let diff = projector(&u) - projector(&q.slice(s![.., ..k]).to_owned());
                assert!(max_abs(&diff) < 1e-9, "seed {seed}: certified a wrong subspace");
                assert!((vals[0] - lambda[0]).abs() < 1e-9 * lambda[0]);
            }
            WarmEig::Uncertified => {}
        }
    }
}

#[test]
fn bad_shapes_are_declined_not_errors() {
    let (g, q) = with_spectrum(&separated(20, 4), 9);
    // 2k > d, a start of the wrong shape, k = 0.
    assert!(matches!(
        psd_eig_top_warm(&g.view(), 11, &q.slice(s![.., ..11]).view()).unwrap(),
        WarmEig::Uncertified
    ));
    assert!(matches!(
        psd_eig_top_warm(&g.view(), 4, &q.slice(s![.., ..3]).view()).unwrap(),
        WarmEig::Uncertified
    ));
    assert!(matches!(
        psd_eig_top_warm(&g.view(), 0, &q.slice(s![.., ..0]).view()).unwrap(),
        WarmEig::Uncertified
    ));
}
