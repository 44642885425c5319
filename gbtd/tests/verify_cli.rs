//! End-to-end tests of `gbtd verify` and `gbtd collective`.
//!
//! The compressed checkpoints are written here, in the format `gbtd compress --out` writes (each
//! conv `NAME.weight` replaced by `NAME.0/1/2.weight` from gbtd's decompositions and
//! `LayerChain`, the `gbtd.compress` metadata describing them), from a small model with Tucker-2,
//! BTD and CP layers, a bias, batch-norm parameters and an integer buffer. Checked: the reported
//! kernel errors against the decompositions' own reconstructions, the output errors against the
//! kernel errors (they agree for a linear chain and Gaussian input), a tampered chain failing
//! `--max-error` with status 1, one-line errors for bad inputs; `collective`'s per-kernel errors
//! against the library's, its parameter totals against the formula, and its checkpoint read back
//! by `verify` and compared tensor by tensor with the model.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gbtd::btd::{BtdOptions, btd};
use gbtd::collective::{ChannelRanks, CollectiveOptions, collective_btd};
use gbtd::cp::{CpOptions, parafac};
use gbtd::layers::LayerChain;
use gbtd::tucker::{TuckerOptions, tucker};
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};

fn gbtd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gbtd"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run gbtd")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok_json(o: &Output) -> Value {
    assert!(o.status.success(), "gbtd failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// Runs gbtd expecting status `code` and one `error:` line on stderr containing every `needle`.
fn fails(args: &[&str], code: i32, needles: &[&str]) {
    let o = gbtd(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line expected: {err}");
    assert!(err.starts_with("error:"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: '{n}' not in: {err}");
    }
}

fn randn(shape: &[usize], seed: u64) -> ArrayD<f64> {
    gbtd::random::randn::<f64>(shape, &mut gbtd::random::rng(seed))
}

/// `‖a − b‖ / ‖a‖` in f64, written out here.
fn rel_err(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = a.iter().map(|x| x * x).sum();
    (num / den).sqrt()
}

/// A kernel `(o, i, kh, kw)` of multilinear rank about `(ro, ri)` on the channel modes plus 10%
/// noise: realistic errors for the decompositions below.
fn kernel(shape: [usize; 4], ranks: [usize; 2], seed: u64) -> ArrayD<f64> {
    let [o, i, _, _] = shape;
    let (kh, kw) = (shape[2], shape[3]);
    let core = randn(&[ranks[0], ranks[1], kh, kw], seed);
    let a = randn(&[o, ranks[0]], seed + 1);
    let b = randn(&[i, ranks[1]], seed + 2);
    let noise = randn(&shape, seed + 3);
    let w = ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
        let mut acc = 0.0;
        for p in 0..ranks[0] {
            for q in 0..ranks[1] {
                acc += core[[p, q, ix[2], ix[3]]] * a[[ix[0], p]] * b[[ix[1], q]];
            }
        }
        acc
    });
    let scale = (w.iter().map(|v| v * v).sum::<f64>() / noise.iter().map(|v| v * v).sum::<f64>()).sqrt();
    w + noise * (0.1 * scale)
}

/// A tensor to store: dtype, shape, little-endian bytes.
#[derive(Clone)]
struct Raw(Dtype, Vec<usize>, Vec<u8>);

fn f32_raw(a: &ArrayD<f64>) -> Raw {
    Raw(
        Dtype::F32,
        a.shape().to_vec(),
        a.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
    )
}

fn write_st(path: &Path, tensors: &HashMap<String, Raw>, meta: Option<HashMap<String, String>>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, Raw(d, sh, b))| (n.clone(), TensorView::new(*d, sh.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, meta).unwrap()).unwrap();
}

fn read_f64(path: &Path, name: &str) -> ArrayD<f64> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    let data: Vec<f64> = match v.dtype() {
        Dtype::F32 => v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => v
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        d => panic!("{name}: dtype {d:?}"),
    };
    ArrayD::from_shape_vec(IxDyn(v.shape()), data).unwrap()
}

