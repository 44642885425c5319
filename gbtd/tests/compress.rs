//! `gbtd compress` end to end.
//!
//! - On a small safetensors model written here (no Python): every report row's parameter and
//!   multiply-add counts recomputed from the shapes and ranks, every chain's kernel rebuilt here
//!   by plain loops and its error against the original recomputed, the tensors that must be
//!   copied compared byte for byte, the skip reasons of a depthwise kernel, a 2-D fc weight and an
//!   integer buffer, for Tucker-2, BTD and CP; and every bad input answered by one `error:` line,
//!   a non-zero exit and no output file.
//! - The acceptance run against PyTorch (peers; skipped without `.venv`, a failure in CI): a
//!   torchvision ResNet-50 (random init, fixed seed) saved by `torch.save` in both the zip and the
//!   legacy format, compressed with `--method tucker2 --rank-rule energy:0.9`; a Python script
//!   rebuilds the replaced modules from the metadata (the README's loader), loads the checkpoint
//!   with `strict=True`, runs each replaced conv and its chain on the same random input, and runs
//!   the whole model forward; `gbtd verify` on the legacy run agrees layer by layer (kernel errors
//!   equal to the reported ones, output errors within 15% of PyTorch's).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn gbtd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gbtd"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run gbtd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok_json(o: &Output) -> Value {
    assert!(o.status.success(), "gbtd failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("one JSON object on stdout")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn uint(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| uint(x) as usize).collect()
}

/// Deterministic pseudo-random values in [-1, 1) (a small LCG; any values serve).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

struct Fixture {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()
}

/// The small model: a conv with bias, an f64 1×1 conv, an f16 conv, a depthwise kernel, an fc
/// layer, a BatchNorm's integer counter.
fn small_model() -> BTreeMap<String, Fixture> {
    let mut m = BTreeMap::new();
    let mut add = |name: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>| {
        m.insert(
            name.to_string(),
            Fixture {
                dtype,
                shape: shape.to_vec(),
                bytes,
            },
        );
    };
    let n = |s: &[usize]| s.iter().product::<usize>();
    add(
        "a.weight",
        Dtype::F32,
        &[8, 6, 3, 3],
        f32_bytes(&values(n(&[8, 6, 3, 3]), 1)),
    );
    add("a.bias", Dtype::F32, &[8], f32_bytes(&values(8, 2)));
    add(
        "b.weight",
        Dtype::F64,
        &[16, 8, 1, 1],
        values(128, 3).iter().flat_map(|x| x.to_le_bytes()).collect(),
    );
    add(
        "h.weight",
        Dtype::F16,
        &[12, 10, 3, 3],
        values(1080, 4)
            .iter()
            .flat_map(|&x| half::f16::from_f64(x).to_le_bytes())
            .collect(),
    );
    add("dw.weight", Dtype::F32, &[6, 1, 3, 3], f32_bytes(&values(54, 5)));
    add("fc.weight", Dtype::F32, &[10, 8], f32_bytes(&values(80, 6)));
    add("fc.bias", Dtype::F32, &[10], f32_bytes(&values(10, 7)));
    add(
        "bn.num_batches_tracked",
        Dtype::I64,
        &[],
        17i64.to_le_bytes().to_vec(),
    );
    m
}

