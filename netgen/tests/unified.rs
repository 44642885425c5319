//! The unified framework (paper §3.2–4.1) in network form, each property checked against an
//! independent source built in the test (f64, CPU, small sizes):
//! (a) a ResNeXt residual function = an explicit sum of R separate Tucker branches;
//! (b) σ = identity, no BN: 1×1 → grouped 3×3 → 1×1 = one dense conv with gbtd's BTD kernel;
//! (c) R = 1 is the plain bottleneck = Tucker-2 (gbtd's partial Tucker on the channel modes);
//! (d) the CRU units of a share group, linear, = the per-unit reconstructions of gbtd's collective
//!     factorization (Eq. 12);
//! (e) BN folded into the adjacent conv gives the same eval-mode output;
//! (f) the gradient of a shared weight = the sum of the per-use gradients of unshared copies in a
//!     reference network written in the test;
//! (g) the released CRU unit structure (pre-activation, the extra 1×1, the first unit's 1×1 used
//!     twice, the stride in the shared grouped 3×3) = a reference written from its description.
use std::collections::HashMap;

use gbtd::btd::{BtdOptions, btd};
use gbtd::collective::{ChannelRanks, CollectiveOptions, collective_btd};
use gbtd::layers::LayerChain;
use gbtd::options::IterOptions;
use gbtd::tucker::{TuckerOptions, tucker};
use ndarray::{Array4, ArrayD, IxDyn};
use netgen::arch::{NetSpec, StageSpec, Stem, UnitSpec};
use netgen::nn::{BatchNorm2d, Conv2d, Mode, Network, Norm, Unit, UnitDims};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

/// An empty f64 CPU store.
fn f64_store() -> VarStore {
    let mut vs = VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    vs
}

/// Gives every BN of the store non-trivial γ, β, running mean and variance.
fn randomize_bn(vs: &VarStore) {
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            let mut t = t.shallow_clone();
            let n = t.size();
            let fresh = if name.ends_with("running_var") || (name.contains("bn") && name.ends_with("weight"))
            {
                Tensor::rand(&n, F64) + 0.5
            } else if name.ends_with("running_mean") || (name.contains("bn") && name.ends_with("bias")) {
                Tensor::randn(&n, F64) * 0.3
            } else {
                continue;
            };
            t.copy_(&fresh);
        }
    });
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
    let scale = want.abs().max().double_value(&[]).max(1.0);
    let d = max_abs(got, want);
    assert!(
        d <= tol * scale,
        "{what}: max |got - want| = {d:e} (scale {scale})"
    );
}

/// Reference BatchNorm on channels `[c0, c0 + c)` of the BN, written out: batch statistics (biased
/// variance over N, H, W) in training, running statistics in evaluation.
fn bn_ref(x: &Tensor, bn: &BatchNorm2d, c0: i64, c: i64, train: bool) -> Tensor {
    let v = |t: &Tensor| t.narrow(0, c0, c).view([1, c, 1, 1]);
    let (mean, var) = if train {
        let m = x.mean_dim([0i64, 2, 3].as_slice(), true, Kind::Double);
        let var = (x - &m)
            .square()
            .mean_dim([0i64, 2, 3].as_slice(), true, Kind::Double);
        (m, var)
    } else {
        (v(&bn.running_mean), v(&bn.running_var))
    };
    (x - mean) / (var + bn.eps).sqrt() * v(&bn.weight) + v(&bn.bias)
}

/// The unit's conv module `name` (e.g. `conv1`, `downsample.0`).
fn cv<'a>(u: &'a Unit, name: &str) -> &'a Conv2d {
    u.conv(name).unwrap_or_else(|| panic!("unit has no conv {name}"))
}

/// The unit's BN slot `name` (e.g. `bn1`, `downsample.1`).
fn nm<'a>(u: &'a Unit, name: &str) -> &'a Norm {
    u.norm(name).unwrap_or_else(|| panic!("unit has no BN {name}"))
}

fn conv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: i64, groups: i64) -> Tensor {
    let pad = w.size()[2] / 2;
    x.conv2d(w, bias, [stride, stride], [pad, pad], [1, 1], groups)
}

// (a) -------------------------------------------------------------------------------------------