/// The model: three convs (one with a bias), batch-norm parameters and an int64 buffer.
struct Model {
    tensors: HashMap<String, Raw>,
    kernels: Vec<(String, ArrayD<f64>)>,
}

fn model() -> Model {
    let kernels = vec![
        ("a.conv".to_string(), kernel([12, 8, 3, 3], [5, 4], 10)),
        ("b.conv".to_string(), kernel([10, 8, 3, 3], [4, 4], 20)),
        ("c.conv".to_string(), kernel([8, 6, 3, 1], [3, 3], 30)),
    ];
    let mut tensors = HashMap::new();
    for (n, w) in &kernels {
        // Rounded to f32 as stored, so the test's references use the stored values.
        tensors.insert(format!("{n}.weight"), f32_raw(w));
    }
    tensors.insert("a.conv.bias".into(), f32_raw(&randn(&[12], 40)));
    tensors.insert("bn.weight".into(), f32_raw(&randn(&[12], 41)));
    tensors.insert(
        "bn.num_batches_tracked".into(),
        Raw(Dtype::I64, vec![], 7i64.to_le_bytes().to_vec()),
    );
    let kernels = kernels
        .into_iter()
        .map(|(n, w)| (n, w.mapv(|v| v as f32 as f64)))
        .collect();
    Model { tensors, kernels }
}

/// One compressed layer: the chain and the reconstruction of the decomposition it came from.
struct Layer {
    name: String,
    method: &'static str,
    ranks: Vec<usize>,
    chain: LayerChain<f64>,
    reconstruction: ArrayD<f64>,
}

fn layers(m: &Model) -> Vec<Layer> {
    let w = |i: usize| m.kernels[i].1.view();
    let t = tucker(&w(0), &TuckerOptions::new(vec![5, 4]).with_modes(vec![0, 1])).unwrap();
    let b = btd(&w(1), &BtdOptions::new(2, vec![2, 2]).with_modes(vec![0, 1])).unwrap();
    let c = parafac(&w(2), &CpOptions::new(4)).unwrap();
    vec![
        Layer {
            name: "a.conv".into(),
            method: "tucker2",
            ranks: vec![5, 4],
            chain: LayerChain::from_tucker(&t).unwrap(),
            reconstruction: t.reconstruct().unwrap(),
        },
        Layer {
            name: "b.conv".into(),
            method: "btd",
            ranks: vec![2, 2],
            chain: LayerChain::from_btd(&b).unwrap(),
            reconstruction: b.reconstruct().unwrap(),
        },
        Layer {
            name: "c.conv".into(),
            method: "cp",
            ranks: vec![4],
            chain: LayerChain::from_cp(&c).unwrap(),
            reconstruction: c.reconstruct().unwrap(),
        },
    ]
}