fn write_model(path: &Path, m: &BTreeMap<String, Fixture>) {
    let views: Vec<(String, TensorView<'_>)> = m
        .iter()
        .map(|(k, f)| {
            (
                k.clone(),
                TensorView::new(f.dtype, f.shape.clone(), &f.bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A tensor's values as f64 (F16, F32, F64).
fn as_f64(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        d => panic!("not a float dtype: {d:?}"),
    }
}

/// The kernel `(out, in, kh, kw)` that the chain computes, by plain loops over the groups:
/// `W[o, i, a, b] = Σ_r Σ_q Σ_p E[o, r·ro + q] · G[r·ro + q, p, a, b] · A[r·ri + p, i]`.
fn chain_kernel(a: &[f64], g: &[f64], e: &[f64], shape: [usize; 4], r: usize) -> Vec<f64> {
    let [out, inp, kh, kw] = shape;
    let ri = a.len() / inp / r;
    let ro = e.len() / out / r;
    let mut w = vec![0.0; out * inp * kh * kw];
    for o in 0..out {
        for i in 0..inp {
            for y in 0..kh {
                for x in 0..kw {
                    let mut acc = 0.0;
                    for t in 0..r {
                        for q in 0..ro {
                            for p in 0..ri {
                                acc += e[o * r * ro + t * ro + q]
                                    * g[(((t * ro + q) * ri + p) * kh + y) * kw + x]
                                    * a[(t * ri + p) * inp + i];
                            }
                        }
                    }
                    w[((o * inp + i) * kh + y) * kw + x] = acc;
                }
            }
        }
    }
    w
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = a.iter().map(|x| x * x).sum();
    (d / n).sqrt()
}

/// `(R, r_out, r_in)` of a report row, from the method and ranks.
fn chain_dims(method: &str, terms: usize, ranks: &[usize]) -> (usize, usize, usize) {
    match method {
        "cp" => (ranks[0], 1, 1),
        "btd" => (terms, ranks[0], ranks[1]),
        _ => (1, ranks[0], ranks[1]),
    }
}

/// Checks the report rows, the written tensors and the metadata of one run on the small model.
fn check_small_run(method: &str, terms: usize, extra: &[&str], want_ranks: &[usize], tag: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = small_model();
    let input = d.join("m.safetensors");
    write_model(&input, &model);
    let out = d.join(format!("{tag}.safetensors"));
    let csv = d.join(format!("{tag}.csv"));
    // Positions per sample as a forward pass would record them: `a` has stride 2 on a 10×10
    // input (10·10 in, 5·5 out), the others stride 1.
    let positions = |name: &str| -> (u64, u64) {
        match name {
            "a" => (100, 25),
            _ => (100, 100),
        }
    };
    let info = d.join("info.json");
    std::fs::write(
        &info,
        r#"{"format": "gbtd.layer_info", "version": 1, "layers": {
            "a": {"groups": 1, "input_positions": 100, "output_positions": 25},
            "b": {"input_positions": 100, "output_positions": 100},
            "h": {"input_positions": 100, "output_positions": 100}}}"#,
    )
    .unwrap();
    let mut args = vec![
        "compress",
        s(&input),
        "--method",
        method,
        "--out",
        s(&out),
        "--report",
        s(&csv),
        "--json",
        "--layer-info",
        s(&info),
        "--max-iter",
        "20",
    ];
    args.extend_from_slice(extra);
    let report = ok_json(&gbtd(&args));
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let meta: Value = {
        let (_, m) = SafeTensors::read_metadata(&bytes).unwrap();
        serde_json::from_str(&m.metadata().as_ref().unwrap()["gbtd.compress"]).unwrap()
    };
    assert_eq!(meta["format"], "gbtd.compress");
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["method"], method);
    assert_eq!(
        meta["layers"], report["layers"],
        "--json prints the file's description"
    );

    // Rows: a (bias, f32), b (f64), h (f16), in file (name) order.
    let layers = report["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "h"], "{tag}");
    let mut before_total = 0;
    let mut after_total = 0;
    for l in layers {
        let name = l["name"].as_str().unwrap();
        let shape = usizes(&l["shape"]);
        let ranks = usizes(&l["ranks"]);
        assert_eq!(ranks, want_ranks, "{tag} {name}");
        let (r, ro, ri) = chain_dims(method, terms, &ranks);
        let [o, i, kh, kw] = [shape[0], shape[1], shape[2], shape[3]];
        let before = (o * i * kh * kw) as u64;
        let after = (r * ri * i + r * ro * ri * kh * kw + o * r * ro) as u64;
        assert_eq!(uint(&l["params_before"]), before, "{tag} {name}");
        assert_eq!(uint(&l["params_after"]), after, "{tag} {name}");
        // The 1×1 reduce conv runs at the input positions, the other two at the output ones.
        let (pin, pout) = positions(name);
        let reduce = (r * ri * i) as u64;
        assert_eq!(uint(&l["macs_before"]), before * pout, "{tag} {name}");
        assert_eq!(
            uint(&l["macs_after"]),
            reduce * pin + (after - reduce) * pout,
            "{tag} {name}"
        );
        assert_eq!(uint(&l["groups"]) as usize, r);
        assert_eq!(uint(&l["conv_groups"]), 1);
        before_total += before;
        after_total += after;
        // The written chain: shapes of the table, the dtype rule, and the kernel it computes.
        let w0 = st.tensor(&format!("{name}.0.weight")).unwrap();
        let w1 = st.tensor(&format!("{name}.1.weight")).unwrap();
        let w2 = st.tensor(&format!("{name}.2.weight")).unwrap();
        assert_eq!(w0.shape(), [r * ri, i, 1, 1], "{tag} {name}");
        assert_eq!(w1.shape(), [r * ro, ri, kh, kw], "{tag} {name}");
        assert_eq!(w2.shape(), [o, r * ro, 1, 1], "{tag} {name}");
        let want_dtype = if name == "b" { Dtype::F64 } else { Dtype::F32 };
        for w in [&w0, &w1, &w2] {
            assert_eq!(w.dtype(), want_dtype, "{tag} {name}");
        }
        let chain = &l["chain"];
        for (k, w) in [&w0, &w1, &w2].into_iter().enumerate() {
            let c = &chain[k];
            assert_eq!(c["weight"], format!("{name}.{k}.weight"));
            assert_eq!(uint(&c["out_channels"]) as usize, w.shape()[0]);
            assert_eq!(
                uint(&c["in_channels"]) as usize,
                w.shape()[1] * uint(&c["groups"]) as usize
            );
        }
        assert!(chain[1]["stride"].is_null() && chain[1]["padding"].is_null());
        assert_eq!(chain[0]["stride"], serde_json::json!([1, 1]));
        let orig = &model[&format!("{name}.weight")];
        let wref = as_f64(orig.dtype, &orig.bytes);
        let wc = chain_kernel(
            &as_f64(w0.dtype(), w0.data()),
            &as_f64(w1.dtype(), w1.data()),
            &as_f64(w2.dtype(), w2.data()),
            [o, i, kh, kw],
            r,
        );
        let err = rel(&wref, &wc);
        let reported = l["relative_error"].as_f64().unwrap();
        assert!(
            (err - reported).abs() <= 1e-5 * reported.max(1e-3),
            "{tag} {name}: error {err} recomputed, {reported} reported"
        );
        assert!(
            err < 1.0,
            "{tag} {name}: the chain must approximate the kernel ({err})"
        );
        assert!(
            st.tensor(&format!("{name}.weight")).is_err(),
            "{name}.weight replaced"
        );
    }
    let totals = &report["totals"];
    assert_eq!(uint(&totals["params_before"]), before_total);
    assert_eq!(uint(&totals["params_after"]), after_total);
    let model_before: u64 = model
        .iter()
        .filter(|(_, f)| f.dtype != Dtype::I64)
        .map(|(_, f)| f.shape.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(uint(&totals["model_params_before"]), model_before);
    assert_eq!(
        uint(&totals["model_params_after"]),
        model_before - before_total + after_total
    );

    // The bias moved, everything else copied byte for byte with its dtype.
    let bias = st.tensor("a.2.bias").unwrap();
    assert_eq!(
        (bias.dtype(), bias.data()),
        (Dtype::F32, &model["a.bias"].bytes[..])
    );
    assert!(st.tensor("a.bias").is_err());
    for name in ["dw.weight", "fc.weight", "fc.bias", "bn.num_batches_tracked"] {
        let t = st.tensor(name).unwrap();
        let f = &model[name];
        assert_eq!(
            (t.dtype(), t.shape(), t.data()),
            (f.dtype, &f.shape[..], &f.bytes[..]),
            "{name}"
        );
    }
    assert_eq!(st.len(), model.len() - 3 + 9, "3 kernels become 9 tensors");

    // Skip reasons.
    let skipped: BTreeMap<&str, &str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["tensor"].as_str().unwrap(), k["reason"].as_str().unwrap()))
        .collect();
    assert!(skipped["dw.weight"].contains("depthwise"), "{skipped:?}");
    assert!(skipped["fc.weight"].contains("linear layers"), "{skipped:?}");
    assert!(
        skipped["bn.num_batches_tracked"].contains("not floating point"),
        "{skipped:?}"
    );

    // The CSV report: a header, one row per compressed layer and per skipped tensor.
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("name,tensor,status,shape,"));
    assert_eq!(lines.len(), 1 + 3 + skipped.len());
    assert!(
        lines[1].starts_with("a,a.weight,compressed,8x6x3x3,"),
        "{}",
        lines[1]
    );
}

#[test]
fn tucker2_report_rows_chains_and_skips() {
    check_small_run("tucker2", 1, &["--rank-rule", "fixed:3,2"], &[3, 2], "t2");
}

#[test]
fn btd_report_rows_chains_and_skips() {
    check_small_run(
        "btd",
        2,
        &["--terms", "2", "--rank-rule", "fixed:2,1"],
        &[2, 1],
        "btd",
    );
}

#[test]
fn cp_report_rows_chains_and_skips() {
    check_small_run("cp", 4, &["--rank-rule", "fixed:4"], &[4], "cp");
}

#[test]
fn overrides_skip_a_layer_and_fix_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("m.safetensors");
    write_model(&input, &small_model());
    let overrides = d.join("ranks.json");
    std::fs::write(&overrides, r#"{"b": "skip", "h": "fixed:1,1"}"#).unwrap();
    let out = d.join("o.safetensors");
    let report = ok_json(&gbtd(&[
        "compress",
        s(&input),
        "--method",
        "tucker2",
        "--rank-rule",
        "fixed:3,2",
        "--overrides",
        s(&overrides),
        "--out",
        s(&out),
        "--json",
    ]));
    let ranks: BTreeMap<&str, Vec<usize>> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), usizes(&l["ranks"])))
        .collect();
    assert_eq!(ranks, BTreeMap::from([("a", vec![3, 2]), ("h", vec![1, 1])]));
    let b = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tensor"] == "b.weight")
        .expect("b skipped");
    assert!(b["reason"].as_str().unwrap().contains("overrides"), "{b}");
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("b.weight").unwrap().data(),
        &small_model()["b.weight"].bytes[..]
    );
}

