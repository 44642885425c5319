//! Property tests of the factorization ↔ layer conversions (issue 3, property 8; paper §3.2,
//! Eq. 6–10): a kernel's three layer weights, run as naive convolutions written here, equal the
//! dense convolution with the reconstructed kernel; with σ = ReLU between them they equal the
//! generalized-BTD operator. Also the layout conversion, the Tucker-2/CP/collective conversions and
//! their inverses, and the error paths.
use gbtd::Decomposition;
use gbtd::GbtdError;
use gbtd::btd::{BlockTerm, Btd, BtdOptions, btd};
use gbtd::collective::{ChannelRanks, CollectiveOptions, collective_btd};
use gbtd::cp::{CpOptions, parafac};
use gbtd::generalized::{ConvGeometry, GeneralizedBtd, Sigma};
use gbtd::layers::{LayerChain, paper_from_torch, torch_from_paper};
use gbtd::options::{Init, IterOptions};
use gbtd::random::{randn, randn2, rng};
use gbtd::tucker::{TuckerOptions, tucker};
use ndarray::{Array3, Array4, ArrayD, ArrayView3, ArrayView4, ArrayViewD, Ix4, IxDyn};
use proptest::prelude::*;

/// Naive 2-D convolution (cross-correlation, PyTorch semantics) of `u` `(C, H, W)` with `w`
/// `(O, C/groups, kh, kw)`, zero padding `pad`, stride `st`:
/// `y[o, x, y] = Σ_{c in group(o)} Σ_{a,b} u[c, st·x − ph + a, st·y − pw + b] · w[o, c − c0, a, b]`.
fn conv2d(
    u: &ArrayView3<'_, f64>,
    w: &ArrayView4<'_, f64>,
    groups: usize,
    st: usize,
    pad: (usize, usize),
) -> Array3<f64> {
    let (c, h, wd) = u.dim();
    let (o, cg, kh, kw) = w.dim();
    assert_eq!(c, cg * groups);
    let og = o / groups;
    let ho = (h + 2 * pad.0 - kh) / st + 1;
    let wo = (wd + 2 * pad.1 - kw) / st + 1;
    let mut y = Array3::<f64>::zeros((o, ho, wo));
    for oc in 0..o {
        let g = oc / og;
        for x in 0..ho {
            for yy in 0..wo {
                let mut s = 0.0;
                for ci in 0..cg {
                    for a in 0..kh {
                        for b in 0..kw {
                            let i = (st * x + a) as isize - pad.0 as isize;
                            let j = (st * yy + b) as isize - pad.1 as isize;
                            if i >= 0 && j >= 0 && (i as usize) < h && (j as usize) < wd {
                                s += u[[g * cg + ci, i as usize, j as usize]] * w[[oc, ci, a, b]];
                            }
                        }
                    }
                }
                y[[oc, x, yy]] = s;
            }
        }
    }
    y
}

/// The chain run as three naive convolutions, σ applied after the first two.
fn run_chain(
    c: &LayerChain<f64>,
    u: &ArrayView3<'_, f64>,
    st: usize,
    pad: (usize, usize),
    sigma: fn(f64) -> f64,
) -> Array3<f64> {
    let t1 = conv2d(u, &c.reduce.view(), 1, 1, (0, 0)).mapv(sigma);
    let t2 = conv2d(&t1.view(), &c.grouped.view(), c.groups, st, pad).mapv(sigma);
    conv2d(&t2.view(), &c.expand.view(), 1, 1, (0, 0))
}