#[test]
fn a_resnext_residual_is_a_sum_of_r_tucker_branches() {
    tch::manual_seed(11);
    let vs = f64_store();
    let d = UnitDims {
        in_ch: 8,
        width: 12,
        mid: 12,
        groups: 4,
        stride: 2,
    };
    let unit = Unit::post_act(&vs.root(), &d, Mode::Standard).unwrap();
    randomize_bn(&vs);
    let bn = |n: &Norm| n.0.as_ref().expect("standard mode has BN").shallow();
    let (bn1, bn2, bn3) = (bn(nm(&unit, "bn1")), bn(nm(&unit, "bn2")), bn(nm(&unit, "bn3")));
    let x = Tensor::randn([2, 8, 9, 9], F64);
    let k = (d.mid / d.groups) as i64;
    // Evaluation first, then training (which updates the running statistics as a side effect).
    for train in [false, true] {
        let mut sum = Tensor::zeros([2, 12, 5, 5], F64);
        for r in 0..d.groups as i64 {
            // Branch r: A3_r (rows of conv1) → BN-σ → G_r (group r of conv2, as a dense conv) → BN-σ
            // → A4_r (columns of conv3).
            let t1 = conv(&x, &cv(&unit, "conv1").weight.narrow(0, r * k, k), None, 1, 1);
            let t1 = bn_ref(&t1, &bn1, r * k, k, train).relu();
            let t2 = conv(&t1, &cv(&unit, "conv2").weight.narrow(0, r * k, k), None, 2, 1);
            let t2 = bn_ref(&t2, &bn2, r * k, k, train).relu();
            sum += conv(&t2, &cv(&unit, "conv3").weight.narrow(1, r * k, k), None, 1, 1);
        }
        let want = bn_ref(&sum, &bn3, 0, 12, train);
        let got = unit.residual_t(&x, train);
        assert_close(
            &got,
            &want,
            1e-12,
            &format!("residual = Σ_r Tucker branch (train = {train})"),
        );
        // And the unit adds the BN'd projection shortcut, then σ.
        let (ds, ds_bn) = (cv(&unit, "downsample.0"), nm(&unit, "downsample.1"));
        let sc = bn_ref(&conv(&x, &ds.weight, None, 2, 1), &bn(ds_bn), 0, 12, train);
        assert_close(
            &unit.forward_t(&x, train),
            &(want + sc).relu(),
            1e-12,
            "unit = σ(F + S)",
        );
    }
}

/// Shallow handles to a BN's tensors (the test reads them, the unit keeps using them).
trait Shallow {
    fn shallow(&self) -> BatchNorm2d;
}

impl Shallow for BatchNorm2d {
    fn shallow(&self) -> BatchNorm2d {
        BatchNorm2d {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
            running_mean: self.running_mean.shallow_clone(),
            running_var: self.running_var.shallow_clone(),
            eps: self.eps,
            momentum: self.momentum,
        }
    }
}

// (b), (c), (d): linear mode against gbtd -------------------------------------------------------

/// A tch tensor as an ndarray (f64, row-major logical order).
fn to_nd(t: &Tensor) -> ArrayD<f64> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let v = Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view([-1])).expect("f64 data");
    ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape")
}

/// An ndarray as a tch f64 tensor.
fn to_tch(a: &ArrayD<f64>) -> Tensor {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let v: Vec<f64> = a.iter().copied().collect();
    Tensor::from_slice(&v).view(shape.as_slice())
}

/// Overwrites a network weight with an ndarray of the same shape.
fn set(w: &Tensor, a: &Array4<f64>) {
    let src = to_tch(&a.clone().into_dyn());
    assert_eq!(w.size(), src.size(), "weight shape");
    tch::no_grad(|| w.shallow_clone().copy_(&src));
}

fn iters(n: usize) -> IterOptions {
    IterOptions {
        n_iter_max: n,
        tol: 0.0,
        seed: 3,
    }
}

