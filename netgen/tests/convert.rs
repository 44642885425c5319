//! `netgen convert`: a CRU initialised from a pre-activation ResNeXt.
//!
//! - the linear parts: each converted CRU unit's `conv_extra ∘ conv_grouped ∘ conv_reduce`,
//!   composed here by brute-force loops, against the ResNeXt unit's `conv2 ∘ diag(bn2 scale) ∘
//!   conv1` (also composed here): equal with L = 1 and the source's R (the ResNeXt kernel is a BTD
//!   of that rank), and with L = 2 at exactly the relative errors gbtd's collective factorization
//!   reports; the tensors that are copied are copied; the target has `netgen emit`'s parameters;
//! - the CLI on a tiny data set: the converted run loads in `netgen eval --run` and
//!   `netgen train --resume`; refusals (a ResNet, a post-activation ResNeXt, a share larger than
//!   every stage, missing or unreadable files, a non-empty output) are one-line errors that leave
//!   no output directory.
use std::path::Path;
use std::process::{Command, Output};

use ndarray::Array2;
use ndarray_linalg::Inverse;
use netgen::arch::config::{Depth, GbtdConfig};
use netgen::arch::plan::{share_prefix, unit_prefix};
use netgen::arch::spec::NetSpec;
use netgen::convert::{ConvertOptions, Converted, convert_weights};
use netgen::count::count;
use netgen::nn::Network;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// A dense kernel `(out, in, kh, kw)` in f64.
#[derive(Debug, Clone)]
struct K {
    d: [usize; 4],
    v: Vec<f64>,
}

impl K {
    fn zeros(d: [usize; 4]) -> Self {
        K {
            d,
            v: vec![0.0; d.iter().product()],
        }
    }
    fn of(t: &Tensor) -> Self {
        let s = t.size();
        let mut d = [1usize; 4];
        for (k, &x) in s.iter().enumerate() {
            d[k] = x as usize;
        }
        let v = Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view([-1])).unwrap();
        K { d, v }
    }
    fn idx(&self, o: usize, c: usize, i: usize, j: usize) -> usize {
        ((o * self.d[1] + c) * self.d[2] + i) * self.d[3] + j
    }
    fn at(&self, o: usize, c: usize, i: usize, j: usize) -> f64 {
        self.v[self.idx(o, c, i, j)]
    }
    fn add(&mut self, o: usize, c: usize, i: usize, j: usize, x: f64) {
        let k = self.idx(o, c, i, j);
        self.v[k] += x;
    }
    fn norm(&self) -> f64 {
        self.v.iter().map(|x| x * x).sum::<f64>().sqrt()
    }
    fn rel_err(&self, other: &K) -> f64 {
        assert_eq!(self.d, other.d, "kernel shapes");
        let diff: f64 = self
            .v
            .iter()
            .zip(&other.v)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        diff / other.norm()
    }
    /// `K ×_1 Q`: `out[o, b] = Σ_c K[o, c] Q[c, b]` at every spatial position.
    fn times(&self, q: &Array2<f64>) -> K {
        let mut out = K::zeros([self.d[0], q.ncols(), self.d[2], self.d[3]]);
        for o in 0..self.d[0] {
            for c in 0..self.d[1] {
                for b in 0..q.ncols() {
                    for i in 0..self.d[2] {
                        for j in 0..self.d[3] {
                            out.add(o, b, i, j, self.at(o, c, i, j) * q[[c, b]]);
                        }
                    }
                }
            }
        }
        out
    }
}

