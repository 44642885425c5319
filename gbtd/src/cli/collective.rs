//! `gbtd collective MODEL --tensors REGEX --terms R --rank D3,D4`: the collective factorization
//! ([`gbtd::collective::collective_btd`]) of the conv kernels whose names match, with a report of
//! each kernel's error and of the parameters against independent BTDs and the originals, and
//! optionally a compressed checkpoint in the format of `gbtd compress --out`
//! ([`gbtd::compress::writer::write_collective`]).
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::ArrayD;
use regex::Regex;
use serde::Serialize;

use gbtd::Real;
use gbtd::collective::{ChannelRanks, CollectiveOptions, collective_btd};
use gbtd::compress::writer::{check_replaceable, write_collective};
use gbtd::formats::{self, DType, NamedTensor};
use gbtd::options::{Init, IterOptions};

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
    if let Some(out) = &args.out {
        formats::check_output_path(
            out,
            &["safetensors"],
            "the compressed checkpoint",
            &args.model,
            "model",
        )
        .context("--out")?;
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
        let names: Vec<&str> = matching.iter().map(|t| t.name.as_str()).collect();
        check_replaceable(&args.model, &listed, &names).context("--out")?;
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
    let opts = CollectiveOptions::new(args.terms, ChannelRanks::new(d4s, d3s))
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
        write_collective(&args.model, kernels, &c, &args.tensors, out)?;
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
