//! The analytic parameter count of `netgen::count` equals the number of trainable scalars in the
//! instantiated tch `VarStore` (a shared tensor counted once), in total and per stem / stage / head,
//! for every preset and for hand-written specs covering the remaining unit variants. Also checks
//! that CRU sharing is real: every unit of a share group convolves with the very same tensor.
use std::collections::BTreeMap;

use netgen::arch::{NetSpec, StageSpec, Stem, UnitSpec};
use netgen::count::count;
use netgen::nn::{Network, trainable_param_count};
use tch::Device;
use tch::nn::VarStore;

/// Trainable scalars per top-level group: "stem" (conv1, bn1), "layer{s}", "head" (final_bn, fc).
fn per_group(vs: &VarStore) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (name, t) in vs.variables() {
        if !t.requires_grad() {
            continue;
        }
        let top = name.split('.').next().unwrap_or_default();
        let key = match top {
            "conv1" | "bn1" => "stem".to_string(),
            "final_bn" | "fc" => "head".to_string(),
            l if l.starts_with("layer") => l.to_string(),
            other => panic!("unexpected variable {name} (group {other})"),
        };
        *m.entry(key).or_insert(0) += t.numel() as u64;
    }
    m
}

fn check(spec: &NetSpec) {
    let vs = VarStore::new(Device::Cpu);
    let net = Network::new(&vs.root(), spec).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
    let counts = count(spec).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
    assert_eq!(
        trainable_param_count(&vs) as u64,
        counts.params,
        "{}: total parameters",
        spec.name
    );

    let groups = per_group(&vs);
    assert_eq!(groups["stem"], counts.stem.params, "{}: stem", spec.name);
    assert_eq!(groups["head"], counts.head.params, "{}: head", spec.name);
    for (i, st) in counts.stages.iter().enumerate() {
        assert_eq!(
            groups[&format!("layer{}", i + 1)],
            st.tally.params,
            "{}: stage {i}",
            spec.name
        );
    }

    // No trainable tensor is registered twice (shared tensors are one variable).
    let mut ptrs: Vec<usize> = vs
        .trainable_variables()
        .iter()
        .map(|t| t.data_ptr() as usize)
        .collect();
    let n = ptrs.len();
    ptrs.sort_unstable();
    ptrs.dedup();
    assert_eq!(ptrs.len(), n, "{}: a trainable tensor appears twice", spec.name);

    // Real sharing: the units of share group k use share{k}'s tensors, and nothing else does.
    let vars = vs.variables();
    for (si, (stage, sspec)) in net.stages.iter().zip(&spec.stages).enumerate() {
        assert_eq!(stage.units.len(), sspec.depth);
        if !sspec.unit.is_cru() {
            assert!(
                !vars
                    .keys()
                    .any(|k| k.starts_with(&format!("layer{}.share", si + 1))),
                "{}: layer{} is not a CRU stage but has share-group tensors",
                spec.name,
                si + 1
            );
            continue;
        }
        let ranges = sspec.unit.share_groups(sspec.depth);
        for (k, range) in ranges.iter().enumerate() {
            let reduce = &vars[&format!("layer{}.share{k}.conv_reduce.weight", si + 1)];
            let grouped = &vars[&format!("layer{}.share{k}.conv_grouped.weight", si + 1)];
            for (i, u) in stage.units.iter().enumerate() {
                let inside = range.contains(&i);
                let r = u.conv("conv_reduce").expect("CRU unit has conv_reduce");
                let g = u.conv("conv_grouped").expect("CRU unit has conv_grouped");
                assert_eq!(
                    r.weight.data_ptr() == reduce.data_ptr(),
                    inside,
                    "unit {i}, group {k}"
                );
                assert_eq!(
                    g.weight.data_ptr() == grouped.data_ptr(),
                    inside,
                    "unit {i}, group {k}"
                );
            }
        }
        assert!(
            !vars.contains_key(&format!(
                "layer{}.share{}.conv_reduce.weight",
                si + 1,
                ranges.len()
            )),
            "{}: layer{} has more share groups than {}",
            spec.name,
            si + 1,
            ranges.len()
        );
    }
}

#[test]
fn every_preset_matches_the_analytic_count() {
    let names = netgen::arch::presets::names();
    assert!(names.contains(&"crunet56") && names.contains(&"crunet116") && names.contains(&"crunet_small"));
    for name in names {
        let spec = netgen::arch::presets::preset(name, Default::default()).expect("preset");
        check(&spec);
    }
}

fn stage(depth: usize, width: usize, stride: usize, unit: UnitSpec) -> StageSpec {
    StageSpec {
        depth,
        width,
        stride,
        unit,
    }
}