/// Runs a failing command: non-zero exit, one `error:` line naming `needle`, no output file.
fn expect_failure(args: &[&str], out: &Path, needle: &str, code: i32) {
    let o = gbtd(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line expected, got {err}");
    assert!(
        err.starts_with("error:") && err.contains(needle),
        "{args:?}: {err}"
    );
    assert!(!out.exists(), "{args:?}: no output file");
    let dir = out.parent().filter(|d| d.is_dir());
    if let Some(d) = dir {
        for e in std::fs::read_dir(d).unwrap() {
            let n = e.unwrap().file_name();
            assert!(
                !n.to_string_lossy().ends_with(".part"),
                "{args:?}: temporary file left"
            );
        }
    }
}

#[test]
fn bad_input_fails_with_one_line_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("m.safetensors");
    write_model(&input, &small_model());
    let out = d.join("o.safetensors");
    let base = |model: &Path, rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["compress", s(model), "--method", "tucker2", "--out", s(&out)]
            .map(String::from)
            .to_vec();
        v.extend(rest.iter().map(|x| x.to_string()));
        v
    };
    let run = |args: Vec<String>, needle: &str, code: i32| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_failure(&a, &out, needle, code);
    };
    run(
        base(&d.join("missing.pth"), &["--rank-rule", "fixed:2,2"]),
        "missing.pth",
        1,
    );
    let bytes = std::fs::read(&input).unwrap();
    let cut = d.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    run(base(&cut, &["--rank-rule", "fixed:2,2"]), "cut.safetensors", 1);
    run(
        base(&input, &["--rank-rule", "fixed:2,2", "--layers", "^nothing"]),
        "no conv kernel",
        1,
    );
    run(
        base(&input, &["--rank-rule", "fixed:2,2", "--layers", "("]),
        "--layers",
        2,
    );
    run(base(&input, &["--rank-rule", "energy:2"]), "--rank-rule", 2);
    run(
        base(&input, &["--rank-rule", "fixed:2,2", "--terms", "2"]),
        "--terms",
        1,
    );
    // fixed ranks for the wrong method: tucker2 needs two.
    run(base(&input, &["--rank-rule", "fixed:2"]), "rank", 1);
    // A rule under which no layer pays: nothing written.
    run(
        base(&input, &["--rank-rule", "ratio:1000000"]),
        "nothing to compress",
        1,
    );
    let missing_dir = d.join("no/such/dir/o.safetensors");
    expect_failure(
        &[
            "compress",
            s(&input),
            "--method",
            "tucker2",
            "--rank-rule",
            "fixed:2,2",
            "--out",
            s(&missing_dir),
        ],
        &missing_dir,
        "does not exist",
        1,
    );
    run(
        base(
            &input,
            &["--rank-rule", "fixed:2,2", "--report", s(&d.join("r.txt"))],
        ),
        "--report",
        1,
    );
    let npy_out = d.join("o.npy");
    expect_failure(
        &[
            "compress",
            s(&input),
            "--method",
            "tucker2",
            "--rank-rule",
            "fixed:2,2",
            "--out",
            s(&npy_out),
        ],
        &npy_out,
        ".safetensors",
        1,
    );
}