#[test]
fn b_linear_chain_is_the_dense_conv_of_the_btd_reconstruction() {
    tch::manual_seed(21);
    // A BTD of a random dense 3×3 kernel (d4 = 12, d3 = 8) with R = 4 terms of rank d* = 3.
    let kernel = to_nd(&Tensor::randn([12, 8, 3, 3], F64));
    let opts = BtdOptions::new(4, vec![3, 3])
        .with_modes(vec![0, 1])
        .with_iter(iters(15));
    let dec = btd(&kernel.view(), &opts).expect("btd");
    let chain = LayerChain::from_btd(&dec).expect("layers");
    assert_eq!(chain.groups, 4);
    let dense = to_tch(&dec.reconstruct().expect("reconstruct"));
    let x = Tensor::randn([2, 8, 7, 7], F64);
    for stride in [1usize, 2] {
        let d = UnitDims {
            in_ch: 8,
            width: 12,
            mid: 12,
            groups: 4,
            stride,
        };
        let want = conv(&x, &dense, None, stride as i64, 1);
        // Post- and pre-activation units, linear mode: their residual functions are the chain.
        let vs = f64_store();
        let post = Unit::post_act(&(vs.root() / "post"), &d, Mode::Linear).unwrap();
        let pre = Unit::pre_act(&(vs.root() / "pre"), &d, false, Mode::Linear).unwrap();
        assert!(
            vs.variables().keys().all(|k| !k.contains("bn")),
            "linear mode creates no BN"
        );
        for u in [&post, &pre] {
            let (c1, c2, c3) = (cv(u, "conv1"), cv(u, "conv2"), cv(u, "conv3"));
            set(&c1.weight, &chain.reduce);
            set(&c2.weight, &chain.grouped);
            set(&c3.weight, &chain.expand);
        }
        let what = format!("chain = dense conv with the BTD kernel (stride {stride})");
        assert_close(&tch::no_grad(|| post.residual_t(&x, false)), &want, 1e-12, &what);
        assert_close(&tch::no_grad(|| pre.residual_t(&x, false)), &want, 1e-12, &what);
    }

    // Conversely, random unit weights ARE a BTD: the kernel of their gbtd BTD (read through
    // gbtd::layers) gives the unit's output.
    let vs = f64_store();
    let d = UnitDims {
        in_ch: 8,
        width: 12,
        mid: 12,
        groups: 4,
        stride: 1,
    };
    let unit = Unit::post_act(&vs.root(), &d, Mode::Linear).unwrap();
    let w = |c: &str| to_nd(&cv(&unit, c).weight).into_dimensionality().expect("4-way");
    let chain = LayerChain::new(w("conv1"), w("conv2"), w("conv3"), 4).expect("chain");
    let dense = to_tch(
        &chain
            .to_btd()
            .expect("to_btd")
            .reconstruct()
            .expect("reconstruct"),
    );
    assert_close(
        &tch::no_grad(|| unit.residual_t(&x, false)),
        &conv(&x, &dense, None, 1, 1),
        1e-12,
        "unit weights read as a BTD",
    );
}

#[test]
fn c_r1_bottleneck_is_tucker2() {
    tch::manual_seed(22);
    let kernel = to_nd(&Tensor::randn([12, 8, 3, 3], F64));
    let opts = TuckerOptions::new(vec![5, 5])
        .with_modes(vec![0, 1])
        .with_iter(iters(10));
    let tk = tucker(&kernel.view(), &opts).expect("partial tucker");
    let chain = LayerChain::from_tucker(&tk).expect("layers");
    assert_eq!(chain.groups, 1);
    // A ResNet bottleneck (R = 1: a dense 3×3 between the 1×1s), linear mode.
    let vs = f64_store();
    let d = UnitDims {
        in_ch: 8,
        width: 12,
        mid: 5,
        groups: 1,
        stride: 2,
    };
    let unit = Unit::post_act(&vs.root(), &d, Mode::Linear).unwrap();
    set(&cv(&unit, "conv1").weight, &chain.reduce);
    set(&cv(&unit, "conv2").weight, &chain.grouped);
    set(&cv(&unit, "conv3").weight, &chain.expand);
    let x = Tensor::randn([2, 8, 7, 7], F64);
    let dense = to_tch(&tk.reconstruct().expect("reconstruct"));
    assert_close(
        &tch::no_grad(|| unit.residual_t(&x, false)),
        &conv(&x, &dense, None, 2, 1),
        1e-12,
        "R = 1 bottleneck = dense conv with the Tucker-2 kernel",
    );
}

