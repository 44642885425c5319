//! netgen ↔ PyTorch parity of `netgen_torch` (the repository's `python/` package): the same spec
//! gives the same network on both sides, with the same state-dict names, shapes, parameter count
//! and outputs.
//!
//! For each spec (every preset, a pre-activation net whose projections reuse the first BN, and a
//! property test over random GBTD configurations R, rank, share, depths):
//!
//! 1. netgen builds its tch network (seeded), draws random BN γ and β, sets every BN's running
//!    statistics to the statistics of its actual input (one training-mode pass with momentum 1 on
//!    a calibration batch, so that eval mode neither explodes nor washes the input out) and scales
//!    the fc so that the input-dependent part of the logits has unit spread; it writes the weights
//!    (`netgen.safetensors`), `spec.json`, an input and its eval-mode logits, then one
//!    training-mode step's input, logits and updated running statistics (`netgen_io.safetensors`);
//! 2. Python builds `netgen_torch.from_spec(spec.json)`, loads the weights strictly (every name and
//!    shape), and measures the eval logits, the train-mode logits and the updated running
//!    statistics against netgen's; it checks that the tensors of each CRU share group are one
//!    `nn.Parameter` object in every unit of the group (`is`) and distinct between groups, and that
//!    no parameter is registered twice; then it draws its own random weights the same way and
//!    writes them (`netgen_torch.save_safetensors`) with an input and its eval logits;
//! 3. netgen loads PyTorch's file strictly and must reproduce PyTorch's logits.
//!
//! Logit differences must stay below 1e-4, running statistics within 1e-4 relative, and both sides
//! must count the same number of parameters (shared tensors once) as netgen's analytic count.
//! ImageNet presets run at 64×64 (every stride acts; the names and shapes do not depend on the
//! input size), one at a time to bound the disk space of their weight files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use netgen::arch::NetSpec;
use netgen::arch::config::{Depth, GbtdConfig};
use netgen::arch::presets::{self, PresetOptions};
use netgen::nn::units::{Layer, Shortcut};
use netgen::nn::{BatchNorm2d, Network, load_safetensors, trainable_param_count};
use netgen::train::checkpoint::save_tensors;
use proptest::prelude::*;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

/// Python side of one case. Arguments: the checkout's `python/` directory (put first on
/// `sys.path`, so the package under test is this checkout's, not an installed copy) and the case
/// directory. Prints one line:
/// `eval_diff train_diff stats_rel_diff params shared_tensors torch_params`.
const PARITY: &str = r#"
import os, sys
sys.path.insert(0, sys.argv[1])
import torch
import netgen_torch as nt
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)
case = sys.argv[2]
spec_path = os.path.join(case, "spec.json")
io = load_file(os.path.join(case, "netgen_io.safetensors"))

m = nt.from_spec(spec_path)
assert isinstance(m, torch.nn.Module)
rep = nt.load_safetensors(m, os.path.join(case, "netgen.safetensors"), strict=True)
assert rep.loaded == len(m.state_dict()), (rep.loaded, len(m.state_dict()))

# Every parameter is registered once (shared tensors included), and the count follows.
named = list(m.named_parameters(remove_duplicate=False))
assert len(named) == len({id(p) for _, p in named}), "a parameter is registered under two names"
params = nt.count_parameters(m)
assert params == sum(p.numel() for _, p in named)

