//! Property tests of the block term decomposition (issue 3, property 6): the reconstruction is the
//! elementwise sum of Eq. 2, BTD with one term matches Tucker (HOOI), BTD with unit ranks matches
//! CP, and BTD recovers exact sum-of-Tuckers data; plus its error paths.
use approx::assert_abs_diff_eq;
use gbtd::btd::{Acceleration, BlockTerm, Btd, BtdOptions, DIRECT_CORE_SOLVE_MAX, btd};
use gbtd::cp::{CpOptions, parafac};
use gbtd::options::{Init, IterOptions};
use gbtd::random::{randn, randn2, rng};
use gbtd::tucker::{TuckerOptions, hosvd, tucker};
use gbtd::{GbtdError, relative_error};
use ndarray::{Array2, ArrayD, Dimension, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// A BTD with i.i.d. standard normal cores and factors (generic data).
fn random_btd(shape: &[usize], modes: &[usize], rank: &[usize], r: usize, seed: u64) -> Btd<f64> {
    let mut g = rng(seed);
    let terms = (0..r)
        .map(|_| {
            let mut cs = shape.to_vec();
            for (&m, &l) in modes.iter().zip(rank) {
                cs[m] = l;
            }
            BlockTerm {
                core: randn::<f64>(&cs, &mut g),
                factors: modes
                    .iter()
                    .zip(rank)
                    .map(|(&m, &l)| randn2::<f64>(shape[m], l, &mut g))
                    .collect(),
            }
        })
        .collect();
    Btd {
        terms,
        modes: modes.to_vec(),
        shape: shape.to_vec(),
        convergence: Default::default(),
    }
}

/// Eq. 2 written out elementwise: `X(i) = Σ_r Σ_j G_r(j) Π_{m∈modes} A_m^r(i_m, j_m)`, with
/// `j_k = i_k` on the kept modes. Brute force over every index.
fn eq2_brute_force(b: &Btd<f64>) -> ArrayD<f64> {
    let n = b.shape.len();
    let mut out = ArrayD::<f64>::zeros(IxDyn(&b.shape));
    let idx: Vec<Vec<usize>> = out
        .indexed_iter()
        .map(|(i, _)| i.as_array_view().to_vec())
        .collect();
    for i in idx {
        let mut sum = 0.0;
        for t in &b.terms {
            for (j, &g) in t.core.indexed_iter() {
                let j = j.as_array_view();
                let mut v = g;
                let mut ok = true;
                for k in 0..n {
                    match b.modes.iter().position(|&m| m == k) {
                        Some(p) => v *= t.factors[p][[i[k], j[k]]],
                        None => ok &= j[k] == i[k],
                    }
                }
                if ok {
                    sum += v;
                }
            }
        }
        out[IxDyn(&i)] = sum;
    }
    out
}

fn iter(n: usize, tol: f64, seed: u64) -> IterOptions {
    IterOptions {
        n_iter_max: n,
        tol,
        seed,
    }
}

/// ALS can stop in a local minimum: fit from the SVD initialisation, then from up to three seeded
/// random ones, and return the first fit below 1e-6 (or the last one).
fn fit_multistart(x: &ArrayD<f64>, opts: &BtdOptions<f64>) -> Btd<f64> {
    let mut last = None;
    for start in 0..4u64 {
        let init = if start == 0 { Init::Svd } else { Init::Random };
        let o = BtdOptions {
            init,
            iter: IterOptions {
                seed: start,
                ..opts.iter
            },
            ..opts.clone()
        };
        let fit = btd(&x.view(), &o).unwrap();
        if fit.convergence.rel_error() < 1e-6 {
            return fit;
        }
        last = Some(fit);
    }
    last.unwrap()
}

/// Convergence tests draw their cases from a fixed seed: a local minimum of ALS on some rare
/// draw must not make CI flaky.
fn fixed(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x05ee_db7d),
        ..ProptestConfig::default()
    }
}

