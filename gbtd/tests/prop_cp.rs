//! Property tests of CP-ALS (issue 3, property 5): it recovers noise-free generic low-rank
//! tensors (f64 and f32), its reconstruction is the weighted sum of outer products written out
//! here, its tracked error is the reconstruction error, and its fit agrees with the pinned
//! TensorLy. Plus the typed error paths.
mod common;

use common::{config, cp_brute_force, gaussian, gaussian2, max_abs_diff, python_npy};
use gbtd::GbtdError;
use gbtd::cp::{Cp, CpOptions, parafac};
use gbtd::options::{Init, IterOptions};
use gbtd::tensor::relative_error;
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use proptest::prelude::*;

fn iter(n: usize, seed: u64) -> IterOptions {
    IterOptions {
        n_iter_max: n,
        tol: 0.0,
        seed,
    }
}

fn opts(rank: usize, n: usize, seed: u64) -> CpOptions<'static, f64> {
    CpOptions {
        iter: iter(n, seed),
        ..CpOptions::new(rank)
    }
}

/// The factors of generic rank-`r` data: i.i.d. Gaussian.
fn low_rank_factors(shape: &[usize], r: usize, seed: u64) -> Vec<Array2<f64>> {
    shape
        .iter()
        .enumerate()
        .map(|(k, &d)| gaussian2(d, r, seed ^ (k as u64 + 1)))
        .collect()
}

/// Generic rank-`r` data: i.i.d. Gaussian factors, unit weights.
fn low_rank(shape: &[usize], r: usize, seed: u64) -> ArrayD<f64> {
    cp_brute_force(&vec![1.0; r], &low_rank_factors(shape, r, seed))
}

/// The largest `|cos|` between two columns of the same factor. ALS converges linearly at a rate
/// that degrades as this approaches 1 ("swamps": a 3×3×3 draw with |cos| = 0.98 needs ~2000
/// sweeps to reach 1e-9).
fn max_collinearity(factors: &[Array2<f64>]) -> f64 {
    let mut worst = 0.0f64;
    for f in factors {
        for i in 0..f.ncols() {
            for j in 0..i {
                let (a, b) = (f.column(i), f.column(j));
                worst = worst.max((a.dot(&b) / (a.dot(&a) * b.dot(&b)).sqrt()).abs());
            }
        }
    }
    worst
}

fn true_error(cp: &Cp<f64>, x: &ArrayD<f64>) -> f64 {
    relative_error(&x.view(), &cp.reconstruct().unwrap().view()).unwrap()
}

proptest! {
    #![proptest_config(config(24, 0xC5))]

    #[test]
    fn cp_als_recovers_noise_free_generic_low_rank_tensors(
        shape in prop::collection::vec(3usize..=6, 3..=4), rank_pick in 0usize..3, seed in any::<u64>(),
    ) {
        let rank = 1 + rank_pick;
        let factors = low_rank_factors(&shape, rank, seed);
        prop_assume!(max_collinearity(&factors) < 0.9, "swamp: nearly collinear components");
        let x = cp_brute_force(&vec![1.0; rank], &factors);
        let cp = parafac(&x.view(), &opts(rank, 500, seed)).unwrap();
        let err = true_error(&cp, &x);
        prop_assert!(err < 1e-6, "rank {rank} shape {shape:?}: relative error {err}");
    }

    #[test]
    fn reconstruct_is_the_weighted_sum_of_outer_products(
        shape in prop::collection::vec(1usize..=4, 2..=4), rank in 1usize..=4, seed in any::<u64>(),
    ) {
        let cp = Cp {
            weights: Array1::from_iter((0..rank).map(|r| 0.5 + r as f64)),
            factors: shape.iter().enumerate().map(|(k, &d)| gaussian2(d, rank, seed ^ k as u64)).collect(),
            convergence: Default::default(),
        };
        let want = cp_brute_force(cp.weights.as_slice().unwrap(), &cp.factors);
        prop_assert!(max_abs_diff(&cp.reconstruct().unwrap(), &want) < 1e-12);
        prop_assert_eq!(cp.n_params(), rank + rank * shape.iter().sum::<usize>());
        prop_assert_eq!(cp.shape(), shape);
    }

    #[test]
    fn factors_have_unit_columns_and_the_tracked_error_is_the_reconstruction_error(
        shape in prop::collection::vec(2usize..=6, 2..=4), rank in 1usize..=5, seed in any::<u64>(), sweeps in 0usize..=8,
    ) {
        let x = gaussian(&shape, seed);
        let cp = parafac(&x.view(), &opts(rank, sweeps, seed)).unwrap();
        prop_assert_eq!(cp.convergence.errors.len(), sweeps + 1);
        prop_assert_eq!(cp.convergence.iterations, sweeps);
        for f in &cp.factors {
            for col in f.columns() {
                let n = col.dot(&col).sqrt();
                prop_assert!((n - 1.0).abs() < 1e-12 || n == 0.0, "column norm {n}");
            }
        }
        let e = true_error(&cp, &x);
        let tracked = cp.convergence.rel_error();
        prop_assert!((tracked * tracked - e * e).abs() < 1e-12, "tracked {tracked} vs {e}");
        // ALS never increases the error (up to the sqrt(ε) resolution of the tracked errors).
        for w in cp.convergence.errors.windows(2) {
            prop_assert!(w[1] <= w[0] + 1e-7, "{:?}", cp.convergence.errors);
        }
    }
}

