//! Property tests of the collective factorization (issue 3, property 7; paper Eq. 12): the
//! collective factorization of L kernels is L BTDs with tied cores and input factors, block by
//! block; data generated with tied factors is recovered exactly; plus parameter counts and errors.
use gbtd::GbtdError;
use gbtd::btd::{BlockTerm, Btd, BtdOptions, btd};
use gbtd::collective::{Collective, CollectiveOptions, collective_btd};
use gbtd::options::{Init, IterOptions};
use gbtd::random::{randn, randn2, rng};
use gbtd::relative_error;
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, IxDyn, s};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn iter(n: usize, tol: f64, seed: u64) -> IterOptions {
    IterOptions {
        n_iter_max: n,
        tol,
        seed,
    }
}

/// Kernels `X_l = Σ_r G_r ×_0 A4_r^l ×_1 A3_r` (PyTorch layout) with shared `G_r`, `A3_r` and
/// per-kernel `A4_r^l`, written out elementwise:
/// `X_l(c, m, a, b) = Σ_r Σ_{q,p} G_r(q, p, a, b) A4_r^l(c, q) A3_r(m, p)`.
fn tied_kernels(
    outs: &[usize],
    d3: usize,
    k: usize,
    r: usize,
    (d4s, d3s): (usize, usize),
    seed: u64,
) -> Vec<ArrayD<f64>> {
    let mut g = rng(seed);
    let cores: Vec<ArrayD<f64>> = (0..r).map(|_| randn(&[d4s, d3s, k, k], &mut g)).collect();
    let a3: Vec<Array2<f64>> = (0..r).map(|_| randn2(d3, d3s, &mut g)).collect();
    outs.iter()
        .map(|&d4| {
            let a4: Vec<Array2<f64>> = (0..r).map(|_| randn2(d4, d4s, &mut g)).collect();
            ArrayD::from_shape_fn(IxDyn(&[d4, d3, k, k]), |i| {
                let mut v = 0.0;
                for t in 0..r {
                    for q in 0..d4s {
                        for p in 0..d3s {
                            v += cores[t][[q, p, i[2], i[3]]] * a4[t][[i[0], q]] * a3[t][[i[1], p]];
                        }
                    }
                }
                v
            })
        })
        .collect()
}

/// The BTD of kernel `l` assembled in the test from the shared parts of the collective result:
/// cores `G_r`, `A3_r`, and rows `o_l..o_l + d4_l` of `A4_r`.
fn tied_btd_by_hand(c: &Collective<f64>, l: usize) -> Btd<f64> {
    let o: usize = c.out_channels[..l].iter().sum();
    let d4 = c.out_channels[l];
    let terms = c
        .btd
        .terms
        .iter()
        .map(|t| BlockTerm {
            core: t.core.clone(),
            factors: vec![
                t.factors[0].slice(s![o..o + d4, ..]).to_owned(),
                t.factors[1].clone(),
            ],
        })
        .collect();
    let mut shape = c.btd.shape.clone();
    shape[0] = d4;
    Btd {
        terms,
        modes: vec![0, 1],
        shape,
        convergence: Default::default(),
    }
}