# CRU share groups: one Parameter object per shared tensor, the same in every unit of the group.
spec = m.spec
shared = 0
for si, st in enumerate(m.stages()):
    u = spec["stages"][si]["unit"]
    if u["kind"] != "cru":
        assert not st.share_groups()
        continue
    L = u["share"]
    groups = st.share_groups()
    assert len(groups) == -(-len(st) // L), (len(groups), len(st), L)
    for i, unit in enumerate(st):
        g = groups[i // L]
        assert unit.reduce_weight is g.conv_reduce.weight
        assert unit.grouped_weight is g.conv_grouped.weight
        for j, other in enumerate(st):
            same = i // L == j // L
            assert (unit.reduce_weight is other.reduce_weight) == same, (si, i, j)
            assert (unit.grouped_weight is other.grouped_weight) == same, (si, i, j)
    shared += 2 * len(groups)
    # The first unit's projection 1x1 is one tensor used twice (branch input and shortcut).
    if st[0].conv_proj is not None:
        names = [n for n, _ in named if n.startswith(f"layer{si + 1}.0.conv_proj.")]
        assert names == [f"layer{si + 1}.0.conv_proj.weight"], names

with torch.no_grad():
    m.eval()
    eval_diff = (m(io["x"]) - io["logits"]).abs().max().item()
    m.train()
    train_diff = (m(io["x_train"]) - io["logits_train"]).abs().max().item()
    stats = 0.0
    n_stats = 0
    for k, v in m.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            want = io["stats." + k]
            stats = max(stats, ((v - want).abs() / want.abs().clamp(min=1.0)).max().item())
            n_stats += 1
    assert n_stats == sum(1 for k in io if k.startswith("stats.")), n_stats

# PyTorch -> netgen: fresh random weights, calibrated like netgen's, saved for netgen to load.
torch.manual_seed(int(os.environ.get("PARITY_SEED", "7")))
g = torch.Generator().manual_seed(11)
m2 = nt.from_spec(spec_path)
c, n = spec["in_channels"], spec["input_size"]
bns = [b for b in m2.modules() if isinstance(b, torch.nn.BatchNorm2d)]
with torch.no_grad():
    for b in bns:
        b.weight.copy_(torch.rand(b.num_features, generator=g) * 0.6 + 0.2)
        b.bias.copy_(torch.randn(b.num_features, generator=g) * 0.2)
        b.momentum = 1.0
    xcal = torch.randn(4, c, n, n, generator=g)
    m2.train()
    m2(xcal)
    for b in bns:
        b.momentum = 0.1
    m2.eval()
    z = m2(xcal)
    m2.fc.weight.div_((z - z.mean(0, keepdim=True)).std())
    m2.fc.bias.copy_(torch.randn(m2.fc.bias.shape, generator=g) * 0.1)
    x = torch.randn(2, c, n, n, generator=g)
    y = m2(x)
nt.save_safetensors(m2, os.path.join(case, "torch.safetensors"))
save_file({"x": x, "logits": y}, os.path.join(case, "torch_io.safetensors"))
os.remove(os.path.join(case, "netgen.safetensors"))
print(f"{eval_diff:e} {train_diff:e} {stats:e} {params} {shared} {nt.count_parameters(m2)}")
"#;

/// Path of the checkout's `python/` directory.
fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../python")
}

/// Every BN of the network, mutably (stem, units' pre/branch/shortcut layers, final BN).
fn bns(net: &mut Network) -> Vec<&mut BatchNorm2d> {
    let mut out: Vec<&mut BatchNorm2d> = Vec::new();
    out.extend(net.stem_bn.0.as_mut());
    for stage in &mut net.stages {
        for unit in &mut stage.units {
            let sc = match &mut unit.shortcut {
                Shortcut::Projection(_, s) => Some(&mut s.0),
                Shortcut::Identity => None,
            };
            let layers = unit
                .pre
                .0
                .iter_mut()
                .chain(unit.branch.0.iter_mut())
                .chain(sc.into_iter().flatten());
            for (_, l) in layers {
                if let Layer::Norm(n, _) = l {
                    out.extend(n.0.as_mut());
                }
            }
        }
    }
    if let Some(n) = net.final_bn.as_mut() {
        out.extend(n.0.as_mut());
    }
    out
}

/// Overwrites a variable in place (the store's tensor, shared by every use).
fn set(t: &Tensor, v: &Tensor) {
    tch::no_grad(|| t.shallow_clone().copy_(v));
}

/// What a finished case measured.
#[derive(Debug)]
struct Outcome {
    eval_diff: f64,
    train_diff: f64,
    stats_diff: f64,
    reverse_diff: f64,
}

/// Runs one case (see the file docs) in a fresh subdirectory of `root`; `None` when the Python
/// peers are not set up (the test then skips, or fails in CI: see the `peers` crate).
fn run_case(test: &str, root: &Path, label: &str, spec: &NetSpec, seed: i64) -> Option<Outcome> {
    let dir = root.join(label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    std::fs::create_dir_all(&dir).expect("case dir");
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let mut net = Network::new(&vs.root(), spec).unwrap_or_else(|e| panic!("{label}: build: {e}"));
    let (c, n) = (spec.in_channels as i64, spec.input_size as i64);
    let opts = (Kind::Float, Device::Cpu);
    let xcal = Tensor::randn([4, c, n, n], opts);
    tch::no_grad(|| {
        for bn in bns(&mut net) {
            let ch = bn.weight.size()[0];
            set(&bn.weight, &(Tensor::rand([ch], opts) * 0.6 + 0.2));
            set(&bn.bias, &(Tensor::randn([ch], opts) * 0.2));
            bn.momentum = 1.0;
        }
        let _ = net.forward_t(&xcal, true);
        for bn in bns(&mut net) {
            bn.momentum = 0.1;
        }
        // The input-dependent part of the logits gets unit spread.
        let z = net.forward_t(&xcal, false);
        let z = &z - z.mean_dim([0i64].as_slice(), true, Kind::Float);
        set(&net.fc.weight, &(&net.fc.weight / z.std(true)));
        set(&net.fc.bias, &(Tensor::randn(net.fc.bias.size(), opts) * 0.1));
    });
    let weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    save_tensors(&dir.join("netgen.safetensors"), &weights, HashMap::new()).expect("save weights");
    std::fs::write(dir.join("spec.json"), spec.to_json_pretty().expect("spec json")).expect("write spec");

    let x = Tensor::randn([2, c, n, n], opts);
    let logits = tch::no_grad(|| net.forward_t(&x, false));
    let spread = (logits.get(0) - logits.get(1)).abs().max().double_value(&[]);
    assert!(
        spread > 0.1,
        "{label}: netgen's logits barely depend on the input (spread {spread})"
    );
    // One training-mode step: batch statistics, running statistics updated with momentum 0.1.
    let x_train = Tensor::randn([2, c, n, n], opts);
    let logits_train = tch::no_grad(|| net.forward_t(&x_train, true));
    let mut io = vec![
        ("x".to_string(), x),
        ("logits".to_string(), logits),
        ("x_train".to_string(), x_train),
        ("logits_train".to_string(), logits_train),
    ];
    for (name, t) in vs.variables() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            io.push((format!("stats.{name}"), t));
        }
    }
    save_tensors(&dir.join("netgen_io.safetensors"), &io, HashMap::new()).expect("save io");
    let ours = trainable_param_count(&vs);
    drop(net);
    drop(vs);

    let args = [
        python_dir().to_str().expect("utf-8 path").to_string(),
        dir.to_str().expect("utf-8 path").to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = peers::run(test, PARITY, &args)?;
    let fields: Vec<&str> = report.split_whitespace().collect();
    let [eval_diff, train_diff, stats_diff, params, shared, torch_params] = fields[..] else {
        panic!("{label}: unexpected python output {report:?}")
    };
    let f = |s: &str| s.parse::<f64>().unwrap_or_else(|e| panic!("{label}: {s:?}: {e}"));
    let u = |s: &str| {
        s.parse::<usize>()
            .unwrap_or_else(|e| panic!("{label}: {s:?}: {e}"))
    };
    // Parameter counts: PyTorch's (each Parameter object once), netgen's store, netgen's formula.
    let formula = netgen::count::count(spec).expect("count").params as usize;
    assert_eq!(u(params), ours, "{label}: PyTorch vs netgen parameter count");
    assert_eq!(
        u(torch_params),
        ours,
        "{label}: PyTorch's own network's parameter count"
    );
    assert_eq!(ours, formula, "{label}: netgen's store vs its analytic count");
    let want_shared: usize = spec
        .stages
        .iter()
        .filter(|s| s.unit.is_cru())
        .map(|s| 2 * s.unit.share_groups(s.depth).len())
        .sum();
    assert_eq!(u(shared), want_shared, "{label}: shared tensors checked");

    // PyTorch → netgen: strict load of PyTorch's file, same logits.
    let vs = VarStore::new(Device::Cpu);
    let net = Network::new(&vs.root(), spec).expect("rebuild");
    let rep = load_safetensors(&vs, &dir.join("torch.safetensors"))
        .unwrap_or_else(|e| panic!("{label}: netgen cannot load PyTorch's weights: {e}"));
    assert_eq!(rep.loaded, vs.variables().len());
    assert!(
        rep.skipped.is_empty(),
        "{label}: unexpected skipped {:?}",
        rep.skipped
    );
    let named = Tensor::read_safetensors(dir.join("torch_io.safetensors")).expect("torch io");
    let get = |k: &str| {
        named
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, t)| t.shallow_clone())
            .expect(k)
    };
    let got = tch::no_grad(|| net.forward_t(&get("x"), false));
    let want = get("logits");
    let spread = (want.get(0) - want.get(1)).abs().max().double_value(&[]);
    assert!(
        spread > 0.1,
        "{label}: PyTorch's logits barely depend on the input (spread {spread})"
    );
    let reverse_diff = (&got - &want).abs().max().double_value(&[]);
    std::fs::remove_dir_all(&dir).expect("remove case dir");

    let out = Outcome {
        eval_diff: f(eval_diff),
        train_diff: f(train_diff),
        stats_diff: f(stats_diff),
        reverse_diff,
    };
    eprintln!("{label}: {ours} params, {out:?}");
    assert!(
        out.eval_diff < 1e-4,
        "{label}: eval logits differ by {}",
        out.eval_diff
    );
    assert!(
        out.train_diff < 1e-4,
        "{label}: train-mode logits differ by {}",
        out.train_diff
    );
    assert!(
        out.stats_diff < 1e-4,
        "{label}: running statistics differ by {} (relative)",
        out.stats_diff
    );
    assert!(
        out.reverse_diff < 1e-4,
        "{label}: netgen on PyTorch's weights differs by {}",
        out.reverse_diff
    );
    Some(out)
}