/// The ResNeXt unit's `conv2 ∘ diag(s2) ∘ conv1`, by loops: conv2 `(mid, d, kh, kw)` with `groups`
/// groups (output `o` in group `o / (mid / groups)` reads channels `g·d .. (g+1)·d`).
fn resnext_kernel(conv1: &K, s2: &[f64], conv2: &K, groups: usize) -> K {
    let (mid, cin, d, kh, kw) = (conv2.d[0], conv1.d[1], conv2.d[1], conv2.d[2], conv2.d[3]);
    let per = mid / groups;
    let mut k = K::zeros([mid, cin, kh, kw]);
    for o in 0..mid {
        let g = o / per;
        for p in 0..d {
            let m = g * d + p;
            for c in 0..cin {
                for i in 0..kh {
                    for j in 0..kw {
                        k.add(o, c, i, j, conv2.at(o, p, i, j) * s2[m] * conv1.at(m, c, 0, 0));
                    }
                }
            }
        }
    }
    k
}

/// The CRU unit's linear part `conv_extra ∘ conv_grouped ∘ conv_reduce`, by loops.
fn cru_kernel(reduce: &K, grouped: &K, extra: &K, groups: usize) -> K {
    let inner = resnext_kernel(reduce, &vec![1.0; reduce.d[0]], grouped, groups);
    let (mid, cin, kh, kw) = (extra.d[0], inner.d[1], inner.d[2], inner.d[3]);
    let mut k = K::zeros([mid, cin, kh, kw]);
    for o in 0..mid {
        for q in 0..extra.d[1] {
            let e = extra.at(o, q, 0, 0);
            for c in 0..cin {
                for i in 0..kh {
                    for j in 0..kw {
                        k.add(o, c, i, j, e * inner.at(q, c, i, j));
                    }
                }
            }
        }
    }
    k
}

/// A pre-activation ResNeXt with 2 stages of 2 units (R = 2; mids 4 and 8), stem 6 → widths 8, 16,
/// so both first units have a projection; `share` turns stages into CRU stages as `netgen emit
/// --share` does.
fn config(share: Option<usize>) -> GbtdConfig {
    GbtdConfig {
        r: 2,
        rank: 2,
        share,
        depth: Some(Depth::Stages(vec![2, 2])),
        widths: Some(vec![8, 16]),
        stem_width: Some(6),
        preact: true,
        input: Some(8),
        in_channels: Some(1),
        classes: Some(3),
        ..GbtdConfig::default()
    }
}

/// Random weights and BN parameters/statistics for `spec` (seeded).
fn random_weights(spec: &NetSpec, seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let vs = VarStore::new(tch::Device::Cpu);
    let _net = Network::new(&vs.root(), spec).unwrap();
    let mut named = vs.variables().into_iter().collect::<Vec<_>>();
    tch::no_grad(|| {
        for (n, t) in named.iter_mut() {
            let c = t.size();
            if c.len() != 1 || n.starts_with("fc.") {
                continue;
            }
            let r = Tensor::rand(c.as_slice(), (Kind::Float, tch::Device::Cpu));
            let v = if n.ends_with(".weight") || n.ends_with("running_var") {
                r * 1.5 + 0.5
            } else {
                (r - 0.5) * 0.4
            };
            t.copy_(&v);
        }
    });
    named.into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
}

fn copy_all(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
}

fn get<'a>(named: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &named
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name}"))
        .1
}

fn bn_scale(named: &[(String, Tensor)], bn: &str) -> Vec<f64> {
    let g = K::of(get(named, &format!("{bn}.weight")));
    let v = K::of(get(named, &format!("{bn}.running_var")));
    g.v.iter().zip(&v.v).map(|(g, v)| g / (v + 1e-5).sqrt()).collect()
}

/// `P⁺ = (PᵀP)⁻¹ Pᵀ` of a 1×1 weight `(out, in, 1, 1)` of full column rank.
fn pinv(p: &K) -> Array2<f64> {
    let m = Array2::from_shape_fn((p.d[0], p.d[1]), |(a, b)| p.at(a, b, 0, 0));
    m.t().dot(&m).inv().unwrap().dot(&m.t())
}

