//! `gbtd collective MODEL --tensors REGEX --terms R --rank D3,D4`: the collective factorization
//! ([`gbtd::collective::collective_btd`]) of the conv kernels whose names match, with a report of
//! each kernel's error and of the parameters against independent BTDs and the originals, and
//! optionally a compressed checkpoint in the format of `gbtd compress --out`
//! ([`gbtd::compress::writer`]).
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::ArrayD;
use regex::Regex;
use safetensors::Dtype;
use serde::Serialize;
use serde_json::{Value, json};

use gbtd::Real;
use gbtd::collective::{Collective, CollectiveOptions, collective_btd};
use gbtd::compress::writer::METADATA_KEY;
use gbtd::formats::{self, DType, Format, NamedTensor};
use gbtd::layers::LayerChain;
use gbtd::options::{Init, IterOptions};
use gbtd::pth::{self, PthData};

use super::args::{CollectiveArgs, InitArg};
use super::report;

/// One kernel's line of the report.
#[derive(Debug, Serialize)]
struct KernelReport {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    rel_error: f64,
    params: usize,
}

/// The `--json` report.
#[derive(Debug, Serialize)]
struct Report {
    model: String,
    tensors: String,
    terms: usize,
    /// `[d3*, d4*]` as given.
    rank: Vec<usize>,
    dtype: &'static str,
    kernels: Vec<KernelReport>,
    /// `R·(kh·kw·d3*·d4* + in·d3* + Σ_l out_l·d4*)`.
    params_collective: usize,
    /// `Σ_l R·(kh·kw·d3*·d4* + in·d3* + out_l·d4*)`.
    params_independent: usize,
    /// `Σ_l out_l·in·kh·kw`.
    params_original: usize,
    compression: f64,
    rel_error_concatenated: f64,
    iterations: usize,
    max_iter: usize,
    converged: bool,
    seconds: f64,
    error_history: Vec<f64>,
    out: Option<String>,
}

/// Runs `gbtd collective`.
pub fn run(args: &CollectiveArgs) -> Result<()> {
    if !(args.tol.is_finite() && args.tol >= 0.0) {
        bail!(
            "--tol {}: the tolerance must be a finite number >= 0 (0 runs all --max-iter sweeps)",
            args.tol
        );
    }
    if args.terms == 0 {
        bail!("--terms must be at least 1");
    }
    let &[d3s, d4s] = args.rank.as_slice() else {
        bail!(
            "--rank takes two ranks D3,D4 (input rank d3*, then output rank d4*), got {}",
            args.rank.len()
        );
    };
    if d3s == 0 || d4s == 0 {
        bail!("--rank {d3s},{d4s}: ranks must be at least 1");
    }
    let re = Regex::new(&args.tensors).map_err(|e| {
        anyhow!(
            "--tensors '{}' is not a valid regular expression: {}",
            args.tensors,
            e.to_string().replace('\n', " ")
        )
    })?;
    let format = Format::from_path(&args.model)?;
    if let Some(out) = &args.out {
        formats::check_output_path(
            out,
            &["safetensors"],
            "the compressed checkpoint",
            &args.model,
            "model",
        )
        .context("--out")?;
        check_copyable(&args.model, format)?;
    }
    let listed = formats::list_tensors(&args.model)?;
    let matching: Vec<&formats::TensorInfo> = listed.iter().filter(|t| re.is_match(&t.name)).collect();
    if matching.is_empty() {
        bail!(
            "no tensor of {} matches --tensors '{}'; list the names with `gbtd info {}`",
            args.model.display(),
            args.tensors,
            args.model.display()
        );
    }
    for t in &matching {
        if t.shape.len() != 4 || !t.readable {
            bail!(
                "tensor '{}' matched by --tensors has {} {:?}, not a floating-point conv kernel (out, in, kh, kw); narrow the expression (for example ending in 'conv2\\.weight$')",
                t.name,
                t.dtype,
                t.shape
            );
        }
        if t.shape[1..] != matching[0].shape[1..] {
            bail!(
                "kernels '{}' {:?} and '{}' {:?} differ in (in, kh, kw), which a collective factorization shares; narrow --tensors to kernels of one shape",
                matching[0].name,
                matching[0].shape,
                t.name,
                t.shape
            );
        }
    }
    if args.out.is_some() {
        check_out_names(&args.model, &matching, &listed)?;
    }
    let kernels: Vec<NamedTensor> = matching
        .iter()
        .map(|t| formats::read_tensor(&args.model, Some(&t.name)))
        .collect::<std::result::Result<_, _>>()?;
    if kernels.iter().any(|k| k.dtype == DType::F64) {
        run_typed::<f64>(args, &kernels, [d3s, d4s])
    } else {
        run_typed::<f32>(args, &kernels, [d3s, d4s])
    }
}