/// A random problem: order 3 or 4, dims 2..6, a non-empty subset of factorized modes, ranks in
/// 1..=dim, 1..=3 terms.
fn btd_case() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>, usize, u64)> {
    (
        prop::collection::vec(2usize..6, 3..=4),
        1usize..=3,
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(shape, r, mask_seed, seed)| {
            let n = shape.len();
            let mut modes: Vec<usize> = (0..n).filter(|k| (mask_seed >> k) & 1 == 1).collect();
            if modes.is_empty() {
                modes.push((mask_seed as usize / 7) % n);
            }
            // Listing order is part of the API: reverse it on odd seeds.
            if seed % 2 == 1 {
                modes.reverse();
            }
            let rank = modes
                .iter()
                .map(|&m| 1 + (seed as usize / (m + 3)) % shape[m])
                .collect();
            (shape, modes, rank, r, seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// `Btd::reconstruct` equals the elementwise sum of Eq. 2 (kept modes included).
    #[test]
    fn reconstruct_equals_elementwise_eq2_sum((shape, modes, rank, r, seed) in btd_case()) {
        let b = random_btd(&shape, &modes, &rank, r, seed);
        let got = b.reconstruct().unwrap();
        let want = eq2_brute_force(&b);
        prop_assert_eq!(got.shape(), want.shape());
        for (g, w) in got.iter().zip(want.iter()) {
            prop_assert!((g - w).abs() <= 1e-10 * (1.0 + w.abs()), "{g} vs {w}");
        }
        // The parameter count of the factorized form: R·(|G| + Σ_m d_m·L_m), written out.
        let core: usize = (0..shape.len())
            .map(|k| modes.iter().position(|&m| m == k).map_or(shape[k], |p| rank[p]))
            .product();
        let fac: usize = modes.iter().zip(&rank).map(|(&m, &l)| shape[m] * l).sum();
        prop_assert_eq!(b.n_params(), r * (core + fac));
    }
}

proptest! {
    #![proptest_config(fixed(16))]

    /// Generic data that is exactly a sum of R Tuckers is recovered to relative error < 1e-6, on all
    /// modes or on a subset (partial BTD); the error history never increases. The data stay in the
    /// identifiable regime: `R·L ≤ d` on factorized modes, and on the kept mode, where each term has
    /// rank up to `Π L`, `R·Π L ≤ d`.
    #[test]
    fn btd_recovers_exact_sum_of_tuckers(
        dims in prop::collection::vec(5usize..8, 3),
        r in 1usize..=2,
        l in 1usize..=2,
        partial in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let modes: Vec<usize> = if partial { vec![0, 2] } else { vec![0, 1, 2] };
        let rank = vec![l; modes.len()];
        let mut dims = dims;
        if partial {
            dims[1] = dims[1].max(r * l * l);
        }
        let truth = random_btd(&dims, &modes, &rank, r, seed);
        let x = truth.reconstruct().unwrap();
        let opts = BtdOptions::new(r, rank.clone())
            .with_modes(modes.clone())
            .with_iter(iter(2000, 1e-15, 0));
        let fit = fit_multistart(&x, &opts);
        let err = relative_error(&x.view(), &fit.reconstruct().unwrap().view()).unwrap();
        prop_assert!(err < 1e-6, "relative error {err:e} after {} sweeps", fit.convergence.iterations);
        // The recorded error is the error of the returned model.
        prop_assert!((fit.convergence.rel_error() - err).abs() < 1e-9);
        for w in fit.convergence.errors.windows(2) {
            prop_assert!(w[1] <= w[0] * (1.0 + 1e-9) + 1e-12, "error increased: {w:?}");
        }
        // Each term's factors are orthonormal blocks.
        for t in &fit.terms {
            for f in &t.factors {
                let g = f.t().dot(f);
                for ((i, j), v) in g.indexed_iter() {
                    let want = if i == j { 1.0 } else { 0.0 };
                    prop_assert!((v - want).abs() < 1e-9, "gram {v} at ({i}, {j})");
                }
            }
        }
    }

    /// With R = 1, BTD is a Tucker decomposition: from the same (HOSVD) factors, its fit equals
    /// HOOI's, on all modes and on a subset of modes.
    #[test]
    fn btd_with_one_term_matches_hooi(
        dims in prop::collection::vec(4usize..8, 3),
        partial in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let modes: Vec<usize> = if partial { vec![1, 2] } else { vec![0, 1, 2] };
        let rank: Vec<usize> = modes.iter().map(|&m| dims[m] / 2).collect();
        // Low multilinear rank plus 10% noise: a well-separated Tucker problem.
        let mut x = random_btd(&dims, &modes, &rank, 1, seed).reconstruct().unwrap();
        let noise = randn::<f64>(&dims, &mut rng(seed ^ 1));
        let scale = 0.1 * gbtd::norm(&x.view()) / gbtd::norm(&noise.view());
        x.scaled_add(scale, &noise);
        let init = hosvd(&x.view(), &TuckerOptions::new(rank.to_vec()).with_modes(modes.to_vec())).unwrap().factors;
        let t = tucker(&x.view(), &TuckerOptions::new(rank.clone())
            .with_modes(modes.clone())
            .with_iter(iter(200, 1e-14, 0))
            .with_init(Init::Given(init.clone()))).unwrap();
        let b = btd(&x.view(), &BtdOptions::new(1, rank.clone())
            .with_modes(modes.clone())
            .with_iter(iter(400, 1e-14, 0))
            .with_init(Init::Given(init))).unwrap();
        let e_t = relative_error(&x.view(), &t.reconstruct().unwrap().view()).unwrap();
        let e_b = relative_error(&x.view(), &b.reconstruct().unwrap().view()).unwrap();
        prop_assert!((e_t - e_b).abs() < 1e-6 * e_t.max(1e-3), "HOOI {e_t} vs BTD(R=1) {e_b}");
        // The same approximation, not only the same error.
        let d = relative_error(&t.reconstruct().unwrap().view(), &b.reconstruct().unwrap().view()).unwrap();
        prop_assert!(d < 1e-4, "HOOI and BTD(R=1) approximations differ by {d}");
    }

    /// With every rank 1, BTD is CP. Plain ALS from the same factors takes exactly CP-ALS's
    /// steps, so its error history equals parafac's sweep for sweep; and exact generic rank-R CP
    /// data is recovered to < 1e-6.
    #[test]
    fn btd_with_unit_ranks_matches_cp(
        dims in prop::collection::vec(4usize..7, 3),
        r in 2usize..=3,
        seed in any::<u64>(),
    ) {
        let mut g = rng(seed);
        let factors: Vec<Array2<f64>> = dims.iter().map(|&d| randn2(d, r, &mut g)).collect();
        // X(i,j,k) = Σ_r a(i,r) b(j,r) c(k,r), written out.
        let x = ArrayD::from_shape_fn(IxDyn(&dims), |i| {
            (0..r).map(|c| factors[0][[i[0], c]] * factors[1][[i[1], c]] * factors[2][[i[2], c]]).sum::<f64>()
        });
        let fit = fit_multistart(&x, &BtdOptions::new(r, vec![1, 1, 1]).with_iter(iter(3000, 1e-15, 0)));
        prop_assert!(fit.terms.iter().all(|t| t.core.len() == 1));
        let e = relative_error(&x.view(), &fit.reconstruct().unwrap().view()).unwrap();
        prop_assert!(e < 1e-6, "BTD with unit ranks: {e:e}");

        // Noisy data, the same initial factors for both methods.
        let mut noisy = x.clone();
        let noise = randn::<f64>(&dims, &mut g);
        noisy.scaled_add(0.1 * gbtd::norm(&x.view()) / gbtd::norm(&noise.view()), &noise);
        let init: Vec<Array2<f64>> = dims.iter().map(|&d| randn2(d, r, &mut g)).collect();
        let n = 30;
        let b = btd(
            &noisy.view(),
            &BtdOptions::new(r, vec![1, 1, 1])
                .with_iter(iter(n, 0.0, 0))
                .with_init(Init::Given(init.clone()))
                .with_acceleration(Acceleration::None),
        ).unwrap();
        let cp_opts = CpOptions::new(r).with_iter(iter(n, 0.0, 0)).with_init(Init::Given(init));
        let cp = parafac(&noisy.view(), &cp_opts).unwrap();
        prop_assert_eq!(b.convergence.errors.len(), n + 1);
        prop_assert_eq!(cp.convergence.errors.len(), n + 1);
        for k in 1..=n {
            let (eb, ec) = (b.convergence.errors[k], cp.convergence.errors[k]);
            prop_assert!((eb - ec).abs() < 1e-7, "sweep {k}: BTD {eb} vs parafac {ec}");
        }
        let e_cp = relative_error(&noisy.view(), &cp.reconstruct().unwrap().view()).unwrap();
        let e_b = relative_error(&noisy.view(), &b.reconstruct().unwrap().view()).unwrap();
        prop_assert!((e_b - e_cp).abs() < 1e-7, "BTD {e_b} vs parafac {e_cp}");
    }
}

/// Partial BTD of a conv kernel in PyTorch layout (Eq. 5/6): modes (0, 1) with rank (d4*, d3*),
/// the spatial modes kept whole, recovers exact data (`R·d4*·d3* = 8 ≤ kh·kw = 9`, see the
/// identifiability note of `gbtd::btd`); cores are (d4*, d3*, kh, kw).
#[test]
fn partial_btd_of_conv_kernel_recovers_exact_data() {
    let (d4, d3, k) = (12, 10, 3);
    let truth = random_btd(&[d4, d3, k, k], &[0, 1], &[2, 2], 2, 11);
    let x = truth.reconstruct().unwrap();
    let fit = fit_multistart(
        &x,
        &BtdOptions::new(2, vec![2, 2])
            .with_modes(vec![0, 1])
            .with_iter(iter(2000, 1e-15, 0)),
    );
    assert!(
        fit.convergence.rel_error() < 1e-6,
        "{:?}",
        fit.convergence.rel_error()
    );
    for t in &fit.terms {
        assert_eq!(t.core.shape(), &[2, 2, k, k]);
        assert_eq!(t.factors[0].dim(), (d4, 2));
        assert_eq!(t.factors[1].dim(), (d3, 2));
    }
    assert_eq!(fit.n_params(), 2 * (2 * 2 * k * k + d4 * 2 + d3 * 2));
}

/// An overcomplete mode (`R·L > d`) takes the projected-SVD initialisation; exact data with one
/// overcomplete mode is still recovered.
#[test]
fn btd_with_overcomplete_mode_recovers_exact_data() {
    // Mode 1 is overcomplete: 2 terms of rank 2 in a mode of size 3 (their subspaces overlap).
    let truth = random_btd(&[9, 3, 8], &[0, 1, 2], &[2, 2, 2], 2, 6);
    let x = truth.reconstruct().unwrap();
    let fit = fit_multistart(
        &x,
        &BtdOptions::new(2, vec![2, 2, 2]).with_iter(iter(3000, 1e-15, 0)),
    );
    assert!(
        fit.convergence.rel_error() < 1e-6,
        "{}",
        fit.convergence.rel_error()
    );
    // The two terms' mode-1 subspaces are distinct 2-planes of R^3.
    let a = &fit.terms[0].factors[1];
    let b = &fit.terms[1].factors[1];
    let cos = a.t().dot(b);
    let s = gbtd::linalg::singular_values(&cos.view()).unwrap();
    assert!(s[1] < 0.999, "identical subspaces: cosines {s}");
}

/// Above `DIRECT_CORE_SOLVE_MAX` core unknowns the cores are updated by block Gauss–Seidel; exact
/// data is still recovered and the error still never increases.
#[test]
fn btd_with_large_core_system_recovers_exact_data() {
    let (r, l) = (2, 12);
    assert!(r * l * l * l > DIRECT_CORE_SOLVE_MAX);
    let truth = random_btd(&[26, 26, 26], &[0, 1, 2], &[l, l, l], r, 3);
    let x = truth.reconstruct().unwrap();
    let fit = btd(
        &x.view(),
        &BtdOptions::new(r, vec![l, l, l]).with_iter(iter(500, 1e-15, 0)),
    )
    .unwrap();
    assert!(
        fit.convergence.rel_error() < 1e-6,
        "{}",
        fit.convergence.rel_error()
    );
    for w in fit.convergence.errors.windows(2) {
        assert!(w[1] <= w[0] * (1.0 + 1e-9) + 1e-12, "error increased: {w:?}");
    }
}

/// A mode longer than 32 takes the other branch of the factor solve (triangular solves instead of
/// column-by-column `potrs`); exact data is still recovered.
#[test]
fn btd_recovers_exact_data_with_a_long_mode() {
    let truth = random_btd(&[40, 6, 5], &[0, 1, 2], &[2, 2, 2], 2, 8);
    let x = truth.reconstruct().unwrap();
    let fit = fit_multistart(
        &x,
        &BtdOptions::new(2, vec![2, 2, 2]).with_iter(iter(2000, 1e-15, 0)),
    );
    assert!(
        fit.convergence.rel_error() < 1e-6,
        "{}",
        fit.convergence.rel_error()
    );
}

/// Given factors use the concatenated layout `[A_m^0 … A_m^{R-1}]`: the true factors give the
/// true model at initialisation (the cores are the least-squares solution).
#[test]
fn given_true_factors_fit_exactly_at_initialisation() {
    let truth = random_btd(&[6, 7, 5], &[2, 0], &[2, 3], 2, 9);
    let x = truth.reconstruct().unwrap();
    let given: Vec<Array2<f64>> = (0..2).map(|i| truth.concatenated_factor(i).unwrap()).collect();
    assert_eq!(given[0].dim(), (5, 4));
    assert_eq!(given[1].dim(), (6, 6));
    let opts = BtdOptions::new(2, vec![2, 3])
        .with_modes(vec![2, 0])
        .with_iter(iter(0, 0.0, 0))
        .with_init(Init::Given(given));
    let fit = btd(&x.view(), &opts).unwrap();
    assert_eq!(fit.convergence.iterations, 0);
    assert_eq!(fit.convergence.errors.len(), 1);
    assert!(fit.convergence.errors[0] < 1e-10, "{}", fit.convergence.errors[0]);
    assert_eq!(fit.modes, vec![2, 0]);
}

/// The same seed gives the same result; tol = 0 runs exactly n_iter_max sweeps.
#[test]
fn btd_is_deterministic_per_seed() {
    let x = randn::<f64>(&[6, 5, 4], &mut rng(1));
    let opts = BtdOptions::new(2, vec![2, 2, 2])
        .with_iter(iter(7, 0.0, 42))
        .with_init(Init::Random);
    let a = btd(&x.view(), &opts).unwrap();
    let b = btd(&x.view(), &opts).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.convergence.iterations, 7);
    assert_eq!(a.convergence.errors.len(), 8);
    assert!(!a.convergence.converged);
    let c = btd(
        &x.view(),
        &BtdOptions {
            iter: iter(7, 0.0, 43),
            ..opts
        },
    )
    .unwrap();
    assert_ne!(a.terms[0].factors[0], c.terms[0].factors[0]);
}

/// f32 input works and recovers exact data to f32 accuracy.
#[test]
fn btd_in_f32() {
    let truth = random_btd(&[6, 6, 5], &[0, 1, 2], &[2, 2, 2], 2, 21);
    let x = truth.reconstruct().unwrap().mapv(|v| v as f32);
    let fit = btd(
        &x.view(),
        &BtdOptions::new(2, vec![2, 2, 2]).with_iter(iter(1000, 1e-7, 0)),
    )
    .unwrap();
    let e = relative_error(&x.view(), &fit.reconstruct().unwrap().view()).unwrap();
    assert!(e < 1e-3, "{e}");
}

#[test]
fn btd_rejects_bad_input_with_typed_errors() {
    let x = randn::<f64>(&[4, 5, 3], &mut rng(0));
    let ok = BtdOptions::<f64>::new(2, vec![2, 2, 2]);
    let run = |o: &BtdOptions<f64>| btd(&x.view(), o);
    assert!(matches!(
        run(&BtdOptions {
            terms: 0,
            ..ok.clone()
        }),
        Err(GbtdError::Rank(_))
    ));
    assert!(matches!(
        run(&BtdOptions::new(2, vec![5, 2, 2])),
        Err(GbtdError::Rank(_))
    ));
    assert!(matches!(
        run(&BtdOptions::new(2, vec![0, 2, 2])),
        Err(GbtdError::Rank(_))
    ));
    assert!(matches!(
        run(&BtdOptions::new(2, vec![2, 2])),
        Err(GbtdError::Rank(_))
    ));
    assert!(matches!(
        run(&ok.clone().with_modes(vec![0, 3])),
        Err(GbtdError::Mode(_))
    ));
    assert!(matches!(
        run(&BtdOptions::new(2, vec![2, 2]).with_modes(vec![1, 1])),
        Err(GbtdError::Mode(_))
    ));
    assert!(matches!(
        run(&BtdOptions::new(2, vec![]).with_modes(vec![])),
        Err(GbtdError::Mode(_))
    ));
    assert!(matches!(
        run(&ok.clone().with_iter(iter(5, -1.0, 0))),
        Err(GbtdError::Options(_))
    ));
    assert!(matches!(
        run(&ok.clone().with_iter(iter(5, f64::NAN, 0))),
        Err(GbtdError::Options(_))
    ));
    // Given factors: one (d, R·L) matrix per mode.
    let bad = vec![
        Array2::<f64>::zeros((4, 2)),
        Array2::zeros((5, 4)),
        Array2::zeros((3, 4)),
    ];
    assert!(matches!(
        run(&ok.clone().with_init(Init::Given(bad))),
        Err(GbtdError::Shape(_))
    ));
    let mut nan_f = vec![
        Array2::<f64>::ones((4, 4)),
        Array2::ones((5, 4)),
        Array2::ones((3, 4)),
    ];
    nan_f[1][[0, 0]] = f64::NAN;
    assert!(matches!(
        run(&ok.clone().with_init(Init::Given(nan_f))),
        Err(GbtdError::NonFinite(_))
    ));
    assert!(matches!(
        run(&ok.clone().with_init(Init::Given(vec![]))),
        Err(GbtdError::Shape(_))
    ));

    let mut xn = x.clone();
    xn[[1, 2, 0]] = f64::NAN;
    assert!(matches!(btd(&xn.view(), &ok), Err(GbtdError::NonFinite(_))));
    xn[[1, 2, 0]] = f64::INFINITY;
    assert!(matches!(btd(&xn.view(), &ok), Err(GbtdError::NonFinite(_))));
    let empty = ArrayD::<f64>::zeros(IxDyn(&[0, 3]));
    assert!(matches!(
        btd(&empty.view(), &BtdOptions::new(1, vec![1, 1])),
        Err(GbtdError::Empty(_))
    ));
}

/// The zero tensor and unit dimensions are valid input: the fit is exact (zero) and finite.
#[test]
fn btd_of_degenerate_input_is_finite() {
    let zero = ArrayD::<f64>::zeros(IxDyn(&[4, 3, 5]));
    let fit = btd(
        &zero.view(),
        &BtdOptions::new(2, vec![2, 1, 2]).with_iter(iter(3, 0.0, 0)),
    )
    .unwrap();
    assert!(fit.convergence.errors.iter().all(|e| *e == 0.0));
    assert!(fit.reconstruct().unwrap().iter().all(|v| *v == 0.0));
    let thin = randn::<f64>(&[1, 4, 1], &mut rng(3));
    let fit = btd(
        &thin.view(),
        &BtdOptions::new(3, vec![1, 1, 1]).with_iter(iter(5, 0.0, 0)),
    )
    .unwrap();
    assert!(
        fit.convergence.rel_error() < 1e-12,
        "{}",
        fit.convergence.rel_error()
    );
}

#[test]
fn malformed_btd_reports_errors_instead_of_panicking() {
    let good = random_btd(&[4, 5, 3], &[0, 2], &[2, 2], 2, 1);
    assert!(good.validate().is_ok());
    let mut b = good.clone();
    b.terms[1].factors[0] = Array2::zeros((3, 2));
    assert!(matches!(b.reconstruct(), Err(GbtdError::Shape(_))));
    let mut b = good.clone();
    b.terms[0].core = ArrayD::zeros(IxDyn(&[2, 4, 2]));
    assert!(matches!(b.reconstruct(), Err(GbtdError::Shape(_))));
    let mut b = good.clone();
    b.terms[0].factors.pop();
    assert!(matches!(b.reconstruct(), Err(GbtdError::Shape(_))));
    let mut b = good.clone();
    b.modes = vec![0, 7];
    assert!(matches!(b.reconstruct(), Err(GbtdError::Mode(_))));
    let mut b = good.clone();
    b.modes = vec![2, 2];
    assert!(matches!(b.reconstruct(), Err(GbtdError::Mode(_))));
    let mut b = good.clone();
    b.terms.clear();
    assert!(matches!(b.reconstruct(), Err(GbtdError::Rank(_))));
    assert!(matches!(good.term_tensor(2), Err(GbtdError::Shape(_))));
    assert!(matches!(good.concatenated_factor(2), Err(GbtdError::Shape(_))));
    // The sum of the term tensors is the reconstruction.
    let sum = &good.term_tensor(0).unwrap() + &good.term_tensor(1).unwrap();
    let rec = good.reconstruct().unwrap();
    for (a, b) in sum.iter().zip(rec.iter()) {
        assert_abs_diff_eq!(*a, *b, epsilon = 1e-12);
    }
}

/// The progress callback of the options hears every sweep, numbered from 1, with the error the
/// convergence record keeps for it (BTD with and without acceleration, and CP-ALS).
#[test]
fn progress_callback_reports_every_sweep() {
    let x = randn::<f64>(&[5, 4, 3, 3], &mut rng(21));
    let check = |seen: Vec<(usize, f64)>, errors: &[f64], iterations: usize| {
        assert_eq!(seen.len(), iterations);
        assert_eq!(errors.len(), iterations + 1);
        for (i, &(sweep, e)) in seen.iter().enumerate() {
            assert_eq!(sweep, i + 1);
            assert_eq!(e, errors[i + 1]);
        }
    };
    for acceleration in [Acceleration::LineSearch, Acceleration::None] {
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |sweep: usize, e: f64| seen.borrow_mut().push((sweep, e));
        let opts = BtdOptions::new(2, vec![2, 2])
            .with_modes(vec![0, 1])
            .with_iter(iter(6, 0.0, 0))
            .with_acceleration(acceleration)
            .with_progress(&record);
        let b = btd(&x.view(), &opts).unwrap();
        drop(opts);
        check(seen.into_inner(), &b.convergence.errors, 6);
    }
    let seen = std::cell::RefCell::new(Vec::new());
    let record = |sweep: usize, e: f64| seen.borrow_mut().push((sweep, e));
    let opts = CpOptions::new(3)
        .with_iter(iter(5, 0.0, 0))
        .with_progress(&record);
    let cp = parafac(&x.view(), &opts).unwrap();
    drop(opts);
    check(seen.into_inner(), &cp.convergence.errors, 5);
}

/// A matrix-shaped kernel `(c_out, c_in, 1, 1)` (a 1×1 conv): a random rank-`k` signal with
/// decaying scales plus `noise` times Gaussian noise.
fn low_rank_plus_noise(c_out: usize, c_in: usize, k: usize, noise: f64, seed: u64) -> ArrayD<f64> {
    let mut g = rng(seed);
    let a = randn2::<f64>(c_out, k, &mut g);
    let b = randn2::<f64>(c_in, k, &mut g);
    let scales = Array2::from_shape_fn((k, k), |(i, j)| if i == j { 0.9f64.powi(i as i32) } else { 0.0 });
    let m = a.dot(&scales).dot(&b.t()) / (k as f64).sqrt() + randn2::<f64>(c_out, c_in, &mut g) * noise;
    m.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&[c_out, c_in, 1, 1]))
        .unwrap()
}