/// For each CRU unit: (relative error of the converted linear part against the ResNeXt kernel,
/// read through `P⁺` for a first unit with a projection; the converted kernel `· P` against the
/// ResNeXt kernel).
fn unit_errors(src: &NetSpec, named: &[(String, Tensor)], conv: &Converted) -> Vec<(f64, f64)> {
    let t = |n: &str| K::of(conv.tensors.get(n).unwrap_or_else(|| panic!("converted {n}")));
    let mut out = Vec::new();
    for u in src.units() {
        let st = &conv.spec.stages[u.stage];
        let netgen::arch::spec::UnitSpec::Cru { groups, share, .. } = st.unit else {
            continue;
        };
        let p = unit_prefix(u.stage, u.index);
        let sp = share_prefix(u.stage, u.index / share);
        let want = resnext_kernel(
            &K::of(get(named, &format!("{p}.conv1.weight"))),
            &bn_scale(named, &format!("{p}.bn2")),
            &K::of(get(named, &format!("{p}.conv2.weight"))),
            src.stages[u.stage].unit.groups(),
        );
        let got = cru_kernel(
            &t(&format!("{sp}.conv_reduce.weight")),
            &t(&format!("{sp}.conv_grouped.weight")),
            &t(&format!("{p}.conv_extra.weight")),
            groups,
        );
        if u.projection {
            let proj = K::of(get(named, &format!("{p}.downsample.weight")));
            let through = want.times(&pinv(&proj));
            let pm = Array2::from_shape_fn((proj.d[0], proj.d[1]), |(a, b)| proj.at(a, b, 0, 0));
            out.push((got.rel_err(&through), got.times(&pm).rel_err(&want)));
        } else {
            let e = got.rel_err(&want);
            out.push((e, e));
        }
    }
    out
}

fn assert_same(conv: &Converted, to: &str, named: &[(String, Tensor)], from: &str) {
    let a = conv.tensors.get(to).unwrap_or_else(|| panic!("converted {to}"));
    assert!(a.equal(get(named, from)), "{to} is not a copy of {from}");
}

#[test]
fn without_sharing_the_linear_parts_reproduce_each_unit_kernel() {
    let src = config(None).to_spec().unwrap();
    let named = random_weights(&src, 1);
    // Default options: the ResNeXt's own factors start the factorization, which is then exact.
    let opts = ConvertOptions::new(1);
    let conv = convert_weights(&src, copy_all(&named), "random", &opts, &|_, _| {}).unwrap();
    assert_eq!(conv.groups.len(), 4, "one share group per unit");
    let errs = unit_errors(&src, &named, &conv);
    assert_eq!(errs.len(), 4);
    for (u, (e, e_p)) in errs.iter().enumerate() {
        assert!(*e < 1e-4, "unit {u}: converted kernel off by {e}");
        // P has full column rank (8 ≥ 6): through the projection the first unit is exact too.
        assert!(*e_p < 1e-4, "unit {u}: converted kernel · P off by {e_p}");
    }
    // What is copied is copied.
    for u in src.units() {
        let p = unit_prefix(u.stage, u.index);
        assert_same(
            &conv,
            &format!("{p}.conv_expand.weight"),
            &named,
            &format!("{p}.conv3.weight"),
        );
        for v in ["weight", "bias", "running_mean", "running_var"] {
            assert_same(
                &conv,
                &format!("{p}.bn_expand.{v}"),
                &named,
                &format!("{p}.bn3.{v}"),
            );
            if u.projection {
                assert_same(
                    &conv,
                    &format!("{p}.bn_proj_shortcut.{v}"),
                    &named,
                    &format!("{p}.bn1.{v}"),
                );
            } else {
                assert_same(
                    &conv,
                    &format!("{p}.bn_reduce.{v}"),
                    &named,
                    &format!("{p}.bn1.{v}"),
                );
            }
        }
        if u.projection {
            assert_same(
                &conv,
                &format!("{p}.conv_proj.weight"),
                &named,
                &format!("{p}.downsample.weight"),
            );
        }
    }
    for n in [
        "conv1.weight",
        "bn1.running_var",
        "final_bn.weight",
        "fc.weight",
        "fc.bias",
    ] {
        assert_same(&conv, n, &named, n);
    }
    // The converted tensors are exactly the variables of the target network.
    conv.network().unwrap();
}