fn run_typed<T: Real>(args: &CollectiveArgs, kernels: &[NamedTensor], [d3s, d4s]: [usize; 2]) -> Result<()> {
    let data: Vec<ArrayD<T>> = kernels.iter().map(|k| k.data.to_real::<T>()).collect();
    let views: Vec<_> = data.iter().map(|a| a.view()).collect();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(args.max_iter as u64);
        let style =
            ProgressStyle::with_template("collective [{bar:30}] {pos}/{len} sweeps, {msg} ({elapsed})")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    };
    let tick = |sweep: usize, err: f64| {
        bar.set_position(sweep as u64);
        bar.set_message(format!("rel. error {}", report::error(err)));
    };
    let opts = CollectiveOptions::new(args.terms, vec![d4s, d3s])
        .with_iter(IterOptions {
            n_iter_max: args.max_iter,
            tol: args.tol,
            seed: args.seed,
        })
        .with_init(match args.init {
            InitArg::Svd => Init::Svd,
            InitArg::Random => Init::Random,
        })
        .with_progress(&tick);
    let start = Instant::now();
    let result = collective_btd(&views, &opts);
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let c = result.context("collective factorization failed")?;
    if let Some(out) = &args.out {
        write_checkpoint(args, out, kernels, &c, [d3s, d4s])?;
    }
    let conv = &c.btd.convergence;
    let params_original: usize = data.iter().map(|a| a.len()).sum();
    let report = Report {
        model: args.model.display().to_string(),
        tensors: args.tensors.clone(),
        terms: args.terms,
        rank: vec![d3s, d4s],
        dtype: if T::epsilon().to_f64_exact() < 1e-10 {
            "f64"
        } else {
            "f32"
        },
        kernels: kernels
            .iter()
            .zip(&c.rel_errors)
            .map(|(k, &e)| KernelReport {
                name: k.name.clone(),
                shape: k.data.shape().to_vec(),
                dtype: k.dtype.to_string(),
                rel_error: e,
                params: k.data.shape().iter().product(),
            })
            .collect(),
        params_collective: c.n_params(),
        params_independent: c.n_params_independent(),
        params_original,
        compression: params_original as f64 / c.n_params().max(1) as f64,
        rel_error_concatenated: conv.rel_error(),
        iterations: conv.iterations,
        max_iter: args.max_iter,
        converged: conv.converged,
        seconds,
        error_history: conv.errors.clone(),
        out: args.out.as_ref().map(|p| p.display().to_string()),
    };
    print_report(&report, args.json).context("cannot write to standard output")
}

/// Checks before any work that every tensor of the model can be copied to `--out` (a
/// `.safetensors` file or a PyTorch checkpoint).
fn check_copyable(model: &Path, format: Format) -> Result<()> {
    if !matches!(format, Format::Safetensors | Format::Pth) {
        bail!(
            "--out needs MODEL as a .safetensors file or a PyTorch checkpoint (every tensor is copied with its dtype); convert {} first",
            model.display()
        );
    }
    Ok(())
}

/// Checks before any work that every kernel is named `NAME.weight` and that the model has none of
/// the chain's names yet (`--out`).
fn check_out_names(
    model: &Path,
    kernels: &[&formats::TensorInfo],
    all: &[formats::TensorInfo],
) -> Result<()> {
    for k in kernels {
        let Some(name) = k.name.strip_suffix(".weight") else {
            bail!(
                "--out needs conv weights named NAME.weight (the PyTorch convention); '{}' is not",
                k.name
            );
        };
        let chain = [0, 1, 2].map(|i| format!("{name}.{i}.weight"));
        if let Some(clash) = chain
            .iter()
            .chain([&format!("{name}.2.bias")])
            .find(|n| all.iter().any(|t| &&t.name == n))
        {
            bail!(
                "{} already has a tensor '{clash}' (is it already compressed?); give the uncompressed model",
                model.display()
            );
        }
    }
    Ok(())
}