/// `sqrt(Σ_{i>k} σ_i²) / ‖M‖`: the error of the best rank-`k` approximation of a matrix
/// (Eckart–Young), from LAPACK's singular values.
fn svd_bound(x: &ArrayD<f64>, k: usize) -> f64 {
    let (rows, cols) = (x.shape()[0], x.len() / x.shape()[0]);
    let m = x.to_owned().into_shape_with_order((rows, cols)).unwrap();
    let s = gbtd::linalg::singular_values(&m.view()).unwrap();
    let total: f64 = s.iter().map(|v| v * v).sum();
    let tail: f64 = s.iter().skip(k).map(|v| v * v).sum();
    (tail / total).sqrt()
}

/// Regression (issue 9 §5): on a 1×1 kernel, R terms of rank `(L_out, L_in)` can hold any matrix
/// of rank `R·min(L_out, L_in)`, so BTD's best error is the truncated-SVD error of that rank. A
/// (1280, 320, 1, 1) kernel with 4 terms of rank (160, 40) stalled at 0.835 against a bound of
/// 0.61; this is the same problem at 1/8 of the size.
#[test]
fn btd_of_a_1x1_kernel_reaches_the_svd_bound() {
    let (c_out, c_in, r, l_out, l_in) = (160, 40, 4, 20, 5);
    let x = low_rank_plus_noise(c_out, c_in, 30, 0.3, 77);
    let bound = svd_bound(&x, r * l_in);
    let fit = btd(
        &x.view(),
        &BtdOptions::new(r, vec![l_out, l_in]).with_modes(vec![0, 1]),
    )
    .unwrap();
    let e = relative_error(&x.view(), &fit.reconstruct().unwrap().view()).unwrap();
    assert!(
        e <= bound * (1.0 + 1e-6),
        "BTD error {e} after {} sweeps, SVD bound {bound}",
        fit.convergence.iterations
    );
}