#[test]
fn with_sharing_the_unit_errors_are_the_collective_factorization_errors() {
    let src = config(None).to_spec().unwrap();
    let named = random_weights(&src, 2);
    let mut opts = ConvertOptions::new(2);
    opts.n_iter_max = 200;
    let conv = convert_weights(&src, copy_all(&named), "random", &opts, &|_, _| {}).unwrap();
    let reported: Vec<f64> = conv
        .groups
        .iter()
        .flat_map(|g| g.rel_errors.iter().copied())
        .collect();
    let errs = unit_errors(&src, &named, &conv);
    assert_eq!(reported.len(), errs.len());
    for (u, ((e, _), r)) in errs.iter().zip(&reported).enumerate() {
        assert!(
            (e - r).abs() < 1e-4 * r.max(1.0),
            "unit {u}: converted linear part has error {e}, gbtd reported {r}"
        );
        // Two independent random kernels do not share their input factors: the error is real.
        assert!(*r > 1e-3, "unit {u}: error {r} is suspiciously small");
    }
    // The target is the network `netgen emit` builds for the same flags with --share 2.
    let emitted = config(Some(2)).to_spec().unwrap();
    assert_eq!(conv.spec.stages, emitted.stages);
    assert_eq!(conv.spec.preact, emitted.preact);
    assert_eq!(conv.spec.separate_projection_bn, emitted.separate_projection_bn);
    assert_eq!(count(&conv.spec).unwrap().params, count(&emitted).unwrap().params);
    let (vs, _net) = conv.network().unwrap();
    assert_eq!(
        netgen::nn::trainable_param_count(&vs) as u64,
        count(&emitted).unwrap().params
    );
}

// The command line on a tiny data set ---------------------------------------------------------

fn netgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netgen"))
        .args(args)
        .output()
        .expect("run netgen")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "failed: {}", text(&o.stderr));
    serde_json::from_str(&text(&o.stdout)).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
}

/// Asserts a one-line error with exit code 2 that mentions `what`.
fn refused(o: &Output, what: &str) {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected a refusal, got {:?}: {err}",
        o.status
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(what), "'{what}' not in: {err}");
}

fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut v = vec![0u8, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    std::fs::write(path, v).unwrap();
}

/// A tiny learnable MNIST-layout data set (256 train, 64 test images of 28×28).
fn tiny_mnist(dir: &Path) {
    let mut state = 777u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for (prefix, n) in [("train", 256u32), ("t10k", 64)] {
        let mut images = Vec::with_capacity(n as usize * 784);
        let mut labels = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = (rnd() % 10) as usize;
            labels.push(k as u8);
            for _ in 0..784 {
                images.push((20 * k as u32 + rnd() % 60) as u8);
            }
        }
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            &[n, 28, 28],
            &images,
        );
        write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &[n], &labels);
    }
}

const ARCH: [&str; 13] = [
    "--R",
    "2",
    "--rank",
    "2",
    "--depth",
    "2,2",
    "--widths",
    "8,16",
    "--stem-width",
    "6",
    "--first-stride",
    "2",
    "--preact",
];

const RUN: [&str; 10] = [
    "--batch-size",
    "32",
    "--threads",
    "1",
    "--workers",
    "1",
    "--device",
    "cpu",
    "--quiet",
    "--json",
];