fn max_rel_diff(a: &ArrayViewD<'_, f64>, b: &ArrayViewD<'_, f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let scale = b.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

fn random_kernel_btd(
    d4: usize,
    d3: usize,
    k: usize,
    r: usize,
    (d4s, d3s): (usize, usize),
    seed: u64,
) -> Btd<f64> {
    let mut g = rng(seed);
    Btd {
        terms: (0..r)
            .map(|_| BlockTerm {
                core: randn(&[d4s, d3s, k, k], &mut g),
                factors: vec![randn2(d4, d4s, &mut g), randn2(d3, d3s, &mut g)],
            })
            .collect(),
        modes: vec![0, 1],
        shape: vec![d4, d3, k, k],
        convergence: Default::default(),
    }
}

fn relu(v: f64) -> f64 {
    v.max(0.0)
}

fn ident(v: f64) -> f64 {
    v
}

/// Sizes of one case: (d4, d3, k, R, d4*, d3*, H, W, stride).
fn chain_case() -> impl Strategy<Value = (usize, usize, usize, usize, usize, usize, usize, usize, usize, u64)>
{
    (
        2usize..6,
        2usize..6,
        prop::sample::select(vec![1usize, 3]),
        1usize..=3,
        1usize..=2,
        1usize..=2,
        3usize..7,
        3usize..7,
        1usize..=2,
        any::<u64>(),
    )
        .prop_map(|(d4, d3, k, r, d4s, d3s, h, w, st, seed)| (d4, d3, k, r, d4s, d3s, h, w, st, seed))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// kernel → BTD → three layer weights → naive convolutions equals the naive dense
    /// convolution with the BTD's reconstructed kernel (σ = identity), for "same" padding and
    /// stride 1 or 2; the generalized-BTD operator with σ = identity equals both.
    #[test]
    fn chain_convolution_equals_dense_convolution_of_reconstruction(
        (d4, d3, k, r, d4s, d3s, h, w, st, seed) in chain_case()
    ) {
        let x = randn::<f64>(&[d4, d3, k, k], &mut rng(seed));
        let opts = BtdOptions::new(r, vec![d4s, d3s])
            .with_modes(vec![0, 1])
            .with_iter(IterOptions { n_iter_max: 3, tol: 0.0, seed })
            .with_init(Init::Random);
        let fit = btd(&x.view(), &opts).unwrap();
        let kernel = fit.reconstruct().unwrap().into_dimensionality::<Ix4>().unwrap();
        let chain = LayerChain::from_btd(&fit).unwrap();
        prop_assert_eq!(chain.reduce.dim(), (r * d3s, d3, 1, 1));
        prop_assert_eq!(chain.grouped.dim(), (r * d4s, d3s, k, k));
        prop_assert_eq!(chain.expand.dim(), (d4, r * d4s, 1, 1));
        prop_assert_eq!(chain.groups, r);
        let u = randn::<f64>(&[d3, h, w], &mut rng(seed ^ 7)).into_dimensionality().unwrap();
        let pad = ((k - 1) / 2, (k - 1) / 2);
        let dense = conv2d(&u.view(), &kernel.view(), 1, st, pad);
        let chained = run_chain(&chain, &u.view(), st, pad, ident);
        prop_assert!(max_rel_diff(&chained.view().into_dyn(), &dense.view().into_dyn()) < 1e-12);
        let op = GeneralizedBtd::from_btd(&fit, Sigma::identity()).unwrap();
        let v = op.apply_with(&u.view(), ConvGeometry { stride: st, padding: pad }).unwrap();
        prop_assert!(max_rel_diff(&v.view().into_dyn(), &dense.view().into_dyn()) < 1e-12);
        // The operator's dense kernel is the BTD reconstruction.
        let op_kernel = op.kernel().unwrap();
        prop_assert!(max_rel_diff(&op_kernel.view().into_dyn(), &kernel.view().into_dyn()) < 1e-12);
    }

    /// With σ = ReLU after the first two layers, the chain of naive convolutions equals the
    /// generalized-BTD operator of Eq. 8–10 (and so does a custom σ).
    #[test]
    fn relu_chain_equals_generalized_btd_operator(
        (d4, d3, k, r, d4s, d3s, h, w, st, seed) in chain_case()
    ) {
        let b = random_kernel_btd(d4, d3, k, r, (d4s, d3s), seed);
        let chain = LayerChain::from_btd(&b).unwrap();
        let u = randn::<f64>(&[d3, h, w], &mut rng(seed ^ 3)).into_dimensionality().unwrap();
        let pad = ((k - 1) / 2, (k - 1) / 2);
        let geom = ConvGeometry { stride: st, padding: pad };
        let chained = run_chain(&chain, &u.view(), st, pad, relu);
        let op = GeneralizedBtd::from_btd(&b, Sigma::relu()).unwrap();
        let v = op.apply_with(&u.view(), geom).unwrap();
        prop_assert!(max_rel_diff(&v.view().into_dyn(), &chained.view().into_dyn()) < 1e-12);
        // A custom σ (softplus-like, σ(0) ≠ 0 so padding after σ matters) through a closure.
        let soft = |x: f64| (1.0 + x.exp()).ln();
        let chained = {
            let t1 = conv2d(&u.view(), &chain.reduce.view(), 1, 1, (0, 0)).mapv(soft);
            let t2 = conv2d(&t1.view(), &chain.grouped.view(), chain.groups, st, pad).mapv(soft);
            conv2d(&t2.view(), &chain.expand.view(), 1, 1, (0, 0))
        };
        let v = op.with_sigma(Sigma::custom(soft)).apply_with(&u.view(), geom).unwrap();
        prop_assert!(max_rel_diff(&v.view().into_dyn(), &chained.view().into_dyn()) < 1e-12);
    }

    /// The conversions are inverse to each other: BTD → chain → BTD, chain → generalized →
    /// chain, and the index map of `gbtd::layers` (`reduce[t·d3* + p, m] = A3_t(m, p)`,
    /// `grouped[t·d4* + q, p, a, b] = G_t(q, p, a, b)`, `expand[c, t·d4* + q] = A4_t(c, q)`) holds
    /// entry by entry.
    #[test]
    fn chain_conversions_round_trip((d4, d3, k, r, d4s, d3s, _h, _w, _st, seed) in chain_case()) {
        let b = random_kernel_btd(d4, d3, k, r, (d4s, d3s), seed);
        let chain = LayerChain::from_btd(&b).unwrap();
        for t in 0..r {
            for p in 0..d3s {
                for m in 0..d3 {
                    prop_assert_eq!(chain.reduce[[t * d3s + p, m, 0, 0]], b.terms[t].factors[1][[m, p]]);
                }
            }
            for q in 0..d4s {
                for c in 0..d4 {
                    prop_assert_eq!(chain.expand[[c, t * d4s + q, 0, 0]], b.terms[t].factors[0][[c, q]]);
                }
                for p in 0..d3s {
                    for a in 0..k {
                        for bb in 0..k {
                            let core = &b.terms[t].core;
                            prop_assert_eq!(chain.grouped[[t * d4s + q, p, a, bb]], core[[q, p, a, bb]]);
                        }
                    }
                }
            }
        }
        let back = chain.to_btd().unwrap();
        prop_assert_eq!(&back.terms, &b.terms);
        prop_assert_eq!(&back.shape, &b.shape);
        let g = chain.to_generalized(Sigma::relu()).unwrap();
        prop_assert_eq!(&LayerChain::from_generalized(&g).unwrap(), &chain);
        prop_assert_eq!(chain.n_params(), b.n_params());
        prop_assert_eq!(g.n_params().unwrap(), b.n_params());
    }
}

/// One documented conversion: `X_paper(a, b, m, c) = W_torch(c, m, a, b)`, and back.
#[test]
fn paper_and_torch_layouts_convert_entry_by_entry() {
    let w = randn::<f64>(&[5, 4, 3, 2], &mut rng(1));
    let x = paper_from_torch(&w.view()).unwrap();
    assert_eq!(x.shape(), &[3, 2, 4, 5]);
    for ((c, m, a, b), v) in w.view().into_dimensionality::<Ix4>().unwrap().indexed_iter() {
        assert_eq!(x[[a, b, m, c]], *v);
    }
    assert_eq!(torch_from_paper(&x.view()).unwrap(), w);
    let three = ArrayD::<f64>::zeros(IxDyn(&[2, 2, 2]));
    assert!(matches!(
        paper_from_torch(&three.view()),
        Err(GbtdError::Shape(_))
    ));
    assert!(matches!(
        torch_from_paper(&three.view()),
        Err(GbtdError::Shape(_))
    ));
}

/// Tucker-2 (R = 1): HOOI factors → chain → naive convolutions equals the dense convolution with
/// the Tucker reconstruction; and the chain converts back to an equivalent Tucker-2.
#[test]
fn tucker2_chain_equals_dense_convolution_and_round_trips() {
    let x = randn::<f64>(&[6, 5, 3, 3], &mut rng(8));
    let t = tucker(
        &x.view(),
        &TuckerOptions {
            rank: vec![3, 2],
            modes: Some(vec![0, 1]),
            iter: IterOptions {
                n_iter_max: 5,
                tol: 0.0,
                seed: 0,
            },
            init: Init::Svd,
            progress: Default::default(),
        },
    )
    .unwrap();
    let chain = LayerChain::from_tucker(&t).unwrap();
    // The same conversion through the decomposition trait.
    let dynamic: &dyn Decomposition<f64> = &t;
    assert_eq!(dynamic.to_layers().unwrap(), chain);
    assert_eq!(dynamic.n_params(), chain.n_params());
    assert_eq!(chain.groups, 1);
    assert_eq!(chain.reduce.dim(), (2, 5, 1, 1));
    assert_eq!(chain.grouped.dim(), (3, 2, 3, 3));
    assert_eq!(chain.expand.dim(), (6, 3, 1, 1));
    let kernel = t.reconstruct().unwrap().into_dimensionality::<Ix4>().unwrap();
    let u = randn::<f64>(&[5, 6, 5], &mut rng(9))
        .into_dimensionality()
        .unwrap();
    let dense = conv2d(&u.view(), &kernel.view(), 1, 1, (1, 1));
    let chained = run_chain(&chain, &u.view(), 1, (1, 1), ident);
    assert!(max_rel_diff(&chained.view().into_dyn(), &dense.view().into_dyn()) < 1e-12);

    // Back to Tucker: orthonormal factors, the same kernel.
    let mut scaled = chain.clone();
    scaled.expand.mapv_inplace(|v| 3.0 * v);
    let t2 = scaled.to_tucker().unwrap();
    for f in &t2.factors {
        let g = f.t().dot(f);
        for ((i, j), v) in g.indexed_iter() {
            assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
        }
    }
    let want = kernel.mapv(|v| 3.0 * v).into_dyn();
    assert!(max_rel_diff(&t2.reconstruct().unwrap().view(), &want.view()) < 1e-12);

    // A full Tucker (spatial modes factorized too) folds its spatial factors into the core.
    let full = gbtd::tucker::hosvd(&x.view(), &TuckerOptions::new(vec![3, 2, 2, 3])).unwrap();
    let chain = LayerChain::from_tucker(&full).unwrap();
    assert!(
        max_rel_diff(
            &chain.kernel().unwrap().view().into_dyn(),
            &full.reconstruct().unwrap().view()
        ) < 1e-12
    );

    let grouped = LayerChain::from_btd(&random_kernel_btd(4, 4, 3, 2, (1, 1), 0)).unwrap();
    assert!(matches!(grouped.to_tucker(), Err(GbtdError::Rank(_))));
}

/// CP → chain (1×1, depthwise k×k, 1×1) → naive convolutions equals the dense convolution with
/// the CP reconstruction, and the chain converts back to the same CP tensor.
#[test]
fn cp_chain_equals_dense_convolution_and_round_trips() {
    let x = randn::<f64>(&[5, 4, 3, 3], &mut rng(12));
    let cp = parafac(
        &x.view(),
        &CpOptions {
            rank: 4,
            iter: IterOptions {
                n_iter_max: 20,
                tol: 0.0,
                seed: 0,
            },
            init: Init::Svd,
            progress: Default::default(),
        },
    )
    .unwrap();
    let chain = LayerChain::from_cp(&cp).unwrap();
    assert_eq!(chain.groups, 4);
    assert_eq!(chain.grouped.dim(), (4, 1, 3, 3));
    let kernel = cp.reconstruct().unwrap().into_dimensionality::<Ix4>().unwrap();
    let u = randn::<f64>(&[4, 5, 6], &mut rng(13))
        .into_dimensionality()
        .unwrap();
    let dense = conv2d(&u.view(), &kernel.view(), 1, 1, (1, 1));
    let chained = run_chain(&chain, &u.view(), 1, (1, 1), ident);
    assert!(max_rel_diff(&chained.view().into_dyn(), &dense.view().into_dyn()) < 1e-12);

    let back = chain.to_cp(1e-10).unwrap();
    assert_eq!(back.rank(), 4);
    assert!(max_rel_diff(&back.reconstruct().unwrap().view(), &kernel.view().into_dyn()) < 1e-12);
    for f in &back.factors {
        for col in f.columns() {
            assert!((col.dot(&col) - 1.0).abs() < 1e-12);
        }
    }
    // A 1×1 kernel (1×1 depthwise cores) converts both ways too.
    let x1 = randn::<f64>(&[3, 4, 1, 1], &mut rng(14));
    let cp1 = parafac(
        &x1.view(),
        &CpOptions {
            rank: 2,
            iter: IterOptions {
                n_iter_max: 10,
                tol: 0.0,
                seed: 0,
            },
            init: Init::Svd,
            progress: Default::default(),
        },
    )
    .unwrap();
    let back1 = LayerChain::from_cp(&cp1).unwrap().to_cp(1e-10).unwrap();
    assert!(
        max_rel_diff(
            &back1.reconstruct().unwrap().view(),
            &cp1.reconstruct().unwrap().view()
        ) < 1e-12
    );
    // A chain whose depthwise cores are not rank one is not a CP.
    let not_cp = LayerChain::from_btd(&random_kernel_btd(4, 4, 3, 2, (1, 1), 5)).unwrap();
    assert!(matches!(not_cp.to_cp(1e-10), Err(GbtdError::Rank(_))));
    let wide = LayerChain::from_btd(&random_kernel_btd(4, 4, 3, 2, (2, 1), 5)).unwrap();
    assert!(matches!(wide.to_cp(1e-10), Err(GbtdError::Rank(_))));
}

/// Collective → one chain per kernel: the chains share `reduce` and `grouped`, each one's dense
/// kernel is that kernel's collective approximation, and the chains convert back to the
/// collective BTD.
#[test]
fn collective_chains_share_layers_and_round_trip() {
    let mut g = rng(21);
    let kernels = [
        randn::<f64>(&[4, 5, 3, 3], &mut g),
        randn::<f64>(&[6, 5, 3, 3], &mut g),
    ];
    let views: Vec<ArrayViewD<'_, f64>> = kernels.iter().map(|k| k.view()).collect();
    let c = collective_btd(
        &views,
        &CollectiveOptions::new(2, ChannelRanks::new(2, 2)).with_iter(IterOptions {
            n_iter_max: 4,
            tol: 0.0,
            seed: 0,
        }),
    )
    .unwrap();
    let chains = LayerChain::from_collective(&c).unwrap();
    assert_eq!(chains.len(), 2);
    assert_eq!(chains[0].reduce, chains[1].reduce);
    assert_eq!(chains[0].grouped, chains[1].grouped);
    assert_eq!(chains[0].expand.dim(), (4, 4, 1, 1));
    assert_eq!(chains[1].expand.dim(), (6, 4, 1, 1));
    let u = randn::<f64>(&[5, 4, 4], &mut g).into_dimensionality().unwrap();
    for (l, chain) in chains.iter().enumerate() {
        let kernel = c
            .reconstruct_kernel(l)
            .unwrap()
            .into_dimensionality::<Ix4>()
            .unwrap();
        let dense = conv2d(&u.view(), &kernel.view(), 1, 1, (1, 1));
        let chained = run_chain(chain, &u.view(), 1, (1, 1), ident);
        assert!(max_rel_diff(&chained.view().into_dyn(), &dense.view().into_dyn()) < 1e-12);
    }
    let (b, outs) = LayerChain::collective_btd_from_chains(&chains).unwrap();
    assert_eq!(outs, vec![4, 6]);
    assert_eq!(b.terms, c.btd.terms);
    let mut other = chains.clone();
    other[1].grouped[[0, 0, 0, 0]] += 1.0;
    assert!(matches!(
        LayerChain::collective_btd_from_chains(&other),
        Err(GbtdError::Shape(_))
    ));
    assert!(matches!(
        LayerChain::<f64>::collective_btd_from_chains(&[]),
        Err(GbtdError::Empty(_))
    ));
}

#[test]
fn layer_conversions_reject_bad_shapes_with_typed_errors() {
    let good = LayerChain::from_btd(&random_kernel_btd(4, 3, 3, 2, (2, 1), 1)).unwrap();
    let mut c = good.clone();
    c.groups = 0;
    assert!(matches!(c.dims(), Err(GbtdError::Rank(_))));
    let mut c = good.clone();
    c.groups = 3;
    assert!(matches!(c.dims(), Err(GbtdError::Shape(_))));
    let mut c = good.clone();
    c.expand = Array4::zeros((4, 3, 1, 1));
    assert!(matches!(c.to_btd(), Err(GbtdError::Shape(_))));
    let mut c = good.clone();
    c.reduce = Array4::zeros((2, 3, 3, 3));
    assert!(matches!(c.kernel(), Err(GbtdError::Shape(_))));
    let mut c = good.clone();
    c.grouped[[0, 0, 0, 0]] = f64::NAN;
    assert!(matches!(
        c.to_generalized(Sigma::identity()),
        Err(GbtdError::NonFinite(_))
    ));
    assert!(matches!(
        LayerChain::new(
            good.reduce.clone(),
            good.grouped.clone(),
            Array4::zeros((4, 5, 1, 1)),
            2
        ),
        Err(GbtdError::Shape(_))
    ));

    // A BTD that does not factorize both channel modes has no chain.
    let x = randn::<f64>(&[4, 3, 3, 3], &mut rng(2));
    let b = btd(
        &x.view(),
        &BtdOptions::new(1, vec![2])
            .with_modes(vec![0])
            .with_iter(IterOptions {
                n_iter_max: 1,
                tol: 0.0,
                seed: 0,
            }),
    )
    .unwrap();
    assert!(matches!(LayerChain::from_btd(&b), Err(GbtdError::Shape(_))));
    let three = btd(
        &randn::<f64>(&[4, 3, 3], &mut rng(2)).view(),
        &BtdOptions::new(1, vec![2, 2])
            .with_modes(vec![0, 1])
            .with_iter(IterOptions {
                n_iter_max: 1,
                tol: 0.0,
                seed: 0,
            }),
    )
    .unwrap();
    assert!(matches!(LayerChain::from_btd(&three), Err(GbtdError::Shape(_))));

    // The operator checks its input.
    let op = good.to_generalized(Sigma::relu()).unwrap();
    let u = randn::<f64>(&[4, 5, 5], &mut rng(3))
        .into_dimensionality::<ndarray::Ix3>()
        .unwrap();
    assert!(matches!(op.apply(&u.view()), Err(GbtdError::Shape(_))));
    let mut u = randn::<f64>(&[3, 5, 5], &mut rng(3))
        .into_dimensionality::<ndarray::Ix3>()
        .unwrap();
    assert_eq!(op.apply(&u.view()).unwrap().dim(), (4, 5, 5));
    assert!(matches!(
        op.apply_with(
            &u.view(),
            ConvGeometry {
                stride: 0,
                padding: (1, 1)
            }
        ),
        Err(GbtdError::Options(_))
    ));
    let tiny = Array3::<f64>::zeros((3, 1, 1));
    assert!(matches!(
        op.apply_with(
            &tiny.view(),
            ConvGeometry {
                stride: 1,
                padding: (0, 0)
            }
        ),
        Err(GbtdError::Shape(_))
    ));
    u[[0, 0, 0]] = f64::INFINITY;
    assert!(matches!(op.apply(&u.view()), Err(GbtdError::NonFinite(_))));
    assert!(matches!(ConvGeometry::same(2, 3), Err(GbtdError::Shape(_))));
    let mut bad = op.clone();
    bad.a3.pop();
    assert!(matches!(bad.kernel(), Err(GbtdError::Shape(_))));
    let empty = GeneralizedBtd::<f64> {
        cores: vec![],
        a3: vec![],
        a4: vec![],
        sigma: Sigma::identity(),
    };
    assert!(matches!(empty.dims(), Err(GbtdError::Rank(_))));
}

/// The batch evaluation is the per-image evaluation.
#[test]
fn generalized_operator_on_a_batch() {
    let op = GeneralizedBtd::from_btd(&random_kernel_btd(4, 3, 3, 2, (2, 2), 4), Sigma::relu()).unwrap();
    let batch = randn::<f64>(&[2, 3, 5, 4], &mut rng(5))
        .into_dimensionality::<Ix4>()
        .unwrap();
    let geom = ConvGeometry::same(3, 3).unwrap();
    let out = op.apply_batch(&batch.view(), geom).unwrap();
    assert_eq!(out.dim(), (2, 4, 5, 4));
    for n in 0..2 {
        let one = op
            .apply_with(&batch.index_axis(ndarray::Axis(0), n), geom)
            .unwrap();
        assert_eq!(out.index_axis(ndarray::Axis(0), n), one);
    }
}