#[test]
fn d_cru_share_group_is_the_collective_factorization() {
    tch::manual_seed(23);
    // L = 3 kernels (8 → 8, 3×3), collectively factorized with R = 3 terms of rank d* = 2 (Eq. 12).
    let kernels: Vec<ArrayD<f64>> = (0..3).map(|_| to_nd(&Tensor::randn([8, 8, 3, 3], F64))).collect();
    let views: Vec<_> = kernels.iter().map(|k| k.view()).collect();
    let coll = collective_btd(
        &views,
        &CollectiveOptions::new(3, ChannelRanks::new(2, 2)).with_iter(iters(15)),
    )
    .expect("collective");
    let chains = LayerChain::from_collective(&coll).expect("layers");
    assert!(
        chains
            .iter()
            .all(|c| c.reduce == chains[0].reduce && c.grouped == chains[0].grouped)
    );

    // A CRU stage of 3 units sharing one set of factors (Fig. 3 left: no extra 1×1), linear mode.
    let vs = f64_store();
    let net = Network::with_mode(&vs.root(), &cru_spec(3, 3, false), Mode::Linear).unwrap();
    let stage = &net.stages[0];
    let vars = vs.variables();
    assert!(
        !vars.contains_key("layer1.share1.conv_reduce.weight"),
        "one share group"
    );
    set(&vars["layer1.share0.conv_reduce.weight"], &chains[0].reduce);
    set(&vars["layer1.share0.conv_grouped.weight"], &chains[0].grouped);
    for (u, chain) in stage.units.iter().zip(&chains) {
        set(&cv(u, "conv_expand").weight, &chain.expand);
    }
    let x = Tensor::randn([2, 8, 6, 6], F64);
    let mut y = x.shallow_clone();
    for (l, unit) in stage.units.iter().enumerate() {
        let dense = to_tch(&coll.reconstruct_kernel(l).expect("reconstruct"));
        let want = conv(&x, &dense, None, 1, 1);
        let what = format!("unit {l} = dense conv with the collective reconstruction X̂_{l}");
        assert_close(&tch::no_grad(|| unit.residual_t(&x, false)), &want, 1e-12, &what);
        y = &y + conv(&y, &dense, None, 1, 1);
    }
    // The whole stage: y_{l+1} = y_l + X̂_l ⋆ y_l.
    assert_close(
        &tch::no_grad(|| stage.forward_t(&x, false)),
        &y,
        1e-12,
        "stage of shared units",
    );
}

// (e) -------------------------------------------------------------------------------------------

/// Folds an eval-mode BN that follows a bias-free conv into it: `W' = W · s[out]`, `b' = β − μ·s`,
/// `s = γ / √(σ² + ε)`.
fn fold(w: &Tensor, bn: &BatchNorm2d) -> (Tensor, Tensor) {
    let s = &bn.weight / (&bn.running_var + bn.eps).sqrt();
    let w2 = w * s.view([-1, 1, 1, 1]);
    let b2 = &bn.bias - &bn.running_mean * &s;
    (w2, b2)
}

/// The BN module `name` of a store (`weight`, `bias`, `running_mean`, `running_var`), ε = 1e-5 as
/// in PyTorch.
fn bn_named(vars: &HashMap<String, Tensor>, name: &str) -> BatchNorm2d {
    let t = |k: &str| {
        vars.get(&format!("{name}.{k}"))
            .unwrap_or_else(|| panic!("no {name}.{k}"))
            .shallow_clone()
    };
    BatchNorm2d {
        weight: t("weight"),
        bias: t("bias"),
        running_mean: t("running_mean"),
        running_var: t("running_var"),
        eps: 1e-5,
        momentum: 0.1,
    }
}