fn preset(name: &str, opts: PresetOptions) -> NetSpec {
    presets::preset(name, opts).unwrap_or_else(|e| panic!("preset {name}: {e}"))
}

#[test]
fn small_presets_match_both_ways() {
    tch::set_num_threads(2);
    let root = tempfile::tempdir().expect("tempdir");
    let mut cases: Vec<(String, NetSpec)> = presets::PRESETS
        .iter()
        .map(|p| p.spec())
        .filter(|s| matches!(s.stem, netgen::arch::Stem::Small { .. }))
        .map(|s| (s.name.clone(), s))
        .collect();
    assert_eq!(cases.len(), 3, "the small-image presets");
    // Fashion-MNIST layout: 28×28 grayscale, 5 classes.
    let fm = PresetOptions {
        classes: Some(5),
        input_size: Some(28),
        in_channels: Some(1),
    };
    cases.push(("crunet_small_28px_gray".into(), preset("crunet_small", fm)));
    // Pre-activation aggregated units whose projection reuses the unit's first BN-ReLU (no preset
    // has them).
    let mut s = preset("resnext29_small", fm);
    s.preact = true;
    s.separate_projection_bn = false;
    cases.push(("resnext29_small_preact_shared_bn".into(), s));
    for (i, (label, spec)) in cases.iter().enumerate() {
        if run_case(
            "small_presets_match_both_ways",
            root.path(),
            label,
            spec,
            100 + i as i64,
        )
        .is_none()
        {
            return;
        }
    }
}