#[test]
fn cli_converts_a_run_that_eval_and_resume_accept_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data_dir = root.join("mnist");
    std::fs::create_dir_all(&data_dir).unwrap();
    tiny_mnist(&data_dir);
    let data = format!("mnist:{}", data_dir.display());
    let rx = root.join("rx").display().to_string();
    let mut train = vec![
        "train",
        "--data",
        &data,
        "--max-steps",
        "3",
        "--no-augment",
        "--out",
        &rx,
    ];
    train.extend(ARCH);
    train.extend(RUN);
    json(&netgen(&train));

    // Convert with re-estimated BN statistics; the report matches `netgen emit`'s count.
    let cru = root.join("cru").display().to_string();
    let rep = json(&netgen(&[
        "convert",
        "--run",
        &rx,
        "--share",
        "2",
        "--out",
        &cru,
        "--calib-batches",
        "2",
        "--threads",
        "1",
        "--json",
    ]));
    let mut emit = vec![
        "emit",
        "--input",
        "28",
        "--in-channels",
        "1",
        "--share",
        "2",
        "--json",
    ];
    emit.extend(ARCH);
    let emitted = json(&netgen(&emit));
    assert_eq!(rep["params"], emitted["params"], "{rep}");
    assert_eq!(rep["groups"].as_array().map(Vec::len), Some(2));
    for f in [
        "spec.json",
        "config.json",
        "best.safetensors",
        "last.safetensors",
        "state.safetensors",
        "conversion.json",
    ] {
        assert!(root.join("cru").join(f).is_file(), "{f} missing");
    }
    let names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("convert-tmp")), "{names:?}");

    // It evaluates, and fine-tunes for two steps.
    let ev = json(&netgen(&[
        "eval",
        "--run",
        &cru,
        "--threads",
        "1",
        "--device",
        "cpu",
        "--json",
    ]));
    assert!(ev["top1"].as_f64().is_some(), "{ev}");
    let mut resume = vec!["train", "--resume", &cru, "--max-steps", "2"];
    resume.extend(&RUN[2..]);
    let ft = json(&netgen(&resume));
    assert_eq!(ft["steps"], 2, "{ft}");

    // --bn carry reads no data.
    let carry = root.join("carry").display().to_string();
    let rep = json(&netgen(&[
        "convert", "--run", &rx, "--share", "1", "--out", &carry, "--bn", "carry", "--quiet", "--json",
    ]));
    assert_eq!(rep["groups"].as_array().map(Vec::len), Some(4));

    // Refusals: nothing is written.
    let out = root.join("refused").display().to_string();
    let no_out = || {
        assert!(
            !root.join("refused").exists(),
            "a refused conversion wrote its output"
        )
    };
    refused(
        &netgen(&["convert", "--run", &rx, "--share", "3", "--out", &out]),
        "larger than every stage",
    );
    no_out();
    refused(
        &netgen(&["convert", "--run", &rx, "--share", "2", "--out", &cru]),
        "not empty",
    );
    let nowhere = root.join("nowhere").display().to_string();
    refused(
        &netgen(&["convert", "--run", &nowhere, "--share", "2", "--out", &out]),
        "no such run directory",
    );
    no_out();
    // A run directory whose checkpoints are missing, then unreadable.
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["spec.json", "config.json"] {
        std::fs::copy(root.join("rx").join(f), broken.join(f)).unwrap();
    }
    let b = broken.display().to_string();
    refused(
        &netgen(&["convert", "--run", &b, "--share", "2", "--out", &out]),
        "best.safetensors",
    );
    std::fs::write(broken.join("best.safetensors"), b"not a safetensors file").unwrap();
    refused(
        &netgen(&["convert", "--run", &b, "--share", "2", "--out", &out]),
        "best.safetensors",
    );
    no_out();
    // A ResNet, and a post-activation ResNeXt.
    let resnet = GbtdConfig { r: 1, ..config(None) }.to_spec().unwrap();
    let postact = GbtdConfig {
        preact: false,
        ..config(None)
    }
    .to_spec()
    .unwrap();
    for (spec, what) in [(resnet, "ResNet"), (postact, "post-activation")] {
        std::fs::write(broken.join("spec.json"), spec.to_json_pretty().unwrap()).unwrap();
        refused(
            &netgen(&["convert", "--run", &b, "--share", "2", "--out", &out]),
            what,
        );
        no_out();
    }
}