/// Writes `r50_zip.pth` and `r50_legacy.pth` (torchvision ResNet-50, random init, seed 0) into
/// `argv[1]`.
const RESNET50: &str = r#"
import sys, os, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.resnet50(weights=None)
torch.save(m.state_dict(), os.path.join(sys.argv[1], "r50_zip.pth"))
torch.save(m.state_dict(), os.path.join(sys.argv[1], "r50_legacy.pth"), _use_new_zipfile_serialization=False)
"#;

/// `argv`: original checkpoint, compressed file, regex of the layers to compare. Loads the
/// compressed file into a fresh ResNet-50 with the README's loader (strict), then for each
/// matching layer: the original conv and the chain on one random input `(4, in, 28, 28)` in
/// float64, the chain's kernel rebuilt by einsum, the energy ranks from numpy's SVD of the
/// unfoldings; then the whole model forward.
const CHECK: &str = r#"
import sys, json, re, numpy as np, torch, torchvision
import torch.nn as nn, torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

def load_compressed(model, path):
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["gbtd.compress"])
    for layer in meta["layers"]:
        parent, _, attr = layer["name"].rpartition(".")
        owner = model.get_submodule(parent)
        old = getattr(owner, attr)
        c0, c1, c2 = layer["chain"]
        setattr(owner, attr, nn.Sequential(
            nn.Conv2d(c0["in_channels"], c0["out_channels"], 1, bias=False),
            nn.Conv2d(c1["in_channels"], c1["out_channels"], c1["kernel_size"], stride=old.stride,
                      padding=old.padding, dilation=old.dilation, groups=c1["groups"], bias=False),
            nn.Conv2d(c2["in_channels"], c2["out_channels"], 1, bias=old.bias is not None)))
    model.load_state_dict(load_file(path), strict=True)
    return model, meta