#[test]
fn imagenet_presets_match_both_ways() {
    tch::set_num_threads(2);
    let root = tempfile::tempdir().expect("tempdir");
    let opts = PresetOptions {
        input_size: Some(64),
        ..Default::default()
    };
    let names: Vec<&str> = presets::PRESETS
        .iter()
        .filter(|p| matches!(p.spec().stem, netgen::arch::Stem::Imagenet { .. }))
        .map(|p| p.name)
        .collect();
    assert_eq!(names.len(), 6, "the ImageNet presets");
    for (i, name) in names.iter().enumerate() {
        let spec = preset(name, opts);
        if run_case(
            "imagenet_presets_match_both_ways",
            root.path(),
            name,
            &spec,
            200 + i as i64,
        )
        .is_none()
        {
            return;
        }
    }
}

/// Python side of the refusal test: argument 1 is the checkout's `python/`, argument 2 a scratch
/// directory holding netgen's `spec.json` and `netgen.safetensors` of `crunet_small` at 28 px.
const REFUSALS: &str = r#"
import json, os, sys
sys.path.insert(0, sys.argv[1])
import torch
import netgen_torch as nt
from safetensors.torch import load_file, save_file

d = sys.argv[2]
spec = json.load(open(os.path.join(d, "spec.json")))

