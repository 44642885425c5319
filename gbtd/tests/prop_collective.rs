//! Property tests of the collective factorization (issue 3, property 7; paper Eq. 12): the
//! collective factorization of L kernels is L BTDs with tied cores and input factors, block by
//! block; data generated with tied factors is recovered exactly; the fit is at least as good as a
//! simple tied-factor baseline computed here; plus parameter counts and errors.
use gbtd::GbtdError;
use gbtd::btd::{BlockTerm, Btd, BtdOptions, btd};
use gbtd::collective::{ChannelRanks, Collective, CollectiveOptions, collective_btd};
use gbtd::options::{Init, IterOptions};
use gbtd::random::{randn, randn2, rng};
use gbtd::relative_error;
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, IxDyn, s};
use ndarray_linalg::SVD;
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

/// A fixed-seed configuration, so that every run checks the same cases.
fn fixed(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The `k` leading left singular vectors of `m` (LAPACK SVD of the whole matrix).
fn leading_vectors(m: &Array2<f64>, k: usize) -> Array2<f64> {
    let (u, _, _) = m.svd(true, false).expect("SVD");
    u.expect("U").slice(s![.., ..k]).to_owned()
}

/// The relative error of the simple tied-factor baseline on the concatenation `X⁺` of `kernels`
/// (HOSVD-style): `Â_4` = the `R·d4*` leading left singular vectors of `X⁺`'s output-mode
/// unfolding and `Â_3` = the `R·d3*` leading ones of its input-mode unfolding, split into `R`
/// blocks; each core the projection `G_r = X⁺ ×_0 A4_rᵀ ×_1 A3_rᵀ`. The model is the same tied
/// form as the collective factorization's (shared `G_r`, `A3_r`; rows of `A4_r` per kernel), and
/// equals `Σ_r A4_r A4_rᵀ X⁺(·, ·, a, b) A3_r A3_rᵀ` on every spatial slice.
fn tied_hosvd_baseline_error(kernels: &[ArrayD<f64>], r: usize, (d4s, d3s): (usize, usize)) -> f64 {
    let views: Vec<ArrayViewD<'_, f64>> = kernels.iter().map(|x| x.view()).collect();
    let xp = ndarray::concatenate(Axis(0), &views).unwrap();
    let (n4, d3, kh, kw) = (xp.shape()[0], xp.shape()[1], xp.shape()[2], xp.shape()[3]);
    // Unfoldings up to a column order, which the left singular vectors do not depend on.
    let unfold = |first: usize, rows: usize| {
        let mut order = vec![first];
        order.extend((0..4).filter(|&m| m != first));
        xp.view()
            .permuted_axes(order)
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, xp.len() / rows))
            .unwrap()
    };
    let u4 = leading_vectors(&unfold(0, n4), r * d4s);
    let u3 = leading_vectors(&unfold(1, d3), r * d3s);
    let (mut num, mut den) = (0.0, 0.0);
    for a in 0..kh {
        for b in 0..kw {
            let x = xp.slice(s![.., .., a, b]);
            let mut model = Array2::<f64>::zeros((n4, d3));
            for t in 0..r {
                let a4 = u4.slice(s![.., t * d4s..(t + 1) * d4s]);
                let a3 = u3.slice(s![.., t * d3s..(t + 1) * d3s]);
                model += &a4.dot(&a4.t()).dot(&x).dot(&a3.dot(&a3.t()));
            }
            num += (&x - &model).iter().map(|v| v * v).sum::<f64>();
            den += x.iter().map(|v| v * v).sum::<f64>();
        }
    }
    (num / den).sqrt()
}

proptest! {
    #![proptest_config(fixed(16, 0xb10c_c011))]

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
        let opts = CollectiveOptions::new(r, ChannelRanks::new(d4s, d3s)).with_iter(iter(5, 0.0, seed));
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
            let opts = CollectiveOptions::new(r, ChannelRanks::new(rank.0, rank.1))
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

proptest! {
    #![proptest_config(fixed(12, 0x0ba5_e11e))]

    /// The collective fit of `X⁺` is at least as good as the simple tied-factor baseline
    /// computed in the test (`tied_hosvd_baseline_error`), on random kernels and on tied kernels
    /// plus 10% noise, whenever the terms' subspaces fit in both channel modes
    /// (`R·d4* ≤ Σ d4_l`, `R·d3* ≤ d3`).
    #[test]
    fn collective_fit_beats_the_tied_hosvd_baseline(
        outs in prop::collection::vec(2usize..6, 2..=3),
        d3 in 4usize..8,
        r in 1usize..=2,
        d4s in 1usize..=2,
        d3s in 1usize..=2,
        noisy_tied in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let k = 3;
        let kernels: Vec<ArrayD<f64>> = if noisy_tied {
            let mut g = rng(seed ^ 7);
            tied_kernels(&outs, d3, k, r, (d4s, d3s), seed)
                .into_iter()
                .map(|x| {
                    let noise = randn::<f64>(x.shape(), &mut g);
                    let scale = 0.1 * gbtd::norm(&x.view()) / gbtd::norm(&noise.view());
                    &x + &(noise * scale)
                })
                .collect()
        } else {
            let mut g = rng(seed);
            outs.iter().map(|&d4| randn(&[d4, d3, k, k], &mut g)).collect()
        };
        let baseline = tied_hosvd_baseline_error(&kernels, r, (d4s, d3s));
        let views: Vec<ArrayViewD<'_, f64>> = kernels.iter().map(|x| x.view()).collect();
        let opts = CollectiveOptions::new(r, ChannelRanks::new(d4s, d3s)).with_iter(iter(20, 0.0, seed));
        let c = collective_btd(&views, &opts).unwrap();
        let xp = ndarray::concatenate(Axis(0), &views).unwrap();
        let fit = relative_error(&xp.view(), &c.btd.reconstruct().unwrap().view()).unwrap();
        prop_assert!(
            fit <= baseline + 1e-9,
            "collective {fit} is worse than the tied HOSVD baseline {baseline}"
        );
        prop_assert!(baseline < 1.0 && fit > 0.0);
    }
}

/// With one kernel the collective factorization is the partial BTD of that kernel on modes (0, 1).
#[test]
fn collective_of_one_kernel_is_its_btd() {
    let x = randn::<f64>(&[6, 5, 3, 3], &mut rng(4));
    let it = iter(6, 0.0, 3);
    let c = collective_btd(
        &[x.view()],
        &CollectiveOptions::new(2, ChannelRanks::new(2, 2)).with_iter(it),
    )
    .unwrap();
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
    let opts = CollectiveOptions::new(2, ChannelRanks::new(2, 2)).with_iter(iter(3, 0.0, 0));
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
    let opts = CollectiveOptions::<f64>::new(2, ChannelRanks::new(2, 2)).with_iter(iter(3, 0.0, 0));
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
    let rank_too_big = CollectiveOptions::new(2, ChannelRanks::new(2, 6));
    assert!(matches!(
        collective_btd(&[a.view(), b.view()], &rank_too_big),
        Err(GbtdError::Rank(_))
    ));
    let no_terms = CollectiveOptions::new(0, ChannelRanks::new(2, 2));
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
