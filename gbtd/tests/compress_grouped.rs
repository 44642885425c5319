//! `gbtd compress` on grouped convolutions and linear layers, against PyTorch (peers; skipped
//! without `.venv`, a failure in CI).
//!
//! - torchvision's `resnext50_32x4d` as a bare state dict: the 32-group 3×3 kernels `(128, 4, 3,
//!   3)` are recognised as grouped from the preceding normalization layer (128 channels), each group
//!   is decomposed, and the written chain reads the 128 channels the layer receives. PyTorch loads
//!   the file into a fresh ResNeXt-50 with `strict=True` (gbtd.torch.load_compressed) and runs it;
//!   each grouped chain's output on Gaussian input matches its kernel error within 15%, computed in
//!   PyTorch; `gbtd verify` agrees on every layer.
//! - torchvision's `mobilenet_v2` with `--layer-info` (written by gbtd.torch.layer_info from a
//!   forward pass) and `--linear`: depthwise kernels are skipped, the classifier becomes two linear
//!   layers, and the multiply-adds of every compressed layer equal those PyTorch's module
//!   attributes give at the recorded sizes.
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn gbtd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gbtd"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run gbtd")
}

fn ok_json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "gbtd failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON object on stdout")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `argv[1]/m.pth` (torchvision `argv[2]`, random init, seed 0, 10 classes) and
/// `argv[1]/info.json` (its layer info for a 64×64 input).
const MODEL: &str = r#"
import sys, os, torch, torchvision, gbtd.torch as gt
torch.manual_seed(0)
m = getattr(torchvision.models, sys.argv[2])(num_classes=10).eval()
torch.save(m.state_dict(), os.path.join(sys.argv[1], "m.pth"))
gt.layer_info(m, torch.randn(1, 3, 64, 64), os.path.join(sys.argv[1], "info.json"))
"#;

/// `argv`: directory, architecture, compressed file. Loads the compressed file into a fresh
/// model (strict), runs it, and prints per compressed layer: name, PyTorch's output error of the
/// chain against the original conv on Gaussian input (biases left out), and the multiply-adds of
/// the original and of the chain at the sizes recorded in info.json, from the modules' attributes.
const CHECK: &str = r#"
import sys, os, json, torch, torchvision, gbtd.torch as gt
import torch.nn as nn, torch.nn.functional as F
d, arch, path = sys.argv[1:4]
torch.manual_seed(0)
orig = getattr(torchvision.models, arch)(num_classes=10).eval()
orig.load_state_dict(torch.load(os.path.join(d, "m.pth"), weights_only=True))
new = gt.load_compressed(getattr(torchvision.models, arch)(num_classes=10).eval(), path, strict=True)
info = json.load(open(os.path.join(d, "info.json")))["layers"]
meta = json.loads(gt._gbtd.read_metadata(path)["gbtd.compress"])
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    y = new(torch.randn(2, 3, 64, 64, generator=g))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    for layer in meta["layers"]:
        name = layer["name"]
        old, seq = orig.get_submodule(name).double(), new.get_submodule(name).double()
        sizes = info[name]
        if isinstance(old, nn.Conv2d):
            x = torch.randn(2, old.in_channels, 32, 32, generator=g, dtype=torch.float64)
            ref = F.conv2d(x, old.weight, None, 1, old.padding, old.dilation, old.groups)
            h = x
            for c in seq:
                h = F.conv2d(h, c.weight, None, 1, c.padding, c.dilation, c.groups)
            per = lambda c: c.weight.numel()
            macs_before = per(old) * sizes["output_positions"]
            macs_after = per(seq[0]) * sizes["input_positions"] + (per(seq[1]) + per(seq[2])) * sizes["output_positions"]
        else:
            x = torch.randn(256, old.in_features, generator=g, dtype=torch.float64)
            ref = F.linear(x, old.weight)
            h = F.linear(F.linear(x, seq[0].weight), seq[1].weight)
            macs_before = old.weight.numel() * sizes["output_positions"]
            macs_after = (seq[0].weight.numel() + seq[1].weight.numel()) * sizes["output_positions"]
        err = float((ref - h).norm() / ref.norm())
        print(json.dumps({"name": name, "output_error": err, "macs_before": macs_before, "macs_after": macs_after}))
"#;