#[test]
fn e_bn_folded_into_convs_gives_the_same_eval_output() {
    tch::manual_seed(12);
    let spec = NetSpec {
        name: "fold".into(),
        in_channels: 3,
        input_size: 32,
        classes: 5,
        preact: false,
        stem: Stem::Imagenet { width: 8 },
        stages: vec![
            StageSpec {
                depth: 2,
                width: 16,
                stride: 1,
                unit: UnitSpec::Aggregated { mid: 8, groups: 2 },
            },
            StageSpec {
                depth: 2,
                width: 24,
                stride: 2,
                unit: UnitSpec::Aggregated { mid: 12, groups: 4 },
            },
        ],
        separate_projection_bn: false,
    };
    let vs = f64_store();
    let net = Network::new(&vs.root(), &spec).unwrap();
    randomize_bn(&vs);
    let x = Tensor::randn([2, 3, 32, 32], F64);
    let want = tch::no_grad(|| net.forward_t(&x, false));

    // The same network evaluated from folded weights only (conv with bias, no BN anywhere), read
    // by their torchvision names; strides, groups and projections from the spec and torchvision's
    // rules (stride in the 3×3 of a stage's first unit; a projection where the width or size
    // changes).
    let vars = vs.variables();
    let fold_named = |c: &str, b: &str| fold(&vars[&format!("{c}.weight")], &bn_named(&vars, b));
    let got = tch::no_grad(|| {
        let (w, b) = fold_named("conv1", "bn1");
        let mut y = conv(&x, &w, Some(&b), 2, 1)
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut cin = 8;
        for (si, st) in spec.stages.iter().enumerate() {
            let groups = st.unit.groups() as i64;
            for i in 0..st.depth {
                let p = format!("layer{}.{i}", si + 1);
                let stride = if i == 0 { st.stride as i64 } else { 1 };
                let (w1, b1) = fold_named(&format!("{p}.conv1"), &format!("{p}.bn1"));
                let (w2, b2) = fold_named(&format!("{p}.conv2"), &format!("{p}.bn2"));
                let (w3, b3) = fold_named(&format!("{p}.conv3"), &format!("{p}.bn3"));
                let r = conv(&y, &w1, Some(&b1), 1, 1).relu();
                let r = conv(&r, &w2, Some(&b2), stride, groups).relu();
                let r = conv(&r, &w3, Some(&b3), 1, 1);
                let s = if stride != 1 || cin != st.width {
                    let (w, b) = fold_named(&format!("{p}.downsample.0"), &format!("{p}.downsample.1"));
                    conv(&y, &w, Some(&b), stride, 1)
                } else {
                    y.shallow_clone()
                };
                y = (r + s).relu();
                cin = st.width;
            }
        }
        y.mean_dim([2i64, 3].as_slice(), false, Kind::Double)
            .linear(&vars["fc.weight"], Some(&vars["fc.bias"]))
    });
    assert_close(&got, &want, 1e-11, "folded network vs network with BN (eval)");
    // The BN statistics were far from the identity, so folding changed the weights.
    let (w, _) = fold_named("conv1", "bn1");
    assert!(max_abs(&w, &net.stem_conv.weight) > 1e-2);
}

#[test]
fn e_bn_after_a_shared_conv_folds_into_per_unit_kernels() {
    // In a CRU the BN after the shared grouped 3×3 is per unit, so folding it yields a different
    // grouped kernel per unit (why BN cannot be shared, §4.2.1); each folded unit still matches.
    tch::manual_seed(13);
    let vs = f64_store();
    let spec = cru_spec(3, 3, false);
    let net = Network::new(&vs.root(), &spec).unwrap();
    randomize_bn(&vs);
    let x = Tensor::randn([2, 8, 6, 6], F64);
    let stage = &net.stages[0];
    let vars = vs.variables();
    let mut kernels = Vec::new();
    for (i, u) in stage.units.iter().enumerate() {
        let want = tch::no_grad(|| u.forward_t(&x, false));
        let got = tch::no_grad(|| {
            let bn = |n: &str| bn_named(&vars, &format!("layer1.{i}.{n}"));
            let (wg, bg) = fold(&vars["layer1.share0.conv_grouped.weight"], &bn("bn_expand"));
            let a = bn_ref(&x, &bn("bn_reduce"), 0, 8, false).relu();
            // cru_spec: R = 3 groups, stride 1, no extra 1×1.
            let y = conv(
                &conv(&a, &vars["layer1.share0.conv_reduce.weight"], None, 1, 1),
                &wg,
                Some(&bg),
                1,
                3,
            )
            .relu();
            kernels.push(wg);
            conv(&y, &vars[&format!("layer1.{i}.conv_expand.weight")], None, 1, 1) + &x
        });
        assert_close(
            &got,
            &want,
            1e-12,
            "CRU unit with BN folded into its copy of the shared 3×3",
        );
    }
    assert!(
        max_abs(&kernels[0], &kernels[1]) > 1e-3,
        "folded per-unit kernels differ"
    );
}