#[test]
fn other_unit_variants_match_the_analytic_count() {
    let base = NetSpec {
        name: "variants".into(),
        in_channels: 1,
        input_size: 28,
        classes: 7,
        preact: true,
        stem: Stem::Small { width: 16 },
        stages: vec![
            // CRU first stage without a projection (in = width, stride 1), last share group shorter.
            stage(
                5,
                16,
                1,
                UnitSpec::Cru {
                    mid: 12,
                    groups: 4,
                    share: 2,
                    extra_conv: false,
                },
            ),
            // Pre-activation aggregated stage with a projection.
            stage(2, 32, 2, UnitSpec::Aggregated { mid: 16, groups: 4 }),
            // CRU stage with a projection and the extra 1×1.
            stage(
                3,
                48,
                2,
                UnitSpec::Cru {
                    mid: 24,
                    groups: 24,
                    share: 3,
                    extra_conv: true,
                },
            ),
        ],
        separate_projection_bn: false,
    };
    check(&base);
    check(&NetSpec {
        separate_projection_bn: true,
        ..base.clone()
    });
    let post = NetSpec {
        preact: false,
        stem: Stem::Imagenet { width: 8 },
        input_size: 64,
        stages: vec![
            stage(2, 8, 1, UnitSpec::Aggregated { mid: 4, groups: 1 }),
            stage(2, 24, 2, UnitSpec::Aggregated { mid: 12, groups: 3 }),
        ],
        ..base
    };
    check(&post);
}

#[test]
fn every_variable_of_the_small_presets_receives_a_gradient() {
    // One training step of each small preset: every trainable tensor takes part in the forward
    // pass (no created-but-unused weight inflates the count) and gets a finite, non-zero gradient.
    for name in ["resnet_small", "resnext29_small", "crunet_small"] {
        tch::manual_seed(5);
        let spec = netgen::arch::presets::preset(name, Default::default()).expect("preset");
        let vs = VarStore::new(Device::Cpu);
        let net = Network::new(&vs.root(), &spec).expect("build");
        let x = tch::Tensor::randn([2, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
        let y = tch::nn::ModuleT::forward_t(&net, &x, true);
        assert_eq!(y.size(), vec![2, spec.classes as i64]);
        y.square().sum(tch::Kind::Float).backward();
        for (n, t) in vs.variables() {
            if t.requires_grad() {
                let g = t.grad();
                assert!(g.defined(), "{name}: {n} has no gradient");
                let norm = g.norm().double_value(&[]);
                assert!(
                    norm.is_finite() && norm > 0.0,
                    "{name}: {n} has gradient norm {norm}"
                );
            }
        }
    }
}

#[test]
fn invalid_specs_are_refused_with_a_message() {
    let mut spec = netgen::arch::presets::crunet_small();
    spec.stages[1].unit = UnitSpec::Cru {
        mid: 80,
        groups: 7,
        share: 3,
        extra_conv: true,
    };
    let vs = VarStore::new(Device::Cpu);
    let err = Network::new(&vs.root(), &spec)
        .expect_err("R = 7 does not divide 80")
        .to_string();
    assert!(err.contains("does not divide"), "{err}");
    spec.stages[1].unit = UnitSpec::Cru {
        mid: 80,
        groups: 80,
        share: 4,
        extra_conv: true,
    };
    let err = Network::new(&vs.root(), &spec)
        .expect_err("share 4 > depth 3")
        .to_string();
    assert!(err.contains("larger than the stage depth"), "{err}");
}

#[test]
fn first_stride_and_the_main_fashion_mnist_configuration() {
    use netgen::arch::config::GbtdConfig;
    use tch::nn::ModuleT;
    // netgen --R 32 --rank 4 --share 6 --input 28 (depth 56 from the share), and the same with a
    // stride-2 first stage: the tch network has the counted parameters and follows the strides.
    for first_stride in [1usize, 2] {
        let spec = GbtdConfig {
            share: Some(6),
            input: Some(28),
            first_stride: Some(first_stride),
            ..Default::default()
        }
        .to_spec()
        .expect("spec");
        check(&spec);
        let vs = VarStore::new(Device::Cpu);
        let net = Network::new(&vs.root(), &spec).expect("build");
        let x = tch::Tensor::randn([1, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        let sizes: Vec<i64> = tch::no_grad(|| {
            let mut y = net.stem_t(&x, false);
            net.stages
                .iter()
                .map(|s| {
                    y = s.forward_t(&y, false);
                    y.size()[2]
                })
                .collect()
        });
        let want: Vec<i64> = spec.stage_out_sizes().iter().map(|n| n.unwrap() as i64).collect();
        assert_eq!(sizes, want);
        // The stage sizes by hand: 28 → 28, 14, 7 (stride 1) and 28 → 14, 7, 4 (stride 2).
        assert_eq!(
            sizes,
            if first_stride == 1 {
                [28, 14, 7]
            } else {
                [14, 7, 4]
            }
        );
    }
}