def energy_rank(m, f):
    s2 = np.linalg.svd(m, compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s2) / s2.sum(), f - 1e-12) + 1)

orig_path, out_path, pattern = sys.argv[1:4]
orig = torchvision.models.resnet50(weights=None)
orig.load_state_dict(torch.load(orig_path, weights_only=True))
new, meta = load_compressed(torchvision.models.resnet50(weights=None), out_path)
orig.eval(); new.eval()
g = torch.Generator().manual_seed(1)
rows = []
with torch.no_grad():
    for layer in meta["layers"]:
        if not re.search(pattern, layer["name"]):
            continue
        old = orig.get_submodule(layer["name"])
        seq = new.get_submodule(layer["name"]).double()
        W = old.weight.double()
        x = torch.randn(4, old.in_channels, 28, 28, generator=g, dtype=torch.float64)
        conv = lambda w: F.conv2d(x, w, None, old.stride, old.padding, old.dilation)
        y = conv(W)
        y_chain = seq(x)
        R = seq[1].groups
        A = seq[0].weight[:, :, 0, 0]
        G = seq[1].weight
        B = seq[2].weight[:, :, 0, 0]
        ri, ro = A.shape[0] // R, G.shape[0] // R
        Wc = sum(torch.einsum("oq,qpab,pi->oiab", B[:, r*ro:(r+1)*ro], G[r*ro:(r+1)*ro], A[r*ri:(r+1)*ri])
                 for r in range(R))
        Wn = W.numpy()
        rows.append({"name": layer["name"],
                     "kernel_error": float((W - Wc).norm() / W.norm()),
                     "output_error": float((y - y_chain).norm() / y.norm()),
                     "chain_vs_kernel": float((y_chain - conv(Wc)).norm() / conv(Wc).norm()),
                     "energy_ranks": [energy_rank(Wn.reshape(Wn.shape[0], -1), 0.9),
                                      energy_rank(Wn.transpose(1, 0, 2, 3).reshape(Wn.shape[1], -1), 0.9)]})
    z = new.float()(torch.randn(2, 3, 64, 64, generator=g))