fn max_abs_diff(a: &ArrayViewD<'_, f64>, b: &ArrayViewD<'_, f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Block by block, the collective factorization of L kernels is L BTDs with tied `G` and
    /// `A3`: kernel l's slice of the reconstruction of `X⁺` equals the BTD built from the shared
    /// cores, `A3` and the l-th block of `A4`; the reported per-kernel errors are those of these
    /// slices; the parameter counts follow the formulas of Eq. 12.
    #[test]
    fn collective_is_tied_btds_block_by_block(
        outs in prop::collection::vec(2usize..6, 1..=3),
        d3 in 3usize..6,
        k in 1usize..=3,
        r in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let mut g = rng(seed);
        let kernels: Vec<ArrayD<f64>> = outs.iter().map(|&d4| randn(&[d4, d3, k, k], &mut g)).collect();
        let views: Vec<ArrayViewD<'_, f64>> = kernels.iter().map(|x| x.view()).collect();
        let (d4s, d3s) = (1 + seed as usize % 2, 1 + (seed as usize / 2) % 3);
        let opts = CollectiveOptions::new(r, vec![d4s, d3s]).with_iter(iter(5, 0.0, seed));
        let c = collective_btd(&views, &opts).unwrap();
        prop_assert_eq!(&c.out_channels, &outs);
        prop_assert_eq!(c.btd.shape.clone(), vec![outs.iter().sum::<usize>(), d3, k, k]);

        let full = c.btd.reconstruct().unwrap();
        let mut o = 0;
        for (l, &d4) in outs.iter().enumerate() {
            let slice = full.slice_axis(Axis(0), (o..o + d4).into());
            let by_hand = tied_btd_by_hand(&c, l).reconstruct().unwrap();
            prop_assert!(max_abs_diff(&slice, &by_hand.view()) < 1e-12);
            let from_api = c.reconstruct_kernel(l).unwrap();
            prop_assert!(max_abs_diff(&from_api.view(), &by_hand.view()) < 1e-12);
            // The API's blocks are the same rows of A4.
            for t in 0..r {
                let blk = c.a4_block(l, t).unwrap();
                prop_assert_eq!(blk, c.btd.terms[t].factors[0].slice(s![o..o + d4, ..]));
            }
            let e = relative_error(&kernels[l].view(), &by_hand.view()).unwrap();
            prop_assert!((c.rel_errors[l] - e).abs() < 1e-12);
            o += d4;
        }

        // Parameters: shared G and A3 once, every A4 block once; against L independent BTDs.
        let shared = k * k * d3s * d4s + d3 * d3s;
        let total_out: usize = outs.iter().sum();
        prop_assert_eq!(c.n_params(), r * (shared + total_out * d4s));
        let independent: usize = outs.iter().map(|&d4| r * (shared + d4 * d4s)).sum();
        prop_assert_eq!(c.n_params_independent(), independent);
        prop_assert!(c.n_params() <= c.n_params_independent());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        rng_seed: RngSeed::Fixed(0xc011ec7),
        ..ProptestConfig::default()
    })]

    /// Kernels generated with tied `G_r` and `A3_r` (and their own `A4` blocks) are recovered
    /// exactly, kernel by kernel.
    #[test]
    fn collective_recovers_kernels_with_tied_factors(
        outs in prop::collection::vec(4usize..8, 2..=3),
        r in 1usize..=2,
        seed in any::<u64>(),
    ) {
        let (d3, k, rank) = (6, 3, (2usize, 2usize));
        let kernels = tied_kernels(&outs, d3, k, r, rank, seed);
        let views: Vec<ArrayViewD<'_, f64>> = kernels.iter().map(|x| x.view()).collect();
        let mut best = None;
        for start in 0..4u64 {
            let init = if start == 0 { Init::Svd } else { Init::Random };
            let opts = CollectiveOptions::new(r, vec![rank.0, rank.1])
                .with_iter(iter(2000, 1e-15, start))
                .with_init(init);
            let c = collective_btd(&views, &opts).unwrap();
            let worst = c.rel_errors.iter().copied().fold(0.0, f64::max);
            if worst < 1e-6 {
                best = Some(c);
                break;
            }
        }
        let c = best.expect("no start recovered the tied kernels");
        for (l, x) in kernels.iter().enumerate() {
            let e = relative_error(&x.view(), &c.reconstruct_kernel(l).unwrap().view()).unwrap();
            prop_assert!(e < 1e-6, "kernel {l}: {e:e}");
        }
    }
}

/// With one kernel the collective factorization is the partial BTD of that kernel on modes (0, 1).
#[test]
fn collective_of_one_kernel_is_its_btd() {
    let x = randn::<f64>(&[6, 5, 3, 3], &mut rng(4));
    let it = iter(6, 0.0, 3);
    let c = collective_btd(&[x.view()], &CollectiveOptions::new(2, vec![2, 2]).with_iter(it)).unwrap();
    let b = btd(
        &x.view(),
        &BtdOptions::new(2, vec![2, 2])
            .with_modes(vec![0, 1])
            .with_iter(it),
    )
    .unwrap();
    assert_eq!(c.btd, b);
    assert_eq!(c.rel_errors.len(), 1);
    assert!((c.rel_errors[0] - b.convergence.rel_error()).abs() < 1e-12);
}

