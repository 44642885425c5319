//! The unified framework (paper §3.2–4.1) in network form, each property checked against an
//! independent source built in the test (f64, CPU, small sizes):
//! (a) a ResNeXt residual function = an explicit sum of R separate Tucker branches;
//! (b) σ = identity, no BN: 1×1 → grouped 3×3 → 1×1 = one dense conv with gbtd's BTD kernel;
//! (c) R = 1 is the plain bottleneck = Tucker-2 (gbtd's partial Tucker on the channel modes);
//! (d) the CRU units of a share group, linear, = the per-unit reconstructions of gbtd's collective
//!     factorization (Eq. 12);
//! (e) BN folded into the adjacent conv gives the same eval-mode output;
//! (f) the gradient of a shared weight = the sum of the per-unit gradients of unshared copies.
use std::collections::HashMap;

use gbtd::btd::{BtdOptions, btd};
use gbtd::collective::{CollectiveOptions, collective_btd};
use gbtd::layers::LayerChain;
use gbtd::options::IterOptions;
use gbtd::tucker::{TuckerOptions, tucker};
use ndarray::{Array4, ArrayD, IxDyn};
use netgen::arch::{NetSpec, StageSpec, Stem, UnitSpec};
use netgen::nn::{BatchNorm2d, Mode, Network, PostActUnit, PreActUnit, Unit, UnitDims};
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
    let unit = PostActUnit::new(&vs.root(), &d, Mode::Standard).unwrap();
    randomize_bn(&vs);
    let bn = |n: &netgen::nn::Norm| n.0.as_ref().expect("standard mode has BN").shallow();
    let (bn1, bn2, bn3) = (bn(&unit.bn1), bn(&unit.bn2), bn(&unit.bn3));
    let x = Tensor::randn([2, 8, 9, 9], F64);
    let k = (d.mid / d.groups) as i64;
    // Evaluation first, then training (which updates the running statistics as a side effect).
    for train in [false, true] {
        let mut sum = Tensor::zeros([2, 12, 5, 5], F64);
        for r in 0..d.groups as i64 {
            // Branch r: A3_r (rows of conv1) → BN-σ → G_r (group r of conv2, as a dense conv) → BN-σ
            // → A4_r (columns of conv3).
            let t1 = conv(&x, &unit.conv1.weight.narrow(0, r * k, k), None, 1, 1);
            let t1 = bn_ref(&t1, &bn1, r * k, k, train).relu();
            let t2 = conv(&t1, &unit.conv2.weight.narrow(0, r * k, k), None, 2, 1);
            let t2 = bn_ref(&t2, &bn2, r * k, k, train).relu();
            sum += conv(&t2, &unit.conv3.weight.narrow(1, r * k, k), None, 1, 1);
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
        let (ds, ds_bn) = unit.downsample.as_ref().expect("stride 2 has a projection");
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
        let post = PostActUnit::new(&(vs.root() / "post"), &d, Mode::Linear).unwrap();
        let pre = PreActUnit::new(&(vs.root() / "pre"), &d, false, Mode::Linear).unwrap();
        assert!(
            vs.variables().keys().all(|k| !k.contains("bn")),
            "linear mode creates no BN"
        );
        for (c1, c2, c3) in [
            (&post.conv1, &post.conv2, &post.conv3),
            (&pre.conv1, &pre.conv2, &pre.conv3),
        ] {
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
    let unit = PostActUnit::new(&vs.root(), &d, Mode::Linear).unwrap();
    let w = |c: &netgen::nn::Conv2d| to_nd(&c.weight).into_dimensionality().expect("4-way");
    let chain = LayerChain::new(w(&unit.conv1), w(&unit.conv2), w(&unit.conv3), 4).expect("chain");
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
    let unit = PostActUnit::new(&vs.root(), &d, Mode::Linear).unwrap();
    set(&unit.conv1.weight, &chain.reduce);
    set(&unit.conv2.weight, &chain.grouped);
    set(&unit.conv3.weight, &chain.expand);
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
        &CollectiveOptions::new(3, vec![2, 2]).with_iter(iters(15)),
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
    assert_eq!(stage.shared.len(), 1);
    set(&stage.shared[0].reduce, &chains[0].reduce);
    set(&stage.shared[0].grouped, &chains[0].grouped);
    for (unit, chain) in stage.units.iter().zip(&chains) {
        let Unit::Cru(u) = unit else { panic!("CRU stage") };
        set(&u.conv_expand.weight, &chain.expand);
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

fn bn_of(n: &netgen::nn::Norm) -> &BatchNorm2d {
    n.0.as_ref().expect("standard mode has BN")
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

    // The same network evaluated from folded weights only (conv with bias, no BN anywhere).
    let got = tch::no_grad(|| {
        let (w, b) = fold(&net.stem_conv.weight, bn_of(&net.stem_bn));
        let mut y = conv(&x, &w, Some(&b), 2, 1)
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &net.stages {
            for unit in &stage.units {
                let Unit::Post(u) = unit else {
                    panic!("post-activation net")
                };
                let (w1, b1) = fold(&u.conv1.weight, bn_of(&u.bn1));
                let (w2, b2) = fold(&u.conv2.weight, bn_of(&u.bn2));
                let (w3, b3) = fold(&u.conv3.weight, bn_of(&u.bn3));
                let r = conv(&y, &w1, Some(&b1), 1, 1).relu();
                let r = conv(&r, &w2, Some(&b2), u.conv2.stride, u.conv2.groups).relu();
                let r = conv(&r, &w3, Some(&b3), 1, 1);
                let s = match &u.downsample {
                    Some((c, n)) => {
                        let (w, b) = fold(&c.weight, bn_of(n));
                        conv(&y, &w, Some(&b), c.stride, 1)
                    }
                    None => y.shallow_clone(),
                };
                y = (r + s).relu();
            }
        }
        y.mean_dim([2i64, 3].as_slice(), false, Kind::Double)
            .linear(&net.fc.weight, Some(&net.fc.bias))
    });
    assert_close(&got, &want, 1e-11, "folded network vs network with BN (eval)");
    // The BN statistics were far from the identity, so folding changed the weights.
    let (w, _) = fold(&net.stem_conv.weight, bn_of(&net.stem_bn));
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
    let mut kernels = Vec::new();
    for unit in &stage.units {
        let Unit::Cru(u) = unit else { panic!("CRU stage") };
        let want = tch::no_grad(|| u.forward_t(&x, false));
        let got = tch::no_grad(|| {
            let (wg, bg) = fold(&u.grouped.weight, bn_of(&u.bn_expand));
            let a = bn_ref(&x, bn_of(&u.bn_reduce), 0, 8, false).relu();
            let y = conv(
                &conv(&a, &u.reduce.weight, None, 1, 1),
                &wg,
                Some(&bg),
                1,
                u.grouped.groups,
            )
            .relu();
            kernels.push(wg);
            conv(&y, &u.conv_expand.weight, None, 1, 1) + &x
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

/// For a share-group tensor `layer{s}.share{i}.{rest}` of the unshared net (`share{i}` = unit i),
/// the name of the shared net's tensor `layer{s}.share{i / L}.{rest}`; `None` for other names.
fn share_name(name: &str, share: &[usize]) -> Option<String> {
    let parts: Vec<&str> = name.splitn(3, '.').collect();
    match parts[..] {
        [layer, group, rest] if group.starts_with("share") => {
            let s: usize = layer["layer".len()..].parse().unwrap();
            let unit: usize = group["share".len()..].parse().unwrap();
            Some(format!("{layer}.share{}.{rest}", unit / share[s - 1]))
        }
        _ => None,
    }
}

#[test]
fn f_shared_gradient_is_the_sum_of_per_unit_gradients() {
    tch::manual_seed(14);
    let share = [3, 2];
    let shared_vs = f64_store();
    let shared = Network::new(&shared_vs.root(), &cru_net(share)).unwrap();
    let unshared_vs = f64_store();
    // share = 1: every unit owns its own copy (`share{i}` = unit i).
    let unshared = Network::new(&unshared_vs.root(), &cru_net([1, 1])).unwrap();
    randomize_bn(&shared_vs);
    let sv = shared_vs.variables();
    let uv = unshared_vs.variables();
    tch::no_grad(|| {
        for (name, t) in &uv {
            let src = &sv[&share_name(name, &share).unwrap_or_else(|| name.clone())];
            let mut dst = t.shallow_clone();
            dst.copy_(src);
        }
    });
    let x = Tensor::randn([3, 3, 8, 8], F64);
    let probe = Tensor::randn([3, 5], F64);
    let grads = |net: &Network| {
        let y = net.forward_t(&x, true);
        (&y * &probe).sum(Kind::Double).backward();
        y
    };
    let ys = grads(&shared);
    let yu = grads(&unshared);
    assert_close(
        &ys,
        &yu,
        1e-12,
        "shared and unshared copies compute the same function",
    );

    let mut sums: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in uv.iter().filter(|(_, t)| t.requires_grad()) {
        let g = t.grad();
        if let Some(key) = share_name(name, &share) {
            let e = sums.entry(key).or_insert_with(|| g.zeros_like());
            *e += &g;
            assert!(g.norm().double_value(&[]) > 1e-6, "{name}: zero gradient");
        } else {
            // Not shared: the same gradient in both networks.
            assert_close(&sv[name].grad(), &g, 1e-10, name);
        }
    }
    assert_eq!(
        sums.len(),
        2 * (2 + 2),
        "share groups: layer1 has 2, layer2 has 2, two tensors each"
    );
    for (name, total) in &sums {
        let g = sv[name].grad();
        assert_close(
            &g,
            total,
            1e-10,
            &format!("grad of shared {name} = Σ per-unit grads"),
        );
    }
    // The group of 3 units differs from any single unit's contribution.
    let one = uv["layer1.share0.conv_reduce.weight"].grad();
    assert!(max_abs(&one, &sv["layer1.share0.conv_reduce.weight"].grad()) > 1e-6);
}