// (f) -------------------------------------------------------------------------------------------

/// A small pre-activation net with one CRU stage of `depth` units sharing in groups of `share`
/// (stride 1, in = width, so no projection), 8 channels, mid 6, R = 3.
fn cru_spec(depth: usize, share: usize, extra_conv: bool) -> NetSpec {
    NetSpec {
        name: "cru".into(),
        in_channels: 2,
        input_size: 6,
        classes: 4,
        preact: true,
        stem: Stem::Small { width: 8 },
        stages: vec![StageSpec {
            depth,
            width: 8,
            stride: 1,
            unit: UnitSpec::Cru {
                mid: 6,
                groups: 3,
                share,
                extra_conv,
            },
        }],
        separate_projection_bn: false,
    }
}

/// Two CRU stages (the second with a projection, a stride and a shorter last share group).
fn cru_net(share: [usize; 2]) -> NetSpec {
    let cru = |mid, groups, share| UnitSpec::Cru {
        mid,
        groups,
        share,
        extra_conv: true,
    };
    NetSpec {
        name: "cru2".into(),
        in_channels: 3,
        input_size: 8,
        classes: 5,
        preact: true,
        stem: Stem::Small { width: 8 },
        stages: vec![
            StageSpec {
                depth: 4,
                width: 8,
                stride: 1,
                unit: cru(6, 3, share[0]),
            },
            StageSpec {
                depth: 3,
                width: 12,
                stride: 2,
                unit: cru(12, 12, share[1]),
            },
        ],
        separate_projection_bn: false,
    }
}

/// The store's tensors as fresh leaves for a reference computation (trainable ones require
/// grad). With `per_use`, every use of a tensor that netgen shares (a share group's
/// `layer{s}.share{k}.…`, a first CRU unit's `conv_proj`) gets its own copy, i.e. the network
/// with an unshared copy per unit and per use, written out in the test.
struct RefWeights {
    vars: HashMap<String, Tensor>,
    per_use: bool,
    uses: std::cell::RefCell<Vec<(String, Tensor)>>,
}

impl RefWeights {
    fn new(vs: &VarStore, per_use: bool) -> Self {
        let vars = vs
            .variables()
            .into_iter()
            .map(|(n, t)| {
                let c = t.detach().copy().set_requires_grad(t.requires_grad());
                (n, c)
            })
            .collect();
        RefWeights {
            vars,
            per_use,
            uses: Default::default(),
        }
    }

    fn w(&self, name: &str) -> Tensor {
        let t = self.vars.get(name).unwrap_or_else(|| panic!("no tensor {name}"));
        if self.per_use && (name.contains(".share") || name.contains(".conv_proj.")) {
            let c = t.detach().copy().set_requires_grad(true);
            self.uses.borrow_mut().push((name.to_string(), c.shallow_clone()));
            c
        } else {
            t.shallow_clone()
        }
    }

    /// ReLU(BN_name(x)): batch statistics in training, running statistics in evaluation.
    fn bn_relu(&self, x: &Tensor, name: &str, train: bool) -> Tensor {
        let bn = bn_named(&self.vars, name);
        bn_ref(x, &bn, 0, x.size()[1], train).relu()
    }
}