def refused(s, needle):
    try:
        nt.from_spec(s)
    except nt.SpecError as e:
        assert needle in str(e), f"expected {needle!r} in: {e}"
        assert "\n" not in str(e), str(e)
        return
    raise AssertionError(f"accepted: {needle}")

bad = json.loads(json.dumps(spec)); bad["stages"][1]["unit"]["groups"] = 7
refused(bad, "does not divide the bottleneck width 80")
bad = json.loads(json.dumps(spec)); bad["stages"][1]["unit"]["share"] = 9
refused(bad, "1 ≤ share ≤ 3")
bad = json.loads(json.dumps(spec)); bad["preact"] = False
refused(bad, "set preact = true")
bad = json.loads(json.dumps(spec)); bad["stages"][0]["unit"]["kind"] = "dense"
refused(bad, "unknown; valid: aggregated, cru")
bad = json.loads(json.dumps(spec)); del bad["classes"]
refused(bad, "missing field(s) classes")
bad = json.loads(json.dumps(spec)); bad["input_size"] = 2
refused(bad, "the smallest input is 4")
refused(os.path.join(d, "no_such_spec.json"), "cannot read spec file")
refused("{not json", "cannot parse spec JSON")
# `netgen emit --json` wraps the spec; both forms and JSON text build the same names.
a = nt.from_spec({"spec": spec, "params": 1}).state_dict().keys()
assert list(a) == list(nt.from_spec(json.dumps(spec)).state_dict().keys())
assert list(a) == list(nt.from_spec(d).state_dict().keys())  # a run directory: its spec.json

w = os.path.join(d, "netgen.safetensors")
m = nt.from_spec(os.path.join(d, "spec.json"))
before = {k: v.clone() for k, v in m.state_dict().items()}
t = load_file(w)
t["layer2.share0.conv_reduce_renamed.weight"] = t.pop("layer2.share0.conv_reduce.weight")
t["fc.weight"] = torch.zeros(3, 7)
t["layer1.0.bn1.num_batches_tracked"] = torch.tensor(5)  # PyTorch's counter: skipped
save_file(t, os.path.join(d, "bad.safetensors"))
try:
    nt.load_safetensors(m, os.path.join(d, "bad.safetensors"))
    raise AssertionError("a mismatched file was loaded")
except nt.WeightsError as e:
    msg = str(e)
    assert "missing in the file: layer2.share0.conv_reduce.weight" in msg, msg
    assert "not in the network: layer2.share0.conv_reduce_renamed.weight" in msg, msg
    assert "fc.weight: file [3, 7], network [5, 256]" in msg, msg
    assert "num_batches_tracked" not in msg, msg
assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items()), "strict failure copied data"
rep = nt.load_safetensors(m, os.path.join(d, "bad.safetensors"), strict=False)
assert rep.missing == ["layer2.share0.conv_reduce.weight"] and rep.skipped == ["layer1.0.bn1.num_batches_tracked"]
assert rep.loaded == len(before) - 2, (rep.loaded, len(before))
try:
    nt.load_safetensors(m, os.path.join(d, "spec.json"))
    raise AssertionError("a JSON file was read as weights")
except nt.WeightsError as e:
    assert "cannot read weights" in str(e), str(e)