/// A tensor to write: its dtype, shape and little-endian bytes.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Every tensor of the model with its stored dtype and bytes, and (for `.safetensors`) the
/// file's own metadata.
fn read_raw(path: &Path) -> Result<(BTreeMap<String, Raw>, BTreeMap<String, String>)> {
    let mut out = BTreeMap::new();
    match Format::from_path(path)? {
        Format::Safetensors => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| anyhow!("{}: not a readable .safetensors file: {e}", path.display()))?;
            for (name, v) in st.iter() {
                out.insert(
                    name.to_string(),
                    Raw {
                        dtype: v.dtype(),
                        shape: v.shape().to_vec(),
                        bytes: v.data().to_vec(),
                    },
                );
            }
            let meta = formats::read_safetensors_metadata(path)?;
            Ok((out, meta))
        }
        Format::Pth => {
            let ck = pth::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            for t in ck.tensors {
                let (dtype, bytes) = pth_bytes(&t.data);
                out.insert(
                    t.name,
                    Raw {
                        dtype,
                        shape: t.shape,
                        bytes,
                    },
                );
            }
            Ok((out, BTreeMap::new()))
        }
        _ => bail!(
            "{}: only .safetensors and PyTorch checkpoints are copied",
            path.display()
        ),
    }
}

/// The safetensors dtype and little-endian bytes of checkpoint data.
fn pth_bytes(d: &PthData) -> (Dtype, Vec<u8>) {
    fn le<const N: usize, X: Copy>(v: &[X], f: impl Fn(X) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }
    match d {
        PthData::F32(v) => (Dtype::F32, le(v, f32::to_le_bytes)),
        PthData::F64(v) => (Dtype::F64, le(v, f64::to_le_bytes)),
        PthData::F16(v) => (Dtype::F16, le(v, |x: half::f16| x.to_bits().to_le_bytes())),
        PthData::BF16(v) => (Dtype::BF16, le(v, |x: half::bf16| x.to_bits().to_le_bytes())),
        PthData::I64(v) => (Dtype::I64, le(v, i64::to_le_bytes)),
        PthData::I32(v) => (Dtype::I32, le(v, i32::to_le_bytes)),
        PthData::I16(v) => (Dtype::I16, le(v, i16::to_le_bytes)),
        PthData::I8(v) => (Dtype::I8, le(v, i8::to_le_bytes)),
        PthData::U8(v) => (Dtype::U8, v.clone()),
        PthData::Bool(v) => (Dtype::BOOL, v.iter().map(|&b| u8::from(b)).collect()),
    }
}

/// A chain weight in the kernel's precision: `F64` for an `f64` kernel, else `F32`.
fn raw_real<T: Real>(a: &ndarray::Array4<T>, f64_out: bool) -> Raw {
    let mut bytes = Vec::with_capacity(a.len() * if f64_out { 8 } else { 4 });
    for &v in a.as_standard_layout().iter() {
        if f64_out {
            bytes.extend_from_slice(&v.to_f64_exact().to_le_bytes());
        } else {
            bytes.extend_from_slice(&(v.to_f64_exact() as f32).to_le_bytes());
        }
    }
    Raw {
        dtype: if f64_out { Dtype::F64 } else { Dtype::F32 },
        shape: a.shape().to_vec(),
        bytes,
    }
}