# Every tensor that was not replaced is in the file unchanged, dtype included (int64 buffers too).
sd, written = orig.state_dict(), load_file(out_path)
kept = [k for k in sd if k in written]
same = all(written[k].dtype == sd[k].dtype and torch.equal(written[k], sd[k]) for k in kept)
print(json.dumps({"layers": rows, "forward_shape": list(z.shape),
                  "forward_finite": bool(torch.isfinite(z).all()),
                  "state_dict": len(sd), "kept": len(kept), "kept_equal": same}))
"#;

/// Checks one compressed ResNet-50 against PyTorch; returns the layers compared with PyTorch's
/// relative output error of each.
fn check_against_torch(orig: &Path, out: &Path, report: &Value, pattern: &str) -> Vec<(String, f64)> {
    let text = peers::run_python(CHECK, &[s(orig), s(out), pattern])
        .unwrap_or_else(|e| panic!("python check failed: {e}"));
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["forward_shape"], serde_json::json!([2, 1000]));
    assert_eq!(v["forward_finite"], true);
    assert_eq!(v["kept_equal"], true);
    let n_layers = report["layers"].as_array().unwrap().len() as u64;
    assert_eq!(
        uint(&v["kept"]),
        uint(&v["state_dict"]) - n_layers,
        "all but the replaced weights kept"
    );
    let by_name: BTreeMap<&str, &Value> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l))
        .collect();
    let mut seen = Vec::new();
    for row in v["layers"].as_array().unwrap() {
        let name = row["name"].as_str().unwrap();
        let l = by_name[name];
        let reported = l["relative_error"].as_f64().unwrap();
        let kernel = row["kernel_error"].as_f64().unwrap();
        let output = row["output_error"].as_f64().unwrap();
        // The chain is the conv with the rebuilt kernel (a linear identity; float64 here).
        assert!(row["chain_vs_kernel"].as_f64().unwrap() <= 1e-4, "{name}: {row}");
        // The reported error is the error of the written chain's kernel (f32 weights).
        assert!(
            (kernel / reported - 1.0).abs() <= 1e-4,
            "{name}: {kernel} vs {reported}"
        );
        // For i.i.d. Gaussian input E‖conv(W − W_c, x)‖² / E‖conv(W, x)‖² = ‖W − W_c‖²/‖W‖²
        // (cross terms vanish); with 4·out·28·28 outputs and zero-padded borders the ratio of
        // the measured errors stays well inside [0.8, 1.25].
        let ratio = output / reported;
        assert!(
            (0.8..=1.25).contains(&ratio),
            "{name}: output error {output}, kernel error {reported}"
        );
        // energy:0.9 keeps, per mode, the smallest rank with 90% of the unfolding's energy.
        assert_eq!(usizes(&l["ranks"]), usizes(&row["energy_ranks"]), "{name}");
        seen.push((name.to_string(), output));
    }
    seen
}