/// Compresses `arch` with `extra` flags and returns the report, the output path and PyTorch's
/// per-layer figures.
fn run(arch: &str, dir: &Path, extra: &[&str]) -> Option<(Value, std::path::PathBuf, Vec<Value>)> {
    if !peers::available(&format!("compress_grouped {arch}")) {
        return None;
    }
    peers::run_python(MODEL, &[s(dir), arch]).unwrap_or_else(|e| panic!("fixture: {e}"));
    let model = dir.join("m.pth");
    let out = dir.join("c.safetensors");
    let mut args = vec![
        "compress",
        s(&model),
        "--out",
        s(&out),
        "--json",
        "--max-iter",
        "10",
    ];
    args.extend_from_slice(extra);
    let report = ok_json(&gbtd(&args));
    let text = peers::run_python(CHECK, &[s(dir), arch, s(&out)]).unwrap_or_else(|e| panic!("check: {e}"));
    let rows = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    Some((report, out, rows))
}

#[test]
fn resnext50_grouped_kernels_become_chains_that_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some((report, out, rows)) = run(
        "resnext50_32x4d",
        d,
        &[
            "--method",
            "tucker2",
            "--rank-rule",
            "energy:0.8",
            "--layers",
            r"^layer1\.0\.",
        ],
    ) else {
        return;
    };
    let layers = report["layers"].as_array().unwrap();
    let conv2 = layers
        .iter()
        .find(|l| l["name"] == "layer1.0.conv2")
        .expect("layer1.0.conv2 compressed");
    assert_eq!(conv2["conv_groups"], 32, "{conv2}");
    assert_eq!(
        conv2["chain"][0]["in_channels"], 128,
        "the chain reads all 128 channels"
    );
    assert_eq!(conv2["chain"][0]["groups"], 32);
    let inferred: Vec<&str> = report["inferred_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(inferred, ["layer1.0.conv2"]);
    // Without sizes, no multiply-adds are claimed.
    assert!(conv2["macs_before"].is_null() && report["totals"]["macs_before"].is_null());
    for (l, r) in layers.iter().zip(&rows) {
        assert_eq!(l["name"], r["name"]);
        let (k, o) = (
            l["relative_error"].as_f64().unwrap(),
            r["output_error"].as_f64().unwrap(),
        );
        assert!(
            (o / k - 1.0).abs() < 0.15,
            "{}: output error {o}, kernel error {k}",
            l["name"]
        );
    }
    let v = gbtd(&[
        "verify",
        s(&d.join("m.pth")),
        s(&out),
        "--input-size",
        "16",
        "--batch",
        "2",
        "--quiet",
    ]);
    assert!(
        v.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
}

#[test]
fn mobilenet_v2_with_layer_info_and_linear_layers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let info = d.join("info.json");
    let info_arg = info.to_str().unwrap().to_string();
    let Some((report, _, rows)) = run(
        "mobilenet_v2",
        d,
        &[
            "--method",
            "cp",
            "--rank-rule",
            "ratio:2",
            "--linear",
            "--layer-info",
            &info_arg,
        ],
    ) else {
        return;
    };
    let skipped = report["skipped"].as_array().unwrap();
    let depthwise = skipped
        .iter()
        .filter(|k| k["reason"].as_str().unwrap().contains("depthwise"))
        .count();
    assert!(depthwise >= 17, "every depthwise conv skipped, {depthwise} found");
    assert!(
        report["inferred_groups"].as_array().unwrap().is_empty(),
        "groups came from the file"
    );
    let layers = report["layers"].as_array().unwrap();
    let fc = layers
        .iter()
        .find(|l| l["name"] == "classifier.1")
        .expect("the classifier compressed");
    assert_eq!(
        (fc["kind"].as_str(), fc["method"].as_str()),
        (Some("linear"), Some("svd"))
    );
    for (l, r) in layers.iter().zip(&rows) {
        assert_eq!(l["name"], r["name"]);
        assert_eq!(l["macs_before"], r["macs_before"], "{}", l["name"]);
        assert_eq!(l["macs_after"], r["macs_after"], "{}", l["name"]);
    }
    let t = &report["totals"];
    let sum = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(t["macs_before"].as_u64(), Some(sum("macs_before")));
    assert_eq!(t["macs_after"].as_u64(), Some(sum("macs_after")));
}