/// Writes the model with each kernel `NAME.weight` (and `NAME.bias`) replaced by its chain
/// `NAME.0/1/2.weight` (and `NAME.2.bias`), and the `gbtd.compress` metadata, atomically.
fn write_checkpoint<T: Real>(
    args: &CollectiveArgs,
    out: &Path,
    kernels: &[NamedTensor],
    c: &Collective<T>,
    [d3s, d4s]: [usize; 2],
) -> Result<()> {
    let (mut tensors, mut meta) = read_raw(&args.model)?;
    let chains = LayerChain::from_collective(c)?;
    let r = c.n_terms();
    let mut layers = Vec::with_capacity(kernels.len());
    let mut shared: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for ((k, chain), &err) in kernels.iter().zip(&chains).zip(&c.rel_errors) {
        let Some(name) = k.name.strip_suffix(".weight") else {
            bail!(
                "--out needs conv weights named NAME.weight (the PyTorch convention); '{}' is not",
                k.name
            );
        };
        let names = [0, 1, 2].map(|i| format!("{name}.{i}.weight"));
        // `check_out_names` made sure that none of these names is taken.
        tensors.remove(&k.name);
        let bias = tensors.remove(&format!("{name}.bias"));
        let has_bias = bias.is_some();
        if let Some(b) = bias {
            tensors.insert(format!("{name}.2.bias"), b);
        }
        let f64_out = k.dtype == DType::F64;
        for (n, w) in names.iter().zip([&chain.reduce, &chain.grouped, &chain.expand]) {
            tensors.insert(n.clone(), raw_real(w, f64_out));
        }
        shared[0].push(names[0].clone());
        shared[1].push(names[1].clone());
        let s = k.data.shape();
        let (o, i, kh, kw) = (s[0], s[1], s[2], s[3]);
        let conv = |w: &str, cin: usize, cout: usize, ks: [usize; 2], g: usize, fixed: bool| {
            let (st, pad) = if fixed {
                (json!([1, 1]), json!([0, 0]))
            } else {
                (Value::Null, Value::Null)
            };
            json!({"weight": w, "in_channels": cin, "out_channels": cout, "kernel_size": ks,
                   "groups": g, "stride": st, "padding": pad})
        };
        let mut last = conv(&names[2], r * d4s, o, [1, 1], 1, true);
        last["bias"] = if has_bias {
            json!(format!("{name}.2.bias"))
        } else {
            Value::Null
        };
        layers.push(json!({
            "name": name, "shape": s, "dtype": k.dtype.to_string(), "method": "collective",
            "terms": r, "ranks": [d4s, d3s], "groups": r, "bias": has_bias, "relative_error": err,
            "params_before": o * i * kh * kw, "params_after": chain.n_params(),
            "chain": [
                conv(&names[0], i, r * d3s, [1, 1], 1, true),
                conv(&names[1], r * d3s, r * d4s, [kh, kw], r, false),
                last,
            ],
        }));
    }
    let description = json!({
        "format": METADATA_KEY,
        "version": 1,
        "generator": format!("gbtd {}", env!("CARGO_PKG_VERSION")),
        "source": args.model.display().to_string(),
        "method": "collective",
        "rank_rule": format!("fixed:{d4s},{d3s}"),
        "layers": layers,
        "skipped": [],
        "collective": {
            "shared": shared,
            "tensors": args.tensors,
            "terms": r,
            "ranks": [d4s, d3s],
            "params_collective": c.n_params(),
            "params_independent": c.n_params_independent(),
        },
    });
    meta.insert(METADATA_KEY.to_string(), description.to_string());
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let v = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
            .map_err(|e| anyhow!("tensor '{name}' cannot be stored: {e}"))?;
        views.push((name.clone(), v));
    }
    let meta: HashMap<String, String> = meta.into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| anyhow!("cannot serialize the checkpoint: {e}"))?;
    formats::write_atomic(out, |w| w.write_all(&bytes))?;
    Ok(())
}

fn print_report(r: &Report, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string(r).map_err(std::io::Error::other)?;
        return writeln!(out, "{text}");
    }
    writeln!(
        out,
        "collective BTD of {} kernel{} matching '{}' in {} ({} terms, d3* = {} (in), d4* = {} (out); computed in {})",
        r.kernels.len(),
        if r.kernels.len() == 1 { "" } else { "s" },
        r.tensors,
        r.model,
        r.terms,
        r.rank[0],
        r.rank[1],
        r.dtype
    )?;
    let wn = r
        .kernels
        .iter()
        .map(|k| k.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let shapes: Vec<String> = r.kernels.iter().map(|k| report::shape(&k.shape)).collect();
    let ws = shapes.iter().map(|s| s.len()).max().unwrap_or(0).max(5);
    writeln!(out, "  {:<wn$}  {:<ws$}  relative error", "kernel", "shape")?;
    for (k, s) in r.kernels.iter().zip(&shapes) {
        writeln!(out, "  {:<wn$}  {s:<ws$}  {}", k.name, report::error(k.rel_error))?;
    }
    let ratio = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    let rows = vec![
        ("params, collective", report::count(r.params_collective)),
        (
            "params, independent BTDs",
            format!(
                "{} ({:.2}× the collective)",
                report::count(r.params_independent),
                ratio(r.params_independent, r.params_collective)
            ),
        ),
        (
            "params, original kernels",
            format!(
                "{} (compression {:.2}×)",
                report::count(r.params_original),
                r.compression
            ),
        ),
        (
            "error, concatenated kernel",
            report::error(r.rel_error_concatenated),
        ),
        (
            "iterations",
            format!(
                "{} of {} ({})",
                r.iterations,
                r.max_iter,
                if r.converged { "converged" } else { "not converged" }
            ),
        ),
        ("seconds", format!("{:.3}", r.seconds)),
    ];
    let mut rows = rows;
    if let Some(o) = &r.out {
        rows.push(("wrote", o.clone()));
    }
    report::table(&mut out, &rows)
}
