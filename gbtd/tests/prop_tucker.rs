//! Property tests of the Tucker decompositions (issue 3, property 4): full-rank Tucker is exact,
//! HOSVD and ST-HOSVD obey the discarded-singular-value bound (singular values from LAPACK
//! `gesdd`, independent of the Gram-matrix path the decompositions use), HOOI never does worse
//! than its HOSVD start, partial Tucker leaves the other modes whole, and the fit agrees with the
//! pinned TensorLy. Plus the typed error paths.
mod common;

use common::{config, gaussian, gaussian2, max_abs_diff, python_npy};
use gbtd::linalg::singular_values;
use gbtd::options::{Init, IterOptions};
use gbtd::tensor::{mode_dot, relative_error, unfold};
use gbtd::tucker::{
    Tucker, TuckerOptions, hosvd, leading_unfolding_vectors, st_hosvd, tucker, unfolding_gram,
};
use gbtd::{GbtdError, Real};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use ndarray_linalg::{JobSvd, SVDDC};
use proptest::prelude::*;

fn iter(n: usize, seed: u64) -> IterOptions {
    IterOptions {
        n_iter_max: n,
        tol: 0.0,
        seed,
    }
}

/// A shape of order 2..=4 with dimensions 1..=6, a rank `1..=d` per mode, and a seed.
fn shape_rank_seed() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, u64)> {
    prop::collection::vec(1usize..=6, 2..=4).prop_flat_map(|shape| {
        let ranks: Vec<_> = shape.iter().map(|&d| 1usize..=d).collect();
        (Just(shape), ranks, any::<u64>())
    })
}

/// `Σ_n Σ_{i>r_n} σ_i(X_(n))²` over the factorized modes, from `gesdd`.
fn discarded_energy(x: &ArrayD<f64>, rank: &[usize], modes: &[usize]) -> f64 {
    modes
        .iter()
        .zip(rank)
        .map(|(&m, &r)| {
            let s = singular_values(&unfold(&x.view(), m).unwrap().view()).unwrap();
            s.iter().skip(r).map(|v| v * v).sum::<f64>()
        })
        .sum()
}

fn sq_norm(x: &ArrayD<f64>) -> f64 {
    x.iter().map(|v| v * v).sum()
}