/// One collective residual unit as released, written from its description: pre-activation; with
/// stage width bw and CRU width D,
/// (1) BN-ReLU, then the 1×1 bw → D shared by the share group;
/// (2) the 3×3 D → D with `groups` groups (D: depthwise), shared, no BN-ReLU before it; the stage
///     stride sits here in the first unit;
/// (3) [extra] BN-ReLU, 1×1 D → D, not shared;
/// (4) BN-ReLU, 1×1 D → bw, not shared;
/// (5) + the shortcut, no activation after.
/// A first unit whose width or size changes uses ONE 1×1 weight (in → bw) twice, each time after
/// its own BN-ReLU of the unit input: at stride 1 for the branch input, at the stage stride as the
/// projection shortcut.
#[allow(clippy::too_many_arguments)]
fn cru_unit_ref(
    w: &RefWeights,
    x: &Tensor,
    unit: &str,
    group: &str,
    stride: i64,
    groups: i64,
    projection: bool,
    extra: bool,
    train: bool,
) -> Tensor {
    let br = |t: &Tensor, bn: &str| w.bn_relu(t, &format!("{unit}.{bn}"), train);
    let weight = |n: &str| w.w(&format!("{n}.weight"));
    let (branch_in, shortcut) = if projection {
        let proj = format!("{unit}.conv_proj");
        (
            conv(&br(x, "bn_proj_branch"), &weight(&proj), None, 1, 1),
            conv(&br(x, "bn_proj_shortcut"), &weight(&proj), None, stride, 1),
        )
    } else {
        (x.shallow_clone(), x.shallow_clone())
    };
    let h = conv(
        &br(&branch_in, "bn_reduce"),
        &weight(&format!("{group}.conv_reduce")),
        None,
        1,
        1,
    );
    let h = conv(
        &h,
        &weight(&format!("{group}.conv_grouped")),
        None,
        stride,
        groups,
    );
    let h = if extra {
        conv(
            &br(&h, "bn_extra"),
            &weight(&format!("{unit}.conv_extra")),
            None,
            1,
            1,
        )
    } else {
        h
    };
    conv(
        &br(&h, "bn_expand"),
        &weight(&format!("{unit}.conv_expand")),
        None,
        1,
        1,
    ) + shortcut
}

/// A whole pre-activation network of CRU stages, written from the description: small stem (3×3/1
/// conv, BN-ReLU), the units (share group k of a stage = units k·L .. (k+1)·L), final BN-ReLU,
/// global average pool, fc.
fn cru_net_ref(w: &RefWeights, spec: &NetSpec, x: &Tensor, train: bool) -> Tensor {
    assert!(matches!(spec.stem, Stem::Small { .. }) && spec.preact);
    let mut y = w.bn_relu(&conv(x, &w.w("conv1.weight"), None, 1, 1), "bn1", train);
    let mut cin = spec.stem.width();
    for (si, st) in spec.stages.iter().enumerate() {
        let UnitSpec::Cru {
            groups,
            share,
            extra_conv,
            ..
        } = st.unit
        else {
            panic!("CRU stages only")
        };
        for i in 0..st.depth {
            let stride = if i == 0 { st.stride } else { 1 };
            let projection = i == 0 && (stride != 1 || cin != st.width);
            y = cru_unit_ref(
                w,
                &y,
                &format!("layer{}.{i}", si + 1),
                &format!("layer{}.share{}", si + 1, i / share),
                stride as i64,
                groups as i64,
                projection,
                extra_conv,
                train,
            );
            cin = st.width;
        }
    }
    let y = w.bn_relu(&y, "final_bn", train);
    y.mean_dim([2i64, 3].as_slice(), false, Kind::Double)
        .linear(&w.w("fc.weight"), Some(&w.w("fc.bias")))
}