# PyTorch's plain load_state_dict(strict=True) takes netgen's file as is, and a PyTorch
# state dict with num_batches_tracked counters too.
m.load_state_dict(load_file(w), strict=True)
sd = load_file(w); sd["bn1.num_batches_tracked"] = torch.tensor(3)
m.load_state_dict(sd, strict=True)
# Saving is atomic: the file appears whole under its name, no temporary file is left behind.
nt.save_safetensors(m, os.path.join(d, "saved.safetensors"), metadata={"step": "12"})
assert nt.read_metadata(os.path.join(d, "saved.safetensors")) == {"step": "12"}
assert not [f for f in os.listdir(d) if f.startswith(".tmp")], os.listdir(d)
assert set(load_file(os.path.join(d, "saved.safetensors"))) == set(load_file(w))
print("ok")
"#;

/// netgen_torch refuses bad specs and mismatched weight files with one-line messages that name
/// what is wrong, copies nothing on a strict failure, and loads netgen's file through PyTorch's
/// own `load_state_dict(strict=True)` as well.
#[test]
fn python_side_refuses_bad_specs_and_mismatched_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = preset(
        "crunet_small",
        PresetOptions {
            classes: Some(5),
            input_size: Some(28),
            in_channels: Some(1),
        },
    );
    let vs = VarStore::new(Device::Cpu);
    let _net = Network::new(&vs.root(), &spec).expect("build");
    let weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    save_tensors(&dir.path().join("netgen.safetensors"), &weights, HashMap::new()).expect("save");
    std::fs::write(dir.path().join("spec.json"), spec.to_json_pretty().expect("json")).expect("write");
    let py = python_dir();
    let args = [py.to_str().expect("utf-8"), dir.path().to_str().expect("utf-8")];
    let Some(out) = peers::run(
        "python_side_refuses_bad_specs_and_mismatched_weights",
        REFUSALS,
        &args,
    ) else {
        return;
    };
    assert_eq!(out.trim(), "ok");
}

/// A random small GBTD configuration: R, rank, share and stage depths, on the small-image (28 or
/// 32 px) or the ImageNet (64 px) layout, with narrow stages so that a case takes a second.
fn gbtd_config() -> impl Strategy<Value = (GbtdConfig, bool)> {
    (
        (prop::sample::select(vec![1usize, 2, 4]), 1usize..=3),
        prop::option::of(1usize..=3),
        prop::collection::vec(1usize..=3, 4),
        (0usize..3, prop::sample::select(vec![8usize, 16])),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (1usize..=2, 2usize..=10),
    )
        .prop_map(
            |((r, rank), share, depths, (layout, w0), (eq, no_extra, preact, sep), (first, classes))| {
                let (input, stages) = match layout {
                    0 => (28, 3),
                    1 => (32, 3),
                    _ => (64, 4),
                };
                let cfg = GbtdConfig {
                    r,
                    rank,
                    share,
                    depth: Some(Depth::Stages(depths[..stages].to_vec())),
                    widths: Some((0..stages).map(|s| w0 << s).collect()),
                    groups_eq_channels: eq,
                    no_extra_conv: no_extra,
                    preact,
                    stem_width: Some(w0),
                    classes: Some(classes),
                    input: Some(input),
                    first_stride: Some(first),
                    allow_uneven_share: true,
                    ..GbtdConfig::default()
                };
                (cfg, sep)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random GBTD configurations: both directions agree (see the file docs).
    #[test]
    fn random_gbtd_configs_match_both_ways((cfg, separate_bn) in gbtd_config()) {
        tch::set_num_threads(2);
        let spec = cfg.to_spec();
        prop_assume!(spec.is_ok());
        let mut spec = spec.unwrap();
        // Pre-activation aggregated stages: the projection's own BN, or the unit's first BN.
        spec.separate_projection_bn = separate_bn;
        let root = tempfile::tempdir().expect("tempdir");
        let label = format!("random {}", spec.name);
        run_case("random_gbtd_configs_match_both_ways", root.path(), &label, &spec, 300);
    }
}