#[test]
fn cp_als_in_f32_recovers_a_low_rank_tensor() {
    let x = low_rank(&[6, 5, 4], 3, 21);
    let x32 = x.mapv(|v| v as f32);
    let o = CpOptions {
        iter: iter(300, 0),
        ..CpOptions::<f32>::new(3)
    };
    let cp = parafac(&x32.view(), &o).unwrap();
    let rec = cp.reconstruct().unwrap();
    let err = relative_error(&x32.view(), &rec.view()).unwrap();
    assert!(err < 1e-4, "f32 relative error {err}");
}

/// CP-ALS from the SVD initialisation follows the same iterates as TensorLy's `parafac`
/// (`init='svd'`, `tol=0`): column normalisation only moves scale into the weights.
#[test]
fn cp_fit_matches_tensorly() {
    if !peers::available("cp_fit_matches_tensorly") {
        return;
    }
    let a = &low_rank(&[5, 6, 7], 3, 31) + &(gaussian(&[5, 6, 7], 32) * 0.05);
    let b = gaussian(&[6, 5, 3, 3], 33);
    let script = r#"
import tensorly as tl
from tensorly.decomposition import parafac
for name, rank in [('a', 3), ('b', 3)]:
    x = load(name)
    cp = parafac(x, rank, n_iter_max=30, init='svd', tol=0)
    save('e' + name, [np.linalg.norm(x - tl.cp_to_tensor(cp)) / np.linalg.norm(x)])
"#;
    let out = python_npy(script, &[("a", &a), ("b", &b)], &["ea", "eb"]);
    for (x, want, name) in [(&a, out[0][[0]], "a"), (&b, out[1][[0]], "b")] {
        let cp = parafac(&x.view(), &opts(3, 30, 0)).unwrap();
        let got = true_error(&cp, x);
        assert!((got - want).abs() < 1e-8, "{name}: {got} vs TensorLy {want}");
    }
}

#[test]
fn rank_above_the_dimensions_is_allowed() {
    // Rank 64 on a 3×3 spatial mode is the issue's benchmark shape, here scaled down.
    let x = gaussian(&[8, 7, 3, 3], 41);
    let cp = parafac(&x.view(), &opts(10, 20, 5)).unwrap();
    assert_eq!(cp.factors[2].dim(), (3, 10));
    let e = true_error(&cp, &x);
    assert!(e.is_finite() && e < 1.0);
    let rank1 = parafac(&x.view(), &opts(1, 20, 5)).unwrap();
    assert!(e < true_error(&rank1, &x), "rank 10 fits better than rank 1");
    let again = parafac(&x.view(), &opts(10, 20, 5)).unwrap();
    assert_eq!(cp, again, "deterministic per seed");
}

#[test]
fn random_and_given_initialisations() {
    let x = low_rank(&[5, 4, 6], 2, 51);
    let random = |seed| {
        parafac(
            &x.view(),
            &CpOptions {
                init: Init::Random,
                ..opts(2, 5, seed)
            },
        )
        .unwrap()
    };
    assert_eq!(random(3), random(3));
    assert_ne!(random(3).convergence.errors[0], random(4).convergence.errors[0]);
    // The true factors fit exactly from the start.
    let factors: Vec<Array2<f64>> = [5usize, 4, 6]
        .iter()
        .enumerate()
        .map(|(k, &d)| gaussian2(d, 2, 51 ^ (k as u64 + 1)))
        .collect();
    let given = parafac(
        &x.view(),
        &CpOptions {
            init: Init::Given(factors),
            ..opts(2, 3, 0)
        },
    )
    .unwrap();
    assert!(given.convergence.errors[0] < 1e-6);
    assert!(true_error(&given, &x) < 1e-10);
}