#[test]
fn f_shared_gradient_is_the_sum_of_per_unit_gradients() {
    tch::manual_seed(14);
    let spec = cru_net([3, 2]);
    let vs = f64_store();
    let net = Network::new(&vs.root(), &spec).unwrap();
    randomize_bn(&vs);
    // The reference: the same function with a separate copy of every shared tensor per use.
    let reference = RefWeights::new(&vs, true);
    let x = Tensor::randn([3, 3, 8, 8], F64);
    let probe = Tensor::randn([3, 5], F64);
    let y_ref = cru_net_ref(&reference, &spec, &x, true);
    (&y_ref * &probe).sum(Kind::Double).backward();
    let y = net.forward_t(&x, true);
    (&y * &probe).sum(Kind::Double).backward();
    assert_close(&y, &y_ref, 1e-12, "netgen vs per-use-copy reference (train)");

    let sv = vs.variables();
    let mut sums: HashMap<String, Tensor> = HashMap::new();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for (name, copy) in reference.uses.borrow().iter() {
        let g = copy.grad();
        assert!(g.norm().double_value(&[]) > 1e-6, "{name}: zero gradient");
        let e = sums.entry(name.clone()).or_insert_with(|| g.zeros_like());
        *e += &g;
        *uses.entry(name.clone()).or_default() += 1;
    }
    // layer1: groups of 3 + 1 units; layer2: 2 + 1 units, and conv_proj used twice.
    let count = |n: &str| uses.get(n).copied().unwrap_or(0);
    assert_eq!(count("layer1.share0.conv_reduce.weight"), 3);
    assert_eq!(count("layer1.share1.conv_grouped.weight"), 1);
    assert_eq!(count("layer2.share0.conv_grouped.weight"), 2);
    assert_eq!(count("layer2.share1.conv_reduce.weight"), 1);
    assert_eq!(count("layer2.0.conv_proj.weight"), 2);
    assert_eq!(sums.len(), 2 * (2 + 2) + 1);
    for (name, total) in &sums {
        assert_close(
            &sv[name].grad(),
            total,
            1e-10,
            &format!("grad of shared {name} = Σ per-use grads"),
        );
    }
    // Not shared: the same gradient in both.
    for (name, t) in sv
        .iter()
        .filter(|(n, t)| t.requires_grad() && !sums.contains_key(*n))
    {
        assert_close(&t.grad(), &reference.vars[name].grad(), 1e-10, name);
    }
    // The group of 3 units differs from any single unit's contribution.
    let first = reference
        .uses
        .borrow()
        .iter()
        .find(|(n, _)| n == "layer1.share0.conv_reduce.weight")
        .map(|(_, t)| t.grad())
        .unwrap();
    assert!(max_abs(&first, &sv["layer1.share0.conv_reduce.weight"].grad()) > 1e-6);
}

// (g) -------------------------------------------------------------------------------------------

#[test]
fn g_released_cru_units_match_a_reference_written_from_their_description() {
    tch::manual_seed(15);
    let cru = |mid, groups, share, extra_conv| UnitSpec::Cru {
        mid,
        groups,
        share,
        extra_conv,
    };
    // Stage 1: depthwise CRU (groups = D) with a projection and stride 2, share groups 2 + 1;
    // stage 2: grouped (R = 3) CRU without the extra 1×1 and without a projection.
    let spec = NetSpec {
        name: "released-cru".into(),
        in_channels: 3,
        input_size: 10,
        classes: 4,
        preact: true,
        stem: Stem::Small { width: 8 },
        stages: vec![
            StageSpec {
                depth: 3,
                width: 12,
                stride: 2,
                unit: cru(6, 6, 2, true),
            },
            StageSpec {
                depth: 2,
                width: 12,
                stride: 1,
                unit: cru(9, 3, 2, false),
            },
        ],
        separate_projection_bn: true,
    };
    let vs = f64_store();
    let net = Network::new(&vs.root(), &spec).unwrap();
    randomize_bn(&vs);
    let x = Tensor::randn([2, 3, 10, 10], F64);
    // Evaluation first (training updates the running statistics).
    for train in [false, true] {
        let reference = RefWeights::new(&vs, false);
        let want = tch::no_grad(|| cru_net_ref(&reference, &spec, &x, train));
        let got = tch::no_grad(|| net.forward_t(&x, train));
        assert_close(
            &got,
            &want,
            1e-12,
            &format!("network vs reference (train = {train})"),
        );
    }
    // The check is sharp: the same reference without the extra 1×1 (the paper's Fig. 3 left)
    // does not agree with the first unit.
    let reference = RefWeights::new(&vs, false);
    let h = tch::no_grad(|| net.stem_t(&x, false));
    let y = tch::no_grad(|| net.stages[0].units[0].forward_t(&h, false));
    let unit_ref = |extra| {
        tch::no_grad(|| {
            cru_unit_ref(
                &reference,
                &h,
                "layer1.0",
                "layer1.share0",
                2,
                6,
                true,
                extra,
                false,
            )
        })
    };
    assert_close(&unit_ref(true), &y, 1e-12, "first unit vs reference");
    assert!(max_abs(&unit_ref(false), &y) > 1e-3);
}