/// Writes the compressed checkpoint of `m` with `layers`, in the `gbtd compress --out` format.
/// `edit` may change the tensors and the description before writing.
fn write_compressed(
    path: &Path,
    m: &Model,
    layers: &[Layer],
    edit: impl FnOnce(&mut HashMap<String, Raw>, &mut Value),
) {
    let mut tensors = m.tensors.clone();
    let mut entries = Vec::new();
    for l in layers {
        let n = &l.name;
        tensors.remove(&format!("{n}.weight"));
        let bias = tensors.remove(&format!("{n}.bias"));
        let has_bias = bias.is_some();
        if let Some(b) = bias {
            tensors.insert(format!("{n}.2.bias"), b);
        }
        let c = &l.chain;
        for (i, w) in [&c.reduce, &c.grouped, &c.expand].into_iter().enumerate() {
            tensors.insert(format!("{n}.{i}.weight"), f32_raw(&w.clone().into_dyn()));
        }
        let (o, i, kh, kw) = (
            c.expand.dim().0,
            c.reduce.dim().1,
            c.grouped.dim().2,
            c.grouped.dim().3,
        );
        let (mid_in, mid_out) = (c.reduce.dim().0, c.grouped.dim().0);
        entries.push(json!({
            "name": n, "shape": [o, i, kh, kw], "method": l.method, "terms": c.groups,
            "ranks": l.ranks, "groups": c.groups, "bias": has_bias,
            "relative_error": rel_err(&m.kernels.iter().find(|k| &k.0 == n).unwrap().1, &l.reconstruction),
            "chain": [
                {"weight": format!("{n}.0.weight"), "in_channels": i, "out_channels": mid_in,
                 "kernel_size": [1, 1], "groups": 1, "stride": [1, 1], "padding": [0, 0]},
                {"weight": format!("{n}.1.weight"), "in_channels": mid_in, "out_channels": mid_out,
                 "kernel_size": [kh, kw], "groups": c.groups, "stride": null, "padding": null},
                {"weight": format!("{n}.2.weight"), "in_channels": mid_out, "out_channels": o,
                 "kernel_size": [1, 1], "groups": 1, "stride": [1, 1], "padding": [0, 0],
                 "bias": if has_bias { json!(format!("{n}.2.bias")) } else { Value::Null }},
            ],
        }));
    }
    let mut desc = json!({
        "format": "gbtd.compress", "version": 1, "source": "model.safetensors", "method": "mixed",
        "rank_rule": "fixed", "layers": entries, "skipped": [],
    });
    edit(&mut tensors, &mut desc);
    let meta = HashMap::from([("gbtd.compress".to_string(), desc.to_string())]);
    write_st(path, &tensors, Some(meta));
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    original: PathBuf,
    compressed: PathBuf,
    model: Model,
    layers: Vec<Layer>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let m = model();
    let original = d.join("model.safetensors");
    write_st(&original, &m.tensors, None);
    let ls = layers(&m);
    let compressed = d.join("compressed.safetensors");
    write_compressed(&compressed, &m, &ls, |_, _| {});
    Fixture {
        _dir: dir,
        dir: d,
        original,
        compressed,
        model: m,
        layers: ls,
    }
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn output_errors_agree_with_kernel_errors() {
    let f = fixture();
    let j = ok_json(&gbtd(&[
        "verify",
        s(&f.original),
        s(&f.compressed),
        "--input-size",
        "32",
        "--batch",
        "4",
        "--json",
        "--quiet",
    ]));
    assert_eq!(j["passed"], json!(true), "{j}");
    assert_eq!(j["dtype"], json!("f32"));
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (l, want) in layers.iter().zip(&f.layers) {
        assert_eq!(l["name"], json!(want.name));
        // The kernel error against the decomposition's own reconstruction (chains stored in f32).
        let w = &f.model.kernels.iter().find(|k| k.0 == want.name).unwrap().1;
        let independent = rel_err(w, &want.reconstruction);
        let kernel = num(l, "kernel_error");
        assert!(
            (kernel - independent).abs() <= 1e-5 + 1e-4 * independent,
            "{}: reported {kernel}, recomputed {independent}",
            want.name
        );
        assert!(
            independent > 0.02,
            "{}: a trivial fixture ({independent})",
            want.name
        );
        // The output error estimates the kernel error: within the stated tolerance of the
        // border-weighted expectation, and (border included) within 25% of the kernel error.
        let out = num(l, "output_error");
        let exp = num(l, "expected_output_error");
        let tol = num(l, "tolerance");
        assert_eq!(l["agree"], json!(true), "{l}");
        assert!((out - exp).abs() <= tol, "{l}");
        assert!(
            tol < 0.5 * exp,
            "{}: a tolerance that accepts anything: {l}",
            want.name
        );
        assert!(
            (out - kernel).abs() <= 0.25 * kernel,
            "{}: output {out} vs kernel {kernel}",
            want.name
        );
    }
    assert_eq!(layers[0]["bias"], json!(true));
    assert_eq!(layers[1]["bias"], json!(false));
    assert_eq!(layers[1]["terms"], json!(2));
    assert_eq!(layers[2]["terms"], json!(4));

    // The text report: one row per layer and a totals line.
    let o = gbtd(&[
        "verify",
        s(&f.original),
        s(&f.compressed),
        "--input-size",
        "12",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for n in ["a.conv", "b.conv", "c.conv", "totals: 3 layers", "all agree"] {
        assert!(text.contains(n), "'{n}' not in:\n{text}");
    }
}

#[test]
fn a_tampered_chain_fails_max_error() {
    let f = fixture();
    let tampered = f.dir.join("tampered.safetensors");
    // b.conv's expand scaled by 1.5: its kernel is 1.5 W', its error goes from about 0.35 to
    // about 0.58.
    write_compressed(&tampered, &f.model, &f.layers, |t, _| {
        let w = f.layers[1].chain.expand.mapv(|v| 1.5 * v).into_dyn();
        t.insert("b.conv.2.weight".into(), f32_raw(&w));
    });
    let (orig, tam) = (s(&f.original), s(&tampered));
    let base = ["verify", orig, tam, "--input-size", "16", "--quiet"];
    fails(
        &[&base[..], &["--max-error", "0.45"]].concat(),
        1,
        &["'b.conv'", "--max-error 0.45", "1 of 3 layers"],
    );
    // Without --max-error it passes, and the scaled chain still agrees with its kernel error.
    let j = ok_json(&gbtd(&[&base[..], &["--json"]].concat()));
    let b = &j["layers"][1];
    assert!(num(b, "kernel_error") > 0.5, "{b}");
    assert_eq!(b["agree"], json!(true));
    assert_eq!(j["worst_layer"], json!("b.conv"));
    // The untampered file is within the same bound.
    let o = gbtd(&[
        "verify",
        s(&f.original),
        s(&f.compressed),
        "--input-size",
        "16",
        "--quiet",
        "--max-error",
        "0.45",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let f = fixture();
    let (orig, comp) = (s(&f.original), s(&f.compressed));
    // A file without the metadata.
    fails(
        &["verify", orig, orig, "--quiet"],
        1,
        &["not written by gbtd compress"],
    );
    let npy = f.dir.join("k.npy");
    fails(
        &["verify", orig, s(&npy), "--quiet"],
        1,
        &["not written by gbtd compress"],
    );
    // A layer missing in ORIGINAL.
    let mut t = f.model.tensors.clone();
    t.remove("b.conv.weight");
    let missing = f.dir.join("missing.safetensors");
    write_st(&missing, &t, None);
    fails(
        &["verify", s(&missing), comp, "--quiet"],
        1,
        &["'b.conv'", "no tensor 'b.conv.weight'"],
    );
    // A kernel of another shape in ORIGINAL.
    let mut t = f.model.tensors.clone();
    t.insert("a.conv.weight".into(), f32_raw(&randn(&[12, 8, 5, 5], 1)));
    let other = f.dir.join("other.safetensors");
    write_st(&other, &t, None);
    fails(
        &["verify", s(&other), comp, "--quiet"],
        1,
        &["'a.conv'", "shape mismatch"],
    );
    // NaN in a chain weight.
    let nan = f.dir.join("nan.safetensors");
    write_compressed(&nan, &f.model, &f.layers, |t, _| {
        let mut w = f.layers[2].chain.grouped.clone().into_dyn();
        w[[0, 0, 0, 0]] = f64::NAN;
        t.insert("c.conv.1.weight".into(), f32_raw(&w));
    });
    fails(
        &["verify", orig, s(&nan), "--quiet"],
        1,
        &["c.conv.1.weight", "NaN"],
    );
    // A chain whose grouped conv does not fit (wrong groups in the metadata).
    let groups = f.dir.join("groups.safetensors");
    write_compressed(&groups, &f.model, &f.layers, |_, d| {
        d["layers"][1]["chain"][1]["groups"] = json!(3);
    });
    fails(
        &["verify", orig, s(&groups), "--quiet"],
        1,
        &["'b.conv'", "inconsistent"],
    );
    // The bias dropped from the chain.
    let nobias = f.dir.join("nobias.safetensors");
    write_compressed(&nobias, &f.model, &f.layers, |t, d| {
        t.remove("a.conv.2.bias");
        d["layers"][0]["chain"][2]["bias"] = Value::Null;
    });
    fails(
        &["verify", orig, s(&nobias), "--quiet"],
        1,
        &["'a.conv'", "no bias"],
    );
    // A future format version and a broken description.
    let v2 = f.dir.join("v2.safetensors");
    write_compressed(&v2, &f.model, &f.layers, |_, d| d["version"] = json!(2));
    fails(&["verify", orig, s(&v2), "--quiet"], 1, &["version 2"]);
    let broken = f.dir.join("broken.safetensors");
    write_compressed(&broken, &f.model, &f.layers, |_, d| d["layers"] = json!("none"));
    fails(
        &["verify", orig, s(&broken), "--quiet"],
        1,
        &["not a valid description"],
    );
    // Options.
    fails(&["verify", orig, comp, "--max-error", "-1"], 1, &["--max-error"]);
    fails(
        &["verify", orig, comp, "--input-size", "0"],
        2,
        &["--input-size", "gbtd verify --help"],
    );
    fails(
        &["verify", orig, s(&f.dir.join("absent.safetensors"))],
        1,
        &["absent.safetensors"],
    );
}

#[test]
fn verify_reads_a_pytorch_original() {
    let f = fixture();
    let pth = f.dir.join("model.pth");
    let mut script = String::from("import sys, torch, collections\nsd = collections.OrderedDict()\n");
    for (n, w) in &f.model.kernels {
        let vals: Vec<String> = w.iter().map(|v| format!("{v:e}")).collect();
        script.push_str(&format!(
            "sd['{n}.weight'] = torch.tensor([{}], dtype=torch.float32).reshape({:?})\n",
            vals.join(","),
            w.shape()
        ));
    }
    let b = read_f64(&f.original, "a.conv.bias");
    let vals: Vec<String> = b.iter().map(|v| format!("{v:e}")).collect();
    script.push_str(&format!(
        "sd['a.conv.bias'] = torch.tensor([{}], dtype=torch.float32)\ntorch.save(sd, sys.argv[1])\n",
        vals.join(",")
    ));
    if peers::run("verify_reads_a_pytorch_original", &script, &[s(&pth)]).is_none() {
        return;
    }
    let args = |o: &Path| {
        vec![
            "verify".to_string(),
            s(o).to_string(),
            s(&f.compressed).to_string(),
            "--input-size".into(),
            "10".into(),
            "--json".into(),
            "--quiet".into(),
        ]
    };
    let run = |o: &Path| {
        let a = args(o);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ok_json(&gbtd(&a))
    };
    let (from_pth, from_st) = (run(&pth), run(&f.original));
    for (a, b) in from_pth["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(from_st["layers"].as_array().unwrap())
    {
        assert_eq!(a["kernel_error"], b["kernel_error"]);
        assert_eq!(a["output_error"], b["output_error"]);
    }
}

/// Named kernels.
type Kernels = Vec<(String, ArrayD<f64>)>;

/// The collective model: three 3×3 kernels with the same (in, kh, kw), one with a bias, plus
/// other tensors.
fn collective_model(dir: &Path) -> (PathBuf, Kernels, HashMap<String, Raw>) {
    let kernels: Kernels = [(16, 1), (16, 2), (12, 3)]
        .iter()
        .map(|&(o, seed)| {
            (
                format!("layer{seed}.conv2.weight"),
                kernel([o, 8, 3, 3], [4, 4], 100 * seed).mapv(|v| v as f32 as f64),
            )
        })
        .collect();
    let mut t: HashMap<String, Raw> = kernels.iter().map(|(n, w)| (n.clone(), f32_raw(w))).collect();
    t.insert("layer2.conv2.bias".into(), f32_raw(&randn(&[16], 5)));
    t.insert("layer1.conv1.weight".into(), f32_raw(&randn(&[8, 4, 1, 1], 6)));
    t.insert("layer1.bn2.weight".into(), f32_raw(&randn(&[16], 7)));
    t.insert(
        "layer1.bn2.num_batches_tracked".into(),
        Raw(Dtype::I64, vec![], 3i64.to_le_bytes().to_vec()),
    );
    let path = dir.join("cmodel.safetensors");
    write_st(
        &path,
        &t,
        Some(HashMap::from([("origin".to_string(), "test".to_string())])),
    );
    (path, kernels, t)
}

#[test]
fn collective_reports_the_library_errors_and_the_parameter_formula() {
    let dir = tempfile::tempdir().unwrap();
    let (model, kernels, tensors) = collective_model(dir.path());
    let out = dir.path().join("shared.safetensors");
    let (r, d3, d4) = (2usize, 3usize, 4usize);
    let j = ok_json(&gbtd(&[
        "collective",
        s(&model),
        "--tensors",
        r"conv2\.weight$",
        "--terms",
        "2",
        "--rank",
        "3,4",
        "--max-iter",
        "30",
        "--json",
        "--quiet",
        "--out",
        s(&out),
    ]));
    // The library on the same kernels (f32, as stored) and options.
    let data: Vec<ArrayD<f32>> = kernels.iter().map(|(_, w)| w.mapv(|v| v as f32)).collect();
    let views: Vec<_> = data.iter().map(|a| a.view()).collect();
    let lib = collective_btd(
        &views,
        &CollectiveOptions::new(r, ChannelRanks::new(d4, d3)).with_n_iter_max(30),
    )
    .unwrap();
    let reported = j["kernels"].as_array().unwrap();
    assert_eq!(reported.len(), 3);
    for (k, ((name, w), &e)) in reported.iter().zip(kernels.iter().zip(&lib.rel_errors)) {
        assert_eq!(k["name"], json!(name));
        assert!((num(k, "rel_error") - e).abs() <= 1e-6, "{k} vs {e}");
        assert!(e > 0.01 && e < 1.0, "{e}");
        assert_eq!(k["params"], json!(w.len()));
    }
    // Parameters from the formula: per term, the core and A3 once, every kernel's A4 block.
    let (kh, kw, inp) = (3, 3, 8);
    let outs = [16usize, 16, 12];
    let collective = r * (kh * kw * d3 * d4 + inp * d3 + outs.iter().map(|o| o * d4).sum::<usize>());
    let independent: usize = outs
        .iter()
        .map(|o| r * (kh * kw * d3 * d4 + inp * d3 + o * d4))
        .sum();
    let original: usize = outs.iter().map(|o| o * inp * kh * kw).sum();
    assert_eq!(j["params_collective"], json!(collective));
    assert_eq!(j["params_independent"], json!(independent));
    assert_eq!(j["params_original"], json!(original));
    assert!(collective < independent);

    // The checkpoint: every other tensor byte for byte, shared tensors equal, the description.
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (name, Raw(d, sh, b)) in &tensors {
        if kernels.iter().any(|k| &k.0 == name) || name == "layer2.conv2.bias" {
            assert!(st.tensor(name).is_err(), "{name} should have been replaced");
            continue;
        }
        let v = st.tensor(name).unwrap();
        assert_eq!(
            (v.dtype(), v.shape(), v.data()),
            (*d, sh.as_slice(), b.as_slice()),
            "{name}"
        );
    }
    let bias = st.tensor("layer2.conv2.2.bias").unwrap();
    assert_eq!(bias.data(), tensors["layer2.conv2.bias"].2.as_slice());
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["origin"], "test");
    let desc: Value = serde_json::from_str(&meta["gbtd.compress"]).unwrap();
    let shared = desc["collective"]["shared"].as_array().unwrap();
    assert_eq!(shared.len(), 2);
    for group in shared {
        let names: Vec<&str> = group
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 3);
        let first = read_f64(&out, names[0]);
        for n in &names[1..] {
            assert_eq!(read_f64(&out, n), first, "{n} is not a copy of {}", names[0]);
        }
    }
    assert_eq!(
        read_f64(&out, "layer1.conv2.1.weight").shape(),
        &[r * d4, d3, 3, 3]
    );
    assert_eq!(
        read_f64(&out, "layer3.conv2.2.weight").shape(),
        &[12, r * d4, 1, 1]
    );

    // `verify` reads it unchanged; its kernel errors are the collective's.
    let v = ok_json(&gbtd(&[
        "verify",
        s(&model),
        s(&out),
        "--input-size",
        "12",
        "--json",
        "--quiet",
    ]));
    assert_eq!(v["passed"], json!(true), "{v}");
    for (l, k) in v["layers"].as_array().unwrap().iter().zip(reported) {
        assert!(
            (num(l, "kernel_error") - num(k, "rel_error")).abs() <= 1e-5,
            "{l} vs {k}"
        );
        assert_eq!(l["terms"], json!(r));
    }
}

#[test]
fn collective_bad_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _, _) = collective_model(dir.path());
    let m = s(&model);
    let base = |t: &'static str| {
        vec![
            "collective",
            m,
            "--tensors",
            t,
            "--terms",
            "2",
            "--rank",
            "3,4",
            "--quiet",
        ]
    };
    fails(&base("nothing-matches"), 1, &["no tensor", "gbtd info"]);
    fails(
        &base("layer2.conv2"),
        1,
        &["layer2.conv2.bias", "not a floating-point conv kernel"],
    );
    fails(&base(r"conv[12]\.weight$"), 1, &["differ in (in, kh, kw)"]);
    fails(&base("conv2\\.weight("), 1, &["not a valid regular expression"]);
    let mut a = base(r"conv2\.weight$");
    a[7] = "3";
    fails(&a, 1, &["--rank takes two ranks"]);
    let mut a = base(r"conv2\.weight$");
    a[5] = "0";
    fails(&a, 1, &["--terms"]);
    let mut a = base(r"conv2\.weight$");
    a.extend_from_slice(&["--out", "/nonexistent-dir/x.safetensors"]);
    fails(&a, 1, &["does not exist"]);
    let mut a = base(r"conv2\.weight$");
    a.extend_from_slice(&["--out", m]);
    fails(&a, 1, &["is the model file"]);
    // A model that already holds a chain's name, refused before the factorization.
    let (_, _, mut t) = collective_model(dir.path());
    t.insert("layer1.conv2.0.weight".into(), f32_raw(&randn(&[4, 8, 1, 1], 9)));
    let clash = dir.path().join("clash.safetensors");
    write_st(&clash, &t, None);
    let target = dir.path().join("x.safetensors");
    let mut a = base(r"conv2\.weight$");
    a[1] = s(&clash);
    a.extend_from_slice(&["--out", s(&target)]);
    fails(&a, 1, &["already has a tensor 'layer1.conv2.0.weight'"]);
    assert!(!target.exists());
}

/// PyTorch loads the checkpoint `collective --out` writes as the README's loader does (each conv
/// replaced by an `nn.Sequential` built from the metadata, `load_state_dict(strict=True)`), and the
/// output error of the loaded chains against the original convs, computed by torch, agrees with
/// the kernel errors gbtd reports.
#[test]
fn pytorch_runs_the_collective_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _, _) = collective_model(dir.path());
    let out = dir.path().join("shared.safetensors");
    let j = ok_json(&gbtd(&[
        "collective",
        s(&model),
        "--tensors",
        r"conv2\.weight$",
        "--terms",
        "3",
        "--rank",
        "2,3",
        "--max-iter",
        "20",
        "--json",
        "--quiet",
        "--out",
        s(&out),
    ]));
    let script = r#"