#[test]
fn tolerance_stops_cp_early() {
    let x = gaussian(&[5, 5, 5], 61);
    let o = CpOptions {
        iter: IterOptions {
            n_iter_max: 500,
            tol: 1e-7,
            seed: 0,
        },
        ..CpOptions::new(2)
    };
    let cp = parafac(&x.view(), &o).unwrap();
    assert!(cp.convergence.converged);
    assert!(cp.convergence.iterations < 500);
}

#[test]
fn cp_rejects_bad_input_with_typed_errors() {
    let x = gaussian(&[4, 3, 2], 71);
    let xv = x.view();
    assert!(
        matches!(parafac(&xv, &opts(0, 5, 0)), Err(GbtdError::Rank(_))),
        "rank 0"
    );
    let mut nan = x.clone();
    nan[[0, 1, 1]] = f64::NAN;
    assert!(matches!(
        parafac(&nan.view(), &opts(2, 5, 0)),
        Err(GbtdError::NonFinite(_))
    ));
    let empty = ArrayD::<f64>::zeros(IxDyn(&[3, 0, 2]));
    assert!(matches!(
        parafac(&empty.view(), &opts(2, 5, 0)),
        Err(GbtdError::Empty(_))
    ));
    let vector = gaussian(&[6], 72);
    assert!(matches!(
        parafac(&vector.view(), &opts(1, 5, 0)),
        Err(GbtdError::Shape(_))
    ));
    let bad_tol = CpOptions {
        iter: IterOptions {
            tol: f64::NAN,
            ..IterOptions::default()
        },
        ..CpOptions::new(2)
    };
    assert!(matches!(parafac(&xv, &bad_tol), Err(GbtdError::Options(_))));
    let given = |fs: Vec<Array2<f64>>| CpOptions {
        init: Init::Given(fs),
        ..opts(2, 5, 0)
    };
    let wrong_rows = given(vec![gaussian2(4, 2, 1), gaussian2(2, 2, 2), gaussian2(2, 2, 3)]);
    assert!(matches!(parafac(&xv, &wrong_rows), Err(GbtdError::Shape(_))));
    let too_few = given(vec![gaussian2(4, 2, 1), gaussian2(3, 2, 2)]);
    assert!(matches!(parafac(&xv, &too_few), Err(GbtdError::Shape(_))));
    let mut f = gaussian2(2, 2, 3);
    f[[1, 0]] = f64::INFINITY;
    let non_finite = given(vec![gaussian2(4, 2, 1), gaussian2(3, 2, 2), f]);
    assert!(matches!(parafac(&xv, &non_finite), Err(GbtdError::NonFinite(_))));
    // A malformed CP value reports instead of panicking.
    let bad = Cp {
        weights: Array1::ones(3),
        factors: vec![gaussian2(2, 2, 1), gaussian2(3, 2, 2)],
        convergence: Default::default(),
    };
    assert!(matches!(bad.reconstruct(), Err(GbtdError::Shape(_))));
}

/// Textbook CP-ALS: materialised unfoldings, explicit Khatri–Rao products, and the normal
/// equations solved by LU; started like TensorLy's `init='svd'`.
fn reference_als(x: &ArrayD<f64>, rank: usize, sweeps: usize) -> Vec<Array2<f64>> {
    use gbtd::tensor::{khatri_rao, unfold};
    use ndarray_linalg::{Inverse, JobSvd, SVDDC};
    let n = x.ndim();
    let mut factors: Vec<Array2<f64>> = (0..n)
        .map(|m| {
            let (u, s, _) = unfold(&x.view(), m).unwrap().svddc(JobSvd::Some).unwrap();
            let mut a = u.unwrap().slice(ndarray::s![.., ..rank]).to_owned();
            if m == 0 {
                for (mut col, &sv) in a.columns_mut().into_iter().zip(s.iter()) {
                    col *= sv;
                }
            }
            a
        })
        .collect();
    for _ in 0..sweeps {
        for m in 0..n {
            let views: Vec<_> = factors.iter().map(|f| f.view()).collect();
            let kr = khatri_rao(&views, Some(m)).unwrap();
            let mttkrp = unfold(&x.view(), m).unwrap().dot(&kr);
            let mut v = Array2::<f64>::ones((rank, rank));
            for (k, f) in factors.iter().enumerate() {
                if k != m {
                    v = &v * &f.t().dot(f);
                }
            }
            factors[m] = mttkrp.dot(&v.inv().unwrap());
        }
    }
    factors
}