/// Given initial factors take the concatenated layout `[Â_4 (Σd4 × R·d4*), Â_3 (d3 × R·d3*)]`.
#[test]
fn collective_accepts_given_factors_and_rejects_bad_ones() {
    let kernels = tied_kernels(&[4, 5], 6, 3, 2, (2, 2), 17);
    let views: Vec<ArrayViewD<'_, f64>> = kernels.iter().map(|x| x.view()).collect();
    let mut g = rng(1);
    let good = vec![randn2::<f64>(9, 4, &mut g), randn2::<f64>(6, 4, &mut g)];
    let opts = CollectiveOptions::new(2, vec![2, 2]).with_iter(iter(3, 0.0, 0));
    assert!(collective_btd(&views, &opts.clone().with_init(Init::Given(good))).is_ok());
    let bad = vec![randn2::<f64>(4, 4, &mut g), randn2::<f64>(6, 4, &mut g)];
    assert!(matches!(
        collective_btd(&views, &opts.with_init(Init::Given(bad))),
        Err(GbtdError::Shape(_))
    ));
}

#[test]
fn collective_rejects_bad_input_with_typed_errors() {
    let mut g = rng(2);
    let a = randn::<f64>(&[4, 5, 3, 3], &mut g);
    let b = randn::<f64>(&[3, 5, 3, 3], &mut g);
    let opts = CollectiveOptions::<f64>::new(2, vec![2, 2]).with_iter(iter(3, 0.0, 0));
    assert!(matches!(
        collective_btd::<f64>(&[], &opts),
        Err(GbtdError::Empty(_))
    ));
    let wrong_in = randn::<f64>(&[4, 6, 3, 3], &mut g);
    assert!(matches!(
        collective_btd(&[a.view(), wrong_in.view()], &opts),
        Err(GbtdError::Shape(_))
    ));
    let wrong_k = randn::<f64>(&[4, 5, 1, 1], &mut g);
    assert!(matches!(
        collective_btd(&[a.view(), wrong_k.view()], &opts),
        Err(GbtdError::Shape(_))
    ));
    let three_way = randn::<f64>(&[4, 5, 3], &mut g);
    assert!(matches!(
        collective_btd(&[three_way.view()], &opts),
        Err(GbtdError::Shape(_))
    ));
    let mut nan = b.clone();
    nan[[0, 0, 0, 0]] = f64::NAN;
    assert!(matches!(
        collective_btd(&[a.view(), nan.view()], &opts),
        Err(GbtdError::NonFinite(_))
    ));
    let empty = ArrayD::<f64>::zeros(IxDyn(&[0, 5, 3, 3]));
    assert!(matches!(
        collective_btd(&[a.view(), empty.view()], &opts),
        Err(GbtdError::Empty(_))
    ));
    let rank_too_big = CollectiveOptions::new(2, vec![2, 6]);
    assert!(matches!(
        collective_btd(&[a.view(), b.view()], &rank_too_big),
        Err(GbtdError::Rank(_))
    ));
    let no_terms = CollectiveOptions::new(0, vec![2, 2]);
    assert!(matches!(
        collective_btd(&[a.view(), b.view()], &no_terms),
        Err(GbtdError::Rank(_))
    ));

    let c = collective_btd(&[a.view(), b.view()], &opts).unwrap();
    assert!(matches!(c.kernel_btd(2), Err(GbtdError::Shape(_))));
    assert!(matches!(c.a4_block(0, 2), Err(GbtdError::Shape(_))));
    let mut broken = c.clone();
    broken.out_channels = vec![4, 4];
    assert!(matches!(broken.reconstruct(), Err(GbtdError::Shape(_))));
}