import sys, json, torch
from safetensors import safe_open
from safetensors.torch import load_file
orig, comp = load_file(sys.argv[1]), load_file(sys.argv[2])
with safe_open(sys.argv[2], 'pt') as f:
    meta = json.loads(f.metadata()['gbtd.compress'])
torch.manual_seed(0)
res = {}
def sub(sd, n):
    return {k[len(n) + 1:]: v for k, v in sd.items() if k.startswith(n + '.')}
for l in meta['layers']:
    n, (o, i, kh, kw), c = l['name'], l['shape'], l['chain']
    old = torch.nn.Conv2d(i, o, (kh, kw), padding=(kh // 2, kw // 2), bias=(n + '.bias') in orig)
    old.load_state_dict(sub(orig, n), strict=True)
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(c[0]['in_channels'], c[0]['out_channels'], c[0]['kernel_size'], bias=False),
        torch.nn.Conv2d(c[1]['in_channels'], c[1]['out_channels'], c[1]['kernel_size'], stride=old.stride,
                        padding=old.padding, dilation=old.dilation, groups=c[1]['groups'], bias=False),
        torch.nn.Conv2d(c[2]['in_channels'], c[2]['out_channels'], c[2]['kernel_size'],
                        bias=c[2]['bias'] is not None))
    seq.load_state_dict(sub(comp, n), strict=True)
    x = torch.randn(4, i, 32, 32)
    with torch.no_grad():
        y, yc = old(x), seq(x)
        lin = y - old.bias.view(1, -1, 1, 1) if old.bias is not None else y
        res[n] = ((y - yc).norm() / lin.norm()).item()
print(json.dumps(res))
"#;
    let Some(stdout) = peers::run(
        "pytorch_runs_the_collective_checkpoint",
        script,
        &[s(&model), s(&out)],
    ) else {
        return;
    };
    let torch: Value = serde_json::from_str(stdout.trim()).unwrap();
    for k in j["kernels"].as_array().unwrap() {
        let name = k["name"].as_str().unwrap().strip_suffix(".weight").unwrap();
        let (e_torch, e_kernel) = (num(&torch, name), num(k, "rel_error"));
        assert!(
            (e_torch - e_kernel).abs() <= 0.25 * e_kernel,
            "{name}: torch's output error {e_torch} vs kernel error {e_kernel}"
        );
    }
}