proptest! {
    #![proptest_config(fixed(16))]

    /// When `R·L_m ≤ d_m` on every factorized mode of matrix-shaped data (a 1×1 kernel, or an
    /// order-2 tensor), the single Tucker of ranks `(R·L_0, R·L_1)` is an R-term BTD in disguise
    /// (its core is diagonal up to the factors' rotations), so BTD must end no higher than
    /// HOOI's error for those ranks. (With kept modes of more than one position the BTD model is
    /// a strict subset of that Tucker, block-diagonal cores, and no such bound holds.)
    #[test]
    fn btd_ends_no_higher_than_tucker_of_the_total_ranks(
        c_out in 4usize..24,
        c_in in 4usize..24,
        r in 1usize..=3,
        l_pick in (0usize..100, 0usize..100),
        kernel in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let l_out = 1 + l_pick.0 % (c_out / r);
        let l_in = 1 + l_pick.1 % (c_in / r);
        let k = 1 + (seed as usize % c_out.min(c_in));
        let mut x = low_rank_plus_noise(c_out, c_in, k, 0.2, seed);
        if !kernel {
            x = x.into_shape_with_order(IxDyn(&[c_out, c_in])).unwrap();
        }
        let opts = BtdOptions::new(r, vec![l_out, l_in]).with_modes(vec![0, 1]);
        let fit = btd(&x.view(), &opts).unwrap();
        let e_btd = relative_error(&x.view(), &fit.reconstruct().unwrap().view()).unwrap();
        let t = tucker(&x.view(), &TuckerOptions::new(vec![r * l_out, r * l_in]).with_modes(vec![0, 1])).unwrap();
        let e_tucker = relative_error(&x.view(), &t.reconstruct().unwrap().view()).unwrap();
        prop_assert!(
            e_btd <= e_tucker * (1.0 + 1e-6) + 1e-9,
            "{r} terms of rank ({l_out}, {l_in}) on {:?}: BTD {e_btd} vs Tucker {e_tucker}",
            x.shape()
        );
    }
}