#[test]
fn resnet50_tucker2_energy_in_both_checkpoint_formats_matches_pytorch() {
    if !peers::available("resnet50_tucker2_energy_in_both_checkpoint_formats_matches_pytorch") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    peers::run_python(RESNET50, &[s(d)]).unwrap_or_else(|e| panic!("fixture: {e}"));
    let zip = d.join("r50_zip.pth");
    let legacy = d.join("r50_legacy.pth");
    let run = |input: &PathBuf, out: &Path, extra: &[&str]| -> Value {
        let mut args = vec![
            "compress",
            s(input),
            "--method",
            "tucker2",
            "--rank-rule",
            "energy:0.9",
            "--out",
            s(out),
            "--json",
            // A few HOOI sweeps keep the test short; the error reported is the written chain's.
            "--max-iter",
            "2",
        ];
        args.extend_from_slice(extra);
        ok_json(&gbtd(&args))
    };
    // The whole model from the zip checkpoint.
    let full = d.join("full.safetensors");
    let report = run(&zip, &full, &[]);
    let layers = report["layers"].as_array().unwrap();
    let kernels = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["shape"].as_array().unwrap().len() == 4)
        .count();
    assert_eq!(
        layers.len() + kernels,
        53,
        "ResNet-50 has 53 convs, each compressed or skipped"
    );
    assert!(
        layers.len() >= 16,
        "every 3×3 conv pays at energy 0.9: {}",
        layers.len()
    );
    let compared = check_against_torch(&zip, &full, &report, r"^(conv1|layer1\.)");
    assert!(compared.len() >= 3, "{compared:?}");

    // The legacy format, a subset of layers: the same ranks and errors as from the zip file.
    let part = d.join("layer2.safetensors");
    let sub = run(&legacy, &part, &["--layers", r"^layer2\.", "--quiet"]);
    let compared = check_against_torch(&legacy, &part, &sub, "");
    assert_eq!(compared.len(), 4, "layer2's four 3×3 convs: {compared:?}");

    // `gbtd verify` on the same files: every layer agrees, its kernel errors are the reported
    // ones, and its output errors (gbtd's own im2col convolution on another random input)
    // estimate the same quantity as PyTorch's output errors above: for Gaussian input both
    // have the kernel error as their expectation, with a spread of a few percent at these sizes.
    let v = ok_json(&gbtd(&["verify", s(&legacy), s(&part), "--json", "--quiet"]));
    assert_eq!(v["all_agree"], true, "{v}");
    assert_eq!(v["passed"], true, "{v}");
    let verified = v["layers"].as_array().unwrap();
    assert_eq!(verified.len(), 4, "{v}");
    for (name, torch_output) in &compared {
        let row = verified
            .iter()
            .find(|l| l["name"] == name.as_str())
            .unwrap_or_else(|| panic!("verify lists {name}: {v}"));
        let reported = sub["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name.as_str())
            .unwrap()["relative_error"]
            .as_f64()
            .unwrap();
        let kernel = row["kernel_error"].as_f64().unwrap();
        assert!(
            (kernel / reported - 1.0).abs() <= 1e-4,
            "{name}: {kernel} vs {reported}"
        );
        let output = row["output_error"].as_f64().unwrap();
        assert!(
            (output / torch_output - 1.0).abs() <= 0.15,
            "{name}: gbtd verify output error {output}, PyTorch {torch_output}"
        );
    }
    for l in sub["layers"].as_array().unwrap() {
        let same = layers.iter().find(|f| f["name"] == l["name"]).unwrap();
        assert_eq!(l["ranks"], same["ranks"]);
        let (a, b) = (
            l["relative_error"].as_f64().unwrap(),
            same["relative_error"].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 1e-6 * b, "{}: {a} vs {b}", l["name"]);
    }

    // A truncated checkpoint: one error line, no output.
    let bytes = std::fs::read(&legacy).unwrap();
    let cut = d.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = d.join("cut.safetensors");
    expect_failure(
        &[
            "compress",
            s(&cut),
            "--method",
            "tucker2",
            "--rank-rule",
            "energy:0.9",
            "--out",
            s(&out),
        ],
        &out,
        "cut.pth",
        1,
    );
}