/// ORIGINAL stored in f16 and bf16 (as half-precision checkpoints are): read, widened exactly,
/// and compared in f32; the kernel errors move only by the rounding of the stored kernels.
#[test]
fn verify_reads_half_precision_originals() {
    let f = fixture();
    for (dtype, tol) in [(Dtype::F16, 2e-3), (Dtype::BF16, 2e-2)] {
        let half: HashMap<String, Raw> = f
            .model
            .tensors
            .iter()
            .map(|(n, r)| {
                let Raw(d, sh, b) = r;
                if *d != Dtype::F32 {
                    return (n.clone(), r.clone());
                }
                let bytes = b
                    .chunks_exact(4)
                    .flat_map(|c| {
                        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        match dtype {
                            Dtype::F16 => half::f16::from_f32(v).to_le_bytes(),
                            _ => half::bf16::from_f32(v).to_le_bytes(),
                        }
                    })
                    .collect();
                (n.clone(), Raw(dtype, sh.clone(), bytes))
            })
            .collect();
        let orig = f.dir.join(format!("half_{dtype:?}.safetensors"));
        write_st(&orig, &half, None);
        // The chains carry the half-precision bias unchanged, as `compress` copies it.
        let comp = f.dir.join(format!("half_{dtype:?}_c.safetensors"));
        write_compressed(&comp, &f.model, &f.layers, |t, _| {
            t.insert("a.conv.2.bias".into(), half["a.conv.bias"].clone());
        });
        let j = ok_json(&gbtd(&[
            "verify",
            s(&orig),
            s(&comp),
            "--input-size",
            "12",
            "--json",
            "--quiet",
        ]));
        assert_eq!(j["passed"], json!(true), "{j}");
        assert_eq!(j["dtype"], json!("f32"));
        for (l, want) in j["layers"].as_array().unwrap().iter().zip(&f.layers) {
            let w = &f.model.kernels.iter().find(|k| k.0 == want.name).unwrap().1;
            let independent = rel_err(w, &want.reconstruction);
            let kernel = num(l, "kernel_error");
            assert!(
                (kernel - independent).abs() <= tol,
                "{dtype:?} {}: {kernel} vs {independent}",
                want.name
            );
        }
    }
}