/// At a size where the order-3 products are reused across updates and split over two threads,
/// CP-ALS follows the textbook iterates: the same reconstruction after each number of sweeps.
#[test]
fn cp_als_matches_textbook_als_at_threaded_sizes() {
    let x = &low_rank(&[60, 70, 80], 8, 1000) + &(gaussian(&[60, 70, 80], 1001) * 0.3);
    for sweeps in [1usize, 4] {
        let cp = parafac(&x.view(), &opts(8, sweeps, 0)).unwrap();
        let reference = reference_als(&x, 8, sweeps);
        let want = cp_brute_force(&[1.0; 8], &reference);
        let got = cp.reconstruct().unwrap();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            max_abs_diff(&got, &want) < 1e-8 * scale,
            "{sweeps} sweeps: {}",
            max_abs_diff(&got, &want)
        );
    }
}

/// With a rank above some dimensions, the SVD initialisation is TensorLy 0.10's
/// `initialize_cp(init='svd', random_state=seed)`: on each mode the leading singular vectors (up
/// to sign; mode 0 scaled by the singular values), then `R − d_n` columns of
/// `numpy.random.RandomState(seed).random_sample`, one generator for all modes. Both sides'
/// initial factors are compared after column normalisation (gbtd keeps the scale in the
/// weights), and so is the fit after a few sweeps of `parafac` with the same seed.
#[test]
fn svd_init_beyond_a_dimension_is_tensorlys() {
    if !peers::available("svd_init_beyond_a_dimension_is_tensorlys") {
        return;
    }
    let x = &low_rank(&[6, 5, 3, 2], 4, 81) + &(gaussian(&[6, 5, 3, 2], 82) * 0.1);
    let (rank, sweeps) = (7usize, 8usize);
    let script = r#"
import tensorly as tl
from tensorly.decomposition import parafac
from tensorly.decomposition._cp import initialize_cp
x = load('x')
for tag, seed in [('s', 11), ('l', 2**32 + 5)]:
    rs = seed if seed < 2**32 else np.random.RandomState([seed & 0xffffffff, seed >> 32])
    _, factors = initialize_cp(x, 7, init='svd', random_state=rs)
    for n, f in enumerate(factors):
        save(f'{tag}{n}', f / np.linalg.norm(f, axis=0))
cp = parafac(x, 7, n_iter_max=8, init='svd', tol=0, random_state=11)
save('e', [np.linalg.norm(x - tl.cp_to_tensor(cp)) / np.linalg.norm(x)])
"#;
    let names: Vec<String> = ["s", "l"]
        .iter()
        .flat_map(|t| (0..4).map(move |n| format!("{t}{n}")))
        .chain(["e".to_string()])
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let out = python_npy(script, &[("x", &x)], &refs);
    for (t, seed) in [(0usize, 11u64), (1, (1u64 << 32) + 5)] {
        let init = parafac(&x.view(), &opts(rank, 0, seed)).unwrap();
        for (n, got) in init.factors.iter().enumerate() {
            let want = &out[t * 4 + n];
            let d = x.shape()[n];
            for j in 0..rank {
                let (g, w) = (got.column(j), want.slice(ndarray::s![.., j]));
                // Singular vectors are defined up to sign; the random columns are not.
                let sign = if j < d && g.dot(&w) < 0.0 { -1.0 } else { 1.0 };
                let diff = g
                    .iter()
                    .zip(w.iter())
                    .map(|(a, b)| (a - sign * b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    diff < 1e-10,
                    "seed {seed}, mode {n}, column {j}: differs by {diff}"
                );
            }
        }
    }
    let cp = parafac(&x.view(), &opts(rank, sweeps, 11)).unwrap();
    let (got, want) = (true_error(&cp, &x), out[8][[0]]);
    assert!((got - want).abs() < 1e-6 * want, "error {got} vs TensorLy {want}");
}