/// `‖AᵀA − I‖_max` for a matrix meant to have orthonormal columns.
fn orthonormality_defect(a: &Array2<f64>) -> f64 {
    let g = a.t().dot(a);
    let eye = Array2::<f64>::eye(a.ncols());
    (&g - &eye).iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Checks shapes, orthonormal factors, and that the tracked error equals the error of the
/// reconstruction (compared as squares, which the tracking formula computes).
fn check_structure(t: &Tucker<f64>, x: &ArrayD<f64>, rank: &[usize], modes: &[usize]) -> f64 {
    let mut core_shape = x.shape().to_vec();
    for (&m, &r) in modes.iter().zip(rank) {
        core_shape[m] = r;
    }
    assert_eq!(t.core.shape(), &core_shape[..]);
    assert_eq!(t.modes, modes);
    for ((f, &m), &r) in t.factors.iter().zip(modes).zip(rank) {
        assert_eq!(f.dim(), (x.shape()[m], r));
        assert!(
            orthonormality_defect(f) < 1e-10,
            "factor of mode {m} not orthonormal"
        );
    }
    let rec = t.reconstruct().unwrap();
    let true_err = relative_error(&x.view(), &rec.view()).unwrap();
    let tracked = t.convergence.rel_error();
    assert!(
        (tracked * tracked - true_err * true_err).abs() < 1e-12,
        "tracked error {tracked} vs reconstruction error {true_err}"
    );
    true_err
}

proptest! {
    #![proptest_config(config(24, 0xB4))]

    #[test]
    fn full_rank_tucker_reconstructs_exactly((shape, _r, seed) in shape_rank_seed()) {
        let x = gaussian(&shape, seed);
        let modes: Vec<usize> = (0..shape.len()).collect();
        let full = shape.clone();
        for t in [
            hosvd(&x.view(), &TuckerOptions::new(full.to_vec())).unwrap(),
            st_hosvd(&x.view(), &TuckerOptions::new(full.to_vec())).unwrap(),
            tucker(&x.view(), &TuckerOptions { iter: iter(2, seed), ..TuckerOptions::new(full.clone()) }).unwrap(),
        ] {
            let err = check_structure(&t, &x, &full, &modes);
            prop_assert!(err < 1e-12, "full-rank error {err}");
        }
    }

    #[test]
    fn hosvd_error_is_bounded_by_discarded_singular_values((shape, rank, seed) in shape_rank_seed()) {
        let x = gaussian(&shape, seed);
        let modes: Vec<usize> = (0..shape.len()).collect();
        let t = hosvd(&x.view(), &TuckerOptions::new(rank.to_vec())).unwrap();
        let err = check_structure(&t, &x, &rank, &modes);
        let bound = discarded_energy(&x, &rank, &modes);
        let lhs = err * err * sq_norm(&x);
        prop_assert!(lhs <= bound * (1.0 + 1e-10) + 1e-12, "‖X − X̂‖² = {lhs} > {bound}");
    }

    #[test]
    fn st_hosvd_error_is_bounded_by_discarded_singular_values((shape, rank, seed) in shape_rank_seed()) {
        let x = gaussian(&shape, seed);
        let modes: Vec<usize> = (0..shape.len()).collect();
        let t = st_hosvd(&x.view(), &TuckerOptions::new(rank.to_vec())).unwrap();
        let err = check_structure(&t, &x, &rank, &modes);
        let bound = discarded_energy(&x, &rank, &modes);
        let lhs = err * err * sq_norm(&x);
        prop_assert!(lhs <= bound * (1.0 + 1e-10) + 1e-12, "‖X − X̂‖² = {lhs} > {bound}");
    }

    #[test]
    fn hooi_error_never_exceeds_hosvd_error((shape, rank, seed) in shape_rank_seed(), sweeps in 1usize..=6) {
        let x = gaussian(&shape, seed);
        let modes: Vec<usize> = (0..shape.len()).collect();
        let h = hosvd(&x.view(), &TuckerOptions::new(rank.to_vec())).unwrap();
        let h_err = relative_error(&x.view(), &h.reconstruct().unwrap().view()).unwrap();
        let t = tucker(&x.view(), &TuckerOptions { iter: iter(sweeps, seed), ..TuckerOptions::new(rank.clone()) }).unwrap();
        let t_err = check_structure(&t, &x, &rank, &modes);
        prop_assert!(t_err <= h_err + 1e-10, "HOOI {t_err} > HOSVD {h_err}");
        // Started from HOSVD, and monotone from there on.
        let e = &t.convergence.errors;
        prop_assert_eq!(e.len(), sweeps + 1);
        prop_assert_eq!(t.convergence.iterations, sweeps);
        let h0 = h.convergence.rel_error();
        prop_assert!((e[0] * e[0] - h0 * h0).abs() < 1e-12, "start {} vs HOSVD {h0}", e[0]);
        // (The tracked errors resolve about sqrt(ε) ≈ 1.5e-8 relative: ‖X‖² − ‖G‖² cancels.)
        for w in e.windows(2) {
            prop_assert!(w[1] <= w[0] + 1e-7, "error went up: {:?}", e);
        }
    }

    #[test]
    fn partial_tucker_on_channel_modes_leaves_spatial_modes_intact(
        out in 2usize..=7, inp in 2usize..=7, k in 1usize..=3, seed in any::<u64>(), r0p in 0usize..7, r1p in 0usize..7,
    ) {
        let (r0, r1) = (1 + r0p % out, 1 + r1p % inp);
        let x = gaussian(&[out, inp, k, k], seed);
        let opts = TuckerOptions { modes: Some(vec![0, 1]), iter: iter(4, seed), ..TuckerOptions::new(vec![r0, r1]) };
        let t = tucker(&x.view(), &opts).unwrap();
        let err = check_structure(&t, &x, &[r0, r1], &[0, 1]);
        prop_assert_eq!(t.core.shape(), &[r0, r1, k, k]);
        prop_assert_eq!(t.n_params(), r0 * r1 * k * k + out * r0 + inp * r1);
        // X̂ is X projected on the two factor spaces: X ×0 (A0 A0ᵀ) ×1 (A1 A1ᵀ), spatial modes whole.
        let p0 = t.factors[0].dot(&t.factors[0].t());
        let p1 = t.factors[1].dot(&t.factors[1].t());
        let proj = mode_dot(&mode_dot(&x.view(), &p0.view(), 0).unwrap().view(), &p1.view(), 1).unwrap();
        prop_assert!(max_abs_diff(&t.reconstruct().unwrap(), &proj) < 1e-12);
        let bound = discarded_energy(&x, &[r0, r1], &[0, 1]);
        prop_assert!(err * err * sq_norm(&x) <= bound * (1.0 + 1e-10) + 1e-12);
        // The builder spelling of the same options is the same computation, and reports every
        // sweep, with its error, to the progress callback.
        let seen = std::cell::RefCell::new(Vec::new());
        let t2 = {
            let record = |sweep: usize, e: f64| seen.borrow_mut().push((sweep, e));
            let built = TuckerOptions::new(vec![r0, r1])
                .with_modes(vec![0, 1])
                .with_iter(iter(4, seed))
                .with_progress(&record);
            tucker(&x.view(), &built).unwrap()
        };
        prop_assert_eq!(&t2.core, &t.core);
        let seen = seen.into_inner();
        prop_assert_eq!(seen.len(), t2.convergence.iterations);
        for (i, &(sweep, e)) in seen.iter().enumerate() {
            prop_assert_eq!(sweep, i + 1);
            prop_assert_eq!(e, t2.convergence.errors[i + 1]);
        }
    }
}

/// `(U, σ)` of `X_(mode)` by a plain LAPACK `gesdd` of the materialised unfolding: the reference
/// for the Gram-matrix path.
fn reference_leading(x: &ArrayD<f64>, mode: usize, k: usize) -> (Array2<f64>, Array1<f64>) {
    let m = unfold(&x.view(), mode).unwrap();
    let job = if k > m.nrows().min(m.ncols()) {
        JobSvd::All
    } else {
        JobSvd::Some
    };
    let (u, s, _) = m.svddc(job).unwrap();
    let u = u.unwrap();
    let mut sv = Array1::zeros(k);
    for i in 0..k.min(s.len()) {
        sv[i] = s[i];
    }
    (u.slice(ndarray::s![.., ..k]).to_owned(), sv)
}

/// The leading vectors and Gram matrices agree with a plain SVD / product of the materialised
/// unfolding on shapes that exercise every storage path: first and last modes, a middle mode
/// with narrow slices (moved by a copy) and with wide slices (per-slice products), and tall
/// unfoldings (`gesdd`, with an orthonormal completion when `k` exceeds the rank).
#[test]
fn leading_vectors_and_grams_match_plain_svd_on_every_layout_path() {
    let cases: [(&[usize], usize, usize); 7] = [
        (&[9, 4, 5], 0, 3),
        (&[4, 5, 9], 2, 4),
        (&[3, 8, 5], 1, 4),
        (&[2, 7, 70], 1, 5),
        (&[40, 2, 3], 0, 4),
        (&[12, 2, 2], 0, 7),
        (&[3, 30, 2, 2], 1, 6),
    ];
    for (c, &(shape, mode, k)) in cases.iter().enumerate() {
        let x = gaussian(shape, 500 + c as u64);
        let m = unfold(&x.view(), mode).unwrap();
        let g = unfolding_gram(&x.view(), mode).unwrap();
        let g_ref = m.dot(&m.t());
        assert!(
            max_abs_diff(&g.into_dyn(), &g_ref.into_dyn()) < 1e-10,
            "case {c}: Gram"
        );
        let (u, s) = leading_unfolding_vectors(&x.view(), mode, k).unwrap();
        let (u_ref, s_ref) = reference_leading(&x, mode, k);
        assert!(orthonormality_defect(&u) < 1e-10, "case {c}: orthonormal");
        for i in 0..k {
            assert!(
                (s[i] - s_ref[i]).abs() < 1e-8 * (1.0 + s_ref[0]),
                "case {c}: σ_{i} {} vs {}",
                s[i],
                s_ref[i]
            );
        }
        // Compare the spans of the vectors with a nonzero singular value (the completion of a
        // rank-deficient unfolding is any orthonormal basis of the rest).
        let nz = (0..k).filter(|&i| s_ref[i] > 1e-8).count();
        let span = |a: &Array2<f64>| {
            let a = a.slice(ndarray::s![.., ..nz]).to_owned();
            a.dot(&a.t())
        };
        assert!(
            max_abs_diff(&span(&u).into_dyn(), &span(&u_ref).into_dyn()) < 1e-8,
            "case {c}: span"
        );
        // Signs: the largest-magnitude entry of each column is positive (TensorLy's svd_flip).
        for col in u.columns() {
            let big = col
                .iter()
                .fold(0.0f64, |b, &v| if v.abs() > b.abs() { v } else { b });
            assert!(big > 0.0, "case {c}: sign convention");
        }
    }
}

/// HOOI (`tucker` on all modes and on modes 0 and 1, SVD init, fixed sweeps) reaches the same fit and the same
/// factor subspaces as TensorLy 0.10 on the same data.
#[test]
fn tucker_fit_matches_tensorly() {
    if !peers::available("tucker_fit_matches_tensorly") {
        return;
    }
    // (a) low multilinear rank plus noise, (b) a conv kernel for Tucker-2, (c) Gaussian noise.
    let core = gaussian(&[2, 3, 4], 1);
    let mut a = core.clone();
    for (m, d) in [(0usize, 6usize), (1, 7), (2, 8)] {
        a = mode_dot(&a.view(), &gaussian2(d, a.shape()[m], 10 + m as u64).view(), m).unwrap();
    }
    a = &a + &(gaussian(&[6, 7, 8], 2) * 0.01);
    let b = gaussian(&[8, 6, 3, 3], 3);
    let c = gaussian(&[5, 6, 4], 4);
    let script = r#"
import tensorly as tl
from tensorly.decomposition import tucker, partial_tucker
def err(x, t): return np.linalg.norm(x - tl.tucker_to_tensor(t)) / np.linalg.norm(x)
a, b, c = load('a'), load('b'), load('c')
ta = tucker(a, rank=[2, 3, 4], n_iter_max=10, init='svd', tol=0)
save('ea', [err(a, ta)])
for i, f in enumerate(ta.factors): save(f'pa{i}', f @ f.T)
(cb, fb), _ = partial_tucker(b, rank=[3, 2], modes=[0, 1], n_iter_max=10, init='svd', tol=0)
xb = tl.tenalg.multi_mode_dot(cb, fb, modes=[0, 1])
save('eb', [np.linalg.norm(b - xb) / np.linalg.norm(b)])
for i, f in enumerate(fb): save(f'pb{i}', f @ f.T)
tc = tucker(c, rank=[2, 3, 2], n_iter_max=10, init='svd', tol=0)
save('ec', [err(c, tc)])
"#;
    let out = python_npy(
        script,
        &[("a", &a), ("b", &b), ("c", &c)],
        &["ea", "pa0", "pa1", "pa2", "eb", "pb0", "pb1", "ec"],
    );
    let ta = tucker(
        &a.view(),
        &TuckerOptions {
            iter: iter(10, 0),
            ..TuckerOptions::new(vec![2, 3, 4])
        },
    )
    .unwrap();
    let tb = tucker(
        &b.view(),
        &TuckerOptions {
            modes: Some(vec![0, 1]),
            iter: iter(10, 0),
            ..TuckerOptions::new(vec![3, 2])
        },
    )
    .unwrap();
    let tc = tucker(
        &c.view(),
        &TuckerOptions {
            iter: iter(10, 0),
            ..TuckerOptions::new(vec![2, 3, 2])
        },
    )
    .unwrap();
    let rel = |t: &Tucker<f64>, x: &ArrayD<f64>| {
        relative_error(&x.view(), &t.reconstruct().unwrap().view()).unwrap()
    };
    assert!(
        (rel(&ta, &a) - out[0][[0]]).abs() < 1e-9,
        "a: {} vs TensorLy {}",
        rel(&ta, &a),
        out[0][[0]]
    );
    assert!(
        (rel(&tb, &b) - out[4][[0]]).abs() < 1e-9,
        "b: {} vs TensorLy {}",
        rel(&tb, &b),
        out[4][[0]]
    );
    assert!(
        (rel(&tc, &c) - out[7][[0]]).abs() < 1e-9,
        "c: {} vs TensorLy {}",
        rel(&tc, &c),
        out[7][[0]]
    );
    let proj = |f: &Array2<f64>| f.dot(&f.t()).into_dyn();
    for i in 0..3 {
        assert!(
            max_abs_diff(&proj(&ta.factors[i]), &out[1 + i]) < 1e-8,
            "a: subspace {i}"
        );
    }
    for i in 0..2 {
        assert!(
            max_abs_diff(&proj(&tb.factors[i]), &out[5 + i]) < 1e-8,
            "b: subspace {i}"
        );
    }
}

#[test]
fn hooi_on_a_subset_of_modes_keeps_the_others() {
    let x = gaussian(&[5, 4, 6, 3], 7);
    let opts = TuckerOptions {
        modes: Some(vec![3, 1]),
        iter: iter(5, 0),
        ..TuckerOptions::new(vec![2, 3])
    };
    let t = tucker(&x.view(), &opts).unwrap();
    check_structure(&t, &x, &[2, 3], &[3, 1]);
    assert_eq!(t.core.shape(), &[5, 3, 6, 2]);
    let bound = discarded_energy(&x, &[2, 3], &[3, 1]);
    let err = t.convergence.rel_error();
    assert!(err * err * sq_norm(&x) <= bound * (1.0 + 1e-10));
}

#[test]
fn random_and_given_initialisations_are_deterministic() {
    let x = gaussian(&[6, 5, 4], 8);
    let rank = vec![3, 2, 2];
    let random = |seed| {
        tucker(
            &x.view(),
            &TuckerOptions {
                iter: iter(3, seed),
                init: Init::Random,
                ..TuckerOptions::new(rank.clone())
            },
        )
        .unwrap()
    };
    let (a, b, c) = (random(1), random(1), random(2));
    assert_eq!(a, b, "same seed, same result");
    assert_ne!(
        a.convergence.errors[0], c.convergence.errors[0],
        "another seed, another start"
    );
    // Given factors are used through their column spaces: scaled HOSVD factors reproduce the
    // SVD-initialised run exactly.
    let h = hosvd(&x.view(), &TuckerOptions::new(rank.to_vec())).unwrap();
    let scaled: Vec<Array2<f64>> = h.factors.iter().map(|f| f * 3.0).collect();
    let given = tucker(
        &x.view(),
        &TuckerOptions {
            iter: iter(3, 0),
            init: Init::Given(scaled),
            ..TuckerOptions::new(rank.clone())
        },
    )
    .unwrap();
    let svd = tucker(
        &x.view(),
        &TuckerOptions {
            iter: iter(3, 0),
            ..TuckerOptions::new(rank.clone())
        },
    )
    .unwrap();
    for (g, s) in given.convergence.errors.iter().zip(&svd.convergence.errors) {
        assert!((g - s).abs() < 1e-12);
    }
}

#[test]
fn tolerance_stops_hooi_early() {
    let x = gaussian(&[6, 6, 6], 9);
    let opts = TuckerOptions {
        iter: IterOptions {
            n_iter_max: 200,
            tol: 1e-6,
            seed: 0,
        },
        ..TuckerOptions::new(vec![2, 2, 2])
    };
    let t = tucker(&x.view(), &opts).unwrap();
    assert!(t.convergence.converged);
    assert!(t.convergence.iterations < 200);
    let e = &t.convergence.errors;
    assert!((e[e.len() - 2] - e[e.len() - 1]).abs() < 1e-6);
}

#[test]
fn tucker_in_f32_matches_f64() {
    let x = gaussian(&[7, 6, 5], 10);
    let x32 = x.mapv(|v| v as f32);
    let opts64 = TuckerOptions {
        iter: iter(5, 0),
        ..TuckerOptions::new(vec![3, 3, 2])
    };
    let opts32 = TuckerOptions {
        iter: iter(5, 0),
        ..TuckerOptions::new(vec![3, 3, 2])
    };
    let t64 = tucker(&x.view(), &opts64).unwrap();
    let t32 = tucker(&x32.view(), &opts32).unwrap();
    let rec32 = t32.reconstruct().unwrap();
    let e32 = relative_error(&x32.view(), &rec32.view()).unwrap();
    assert!(
        (e32 - t64.convergence.rel_error()).abs() < 1e-4,
        "{e32} vs {}",
        t64.convergence.rel_error()
    );
    for (f, g) in t32.factors.iter().zip(&t64.factors) {
        let p32 = f.mapv(|v| v.to_f64_exact());
        assert!(max_abs_diff(&p32.dot(&p32.t()).into_dyn(), &g.dot(&g.t()).into_dyn()) < 1e-3);
    }
}

#[test]
fn tucker_rejects_bad_input_with_typed_errors() {
    let x = gaussian(&[4, 3, 2], 11);
    let xv = x.view();
    let run = |rank: Vec<usize>, modes: Option<Vec<usize>>| {
        tucker(
            &xv,
            &TuckerOptions {
                modes,
                ..TuckerOptions::new(rank)
            },
        )
    };
    assert!(
        matches!(run(vec![5, 2, 2], None), Err(GbtdError::Rank(_))),
        "rank above dimension"
    );
    assert!(
        matches!(run(vec![2, 0, 2], None), Err(GbtdError::Rank(_))),
        "rank 0"
    );
    assert!(
        matches!(run(vec![2, 2], None), Err(GbtdError::Rank(_))),
        "too few ranks"
    );
    assert!(
        matches!(run(vec![2, 2], Some(vec![0, 0])), Err(GbtdError::Mode(_))),
        "repeated mode"
    );
    assert!(
        matches!(run(vec![2, 2], Some(vec![0, 3])), Err(GbtdError::Mode(_))),
        "mode out of range"
    );
    assert!(
        matches!(run(vec![], Some(vec![])), Err(GbtdError::Mode(_))),
        "no modes"
    );
    assert!(matches!(
        hosvd(&xv, &TuckerOptions::new(vec![2, 2]).with_modes(vec![1, 1])),
        Err(GbtdError::Mode(_))
    ));
    assert!(matches!(
        hosvd(&xv, &TuckerOptions::new(vec![4, 4, 2])),
        Err(GbtdError::Rank(_))
    ));
    assert!(matches!(
        st_hosvd(&xv, &TuckerOptions::new(vec![0, 1, 1])),
        Err(GbtdError::Rank(_))
    ));

    let mut nan = x.clone();
    nan[[1, 1, 1]] = f64::NAN;
    assert!(matches!(
        hosvd(&nan.view(), &TuckerOptions::new(vec![2, 2, 2])),
        Err(GbtdError::NonFinite(_))
    ));
    let mut inf = x.clone();
    inf[[0, 2, 1]] = f64::INFINITY;
    assert!(matches!(
        tucker(&inf.view(), &TuckerOptions::new(vec![2, 2, 2])),
        Err(GbtdError::NonFinite(_))
    ));
    let empty = ArrayD::<f64>::zeros(IxDyn(&[0, 3]));
    assert!(matches!(
        tucker(&empty.view(), &TuckerOptions::new(vec![1, 1])),
        Err(GbtdError::Empty(_))
    ));
    let scalar = ArrayD::<f64>::zeros(IxDyn(&[]));
    assert!(matches!(
        st_hosvd(&scalar.view(), &TuckerOptions::new(vec![])),
        Err(GbtdError::Empty(_))
    ));

    let bad_tol = TuckerOptions {
        iter: IterOptions {
            tol: -1.0,
            ..IterOptions::default()
        },
        ..TuckerOptions::new(vec![2, 2, 2])
    };
    assert!(matches!(tucker(&xv, &bad_tol), Err(GbtdError::Options(_))));
    let wrong_shape = TuckerOptions {
        init: Init::Given(vec![gaussian2(4, 2, 1), gaussian2(3, 2, 2)]),
        ..TuckerOptions::new(vec![2, 2, 2])
    };
    assert!(matches!(tucker(&xv, &wrong_shape), Err(GbtdError::Shape(_))));
    let mut f = gaussian2(3, 2, 3);
    f[[0, 0]] = f64::NAN;
    let nan_init = TuckerOptions {
        init: Init::Given(vec![gaussian2(4, 2, 1), f, gaussian2(2, 2, 4)]),
        ..TuckerOptions::new(vec![2, 2, 2])
    };
    assert!(matches!(tucker(&xv, &nan_init), Err(GbtdError::NonFinite(_))));
    // Tucker-2 (modes 0 and 1) of a vector: mode 1 does not exist.
    let vector = gaussian(&[5], 12);
    assert!(matches!(
        tucker(
            &vector.view(),
            &TuckerOptions::new(vec![1, 1]).with_modes(vec![0, 1])
        ),
        Err(GbtdError::Mode(_))
    ));
    assert!(matches!(
        leading_unfolding_vectors(&xv, 3, 1),
        Err(GbtdError::Mode(_))
    ));
    assert!(matches!(
        leading_unfolding_vectors(&xv, 0, 5),
        Err(GbtdError::Rank(_))
    ));
}

/// The symmetric eigensolver behind the leading vectors (`dsytrd` + `dstemr`/`dstedc` +
/// `dormtr`) agrees with LAPACK `syev` (ndarray-linalg's `Eigh`) on both of its paths, in f64
/// and f32, and the `syrk` Gram matrices agree with plain products.
#[test]
fn sym_eig_top_and_gram_match_reference_lapack() {
    use gbtd::linalg::{gram, sym_eig_top};
    use ndarray_linalg::{Eigh, UPLO};
    for (c, &(n, k)) in [(1usize, 1usize), (7, 3), (40, 4), (40, 40), (90, 9), (64, 30)]
        .iter()
        .enumerate()
    {
        let b = gaussian2(n, n + 3, 700 + c as u64);
        // Indefinite symmetric test matrix: a Gram matrix minus a shift.
        let m = &b.dot(&b.t()) - &(Array2::<f64>::eye(n) * (n as f64));
        let (vals, vecs) = sym_eig_top(&m.view(), k).unwrap();
        let (ref_vals, _) = m.eigh(UPLO::Lower).unwrap();
        for i in 0..k {
            let want = ref_vals[n - 1 - i];
            assert!(
                (vals[i] - want).abs() < 1e-10 * (1.0 + want.abs()),
                "case {c}: λ_{i} {} vs {want}",
                vals[i]
            );
        }
        assert!(orthonormality_defect(&vecs) < 1e-10, "case {c}: orthonormal");
        let residual = &m.dot(&vecs) - &(&vecs * &vals.view().insert_axis(ndarray::Axis(0)));
        assert!(
            residual
                .iter()
                .all(|v| v.abs() < 1e-9 * (1.0 + ref_vals[n - 1].abs())),
            "case {c}: residual"
        );
        let m32 = m.mapv(|v| v as f32);
        let (v32, _) = sym_eig_top(&m32.view(), k).unwrap();
        assert!(
            (v32[0] as f64 - ref_vals[n - 1]).abs() < 1e-4 * (1.0 + ref_vals[n - 1].abs()),
            "case {c}: f32"
        );
    }
    let a = gaussian2(9, 13, 800);
    let g = gram(&a.view(), false).unwrap();
    assert!(max_abs_diff(&g.into_dyn(), &a.dot(&a.t()).into_dyn()) < 1e-12);
    let gt = gram(&a.t(), false).unwrap();
    assert!(max_abs_diff(&gt.into_dyn(), &a.t().dot(&a).into_dyn()) < 1e-12);
    let gt2 = gram(&a.view(), true).unwrap();
    assert!(max_abs_diff(&gt2.into_dyn(), &a.t().dot(&a).into_dyn()) < 1e-12);
    let a32 = a.mapv(|v| v as f32);
    let g32 = gram(&a32.view(), false).unwrap().mapv(|v| v as f64);
    assert!(max_abs_diff(&g32.into_dyn(), &a.dot(&a.t()).into_dyn()) < 1e-4);
}

#[test]
fn zero_sweeps_give_the_hosvd() {
    let x = gaussian(&[6, 7, 5], 13);
    let h = hosvd(&x.view(), &TuckerOptions::new(vec![3, 4, 2])).unwrap();
    let t = tucker(
        &x.view(),
        &TuckerOptions {
            iter: iter(0, 0),
            ..TuckerOptions::new(vec![3, 4, 2])
        },
    )
    .unwrap();
    assert_eq!(t.convergence.iterations, 0);
    assert_eq!(t.convergence.errors.len(), 1);
    assert!(max_abs_diff(&t.core, &h.core) < 1e-12);
    for (a, b) in t.factors.iter().zip(&h.factors) {
        assert!(max_abs_diff(&a.clone().into_dyn(), &b.clone().into_dyn()) < 1e-12);
    }
}

/// Plain HOOI written with materialised unfoldings and `gesdd`, the textbook algorithm.
fn reference_hooi(x: &ArrayD<f64>, rank: &[usize], sweeps: usize) -> Vec<Array2<f64>> {
    let n = x.ndim();
    let mut factors: Vec<Array2<f64>> = (0..n).map(|m| reference_leading(x, m, rank[m]).0).collect();
    for _ in 0..sweeps {
        for m in 0..n {
            let mut y = x.clone();
            for k in (0..n).filter(|&k| k != m) {
                y = mode_dot(&y.view(), &factors[k].t(), k).unwrap();
            }
            factors[m] = reference_leading(&y, m, rank[m]).0;
        }
    }
    factors
}

/// At sizes where the products are split over two threads and projections are reused across
/// updates, HOOI still follows the textbook iterates: the same factor subspaces after each
/// number of sweeps, and hence the same fit.
#[test]
fn hooi_matches_textbook_hooi_at_threaded_sizes() {
    // Low multilinear rank plus noise, so that the subspaces are well separated.
    let mut x = gaussian(&[8, 7, 6], 900);
    for (m, d) in [(0usize, 100usize), (1, 90), (2, 40)] {
        x = mode_dot(&x.view(), &gaussian2(d, x.shape()[m], 901 + m as u64).view(), m).unwrap();
    }
    let x = &x + &(gaussian(&[100, 90, 40], 905) * 0.5);
    let rank = [8, 7, 6];
    for sweeps in [1usize, 3, 8] {
        let t = tucker(
            &x.view(),
            &TuckerOptions {
                iter: iter(sweeps, 0),
                ..TuckerOptions::new(rank.to_vec())
            },
        )
        .unwrap();
        let reference = reference_hooi(&x, &rank, sweeps);
        for (m, (f, g)) in t.factors.iter().zip(&reference).enumerate() {
            let (p, q) = (f.dot(&f.t()), g.dot(&g.t()));
            assert!(
                max_abs_diff(&p.into_dyn(), &q.into_dyn()) < 1e-8,
                "{sweeps} sweeps, mode {m}"
            );
        }
        check_structure(&t, &x, &rank, &[0, 1, 2]);
    }
}
