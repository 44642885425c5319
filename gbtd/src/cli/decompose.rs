//! `gbtd decompose`: read a tensor, check the method's ranks and modes against its shape, run the
//! decomposition with a progress bar, report, and optionally save the factors.
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::ArrayD;
use serde::Serialize;

use gbtd::fit::{FitOptions, fit, needs_f64};
use gbtd::formats::{self, AnyTensor, FactorsFile};
use gbtd::options::{Init, IterOptions, Progress};
use gbtd::tensor::validate_modes;
use gbtd::{Method, Real};

use super::args::{DecomposeArgs, DtypeArg, InitArg, MethodArg};
use super::report;

/// What to compute: the method, the factorized modes with their ranks, and the number of terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The method (BTD with its terms).
    pub method: Method,
    /// Factorized modes (all modes for CP).
    pub modes: Vec<usize>,
    /// One rank per factorized mode (`[R]` for CP).
    pub ranks: Vec<usize>,
    /// Block terms (BTD), rank-one terms (CP), or 1 (Tucker).
    pub terms: usize,
}

fn method_of(m: MethodArg) -> Method {
    match m {
        MethodArg::Tucker => Method::Tucker,
        MethodArg::Tucker2 => Method::Tucker2,
        MethodArg::Cp => Method::Cp,
        // The number of terms is filled in by `plan`.
        MethodArg::Btd => Method::Btd { terms: 0 },
    }
}

/// Derives and checks the plan for a tensor of `shape` (every check that can be made before
/// the decomposition starts, each with its own message).
pub fn plan(args: &DecomposeArgs, shape: &[usize]) -> Result<Plan> {
    let method = method_of(args.method);
    let n = shape.len();
    if args.terms.is_some() && !method.is_btd() {
        bail!("--terms applies to --method btd only; for {method} drop it");
    }
    if args.modes.is_some() && method == Method::Cp {
        bail!("--modes does not apply to --method cp, which factorizes every mode");
    }
    let Some(rank) = &args.rank else {
        let example = match method {
            Method::Cp => "--rank 32".to_string(),
            Method::Tucker2 | Method::Btd { .. } if n >= 2 => "--rank 64,64".to_string(),
            _ => format!("--rank {}", list_of(n, 8)),
        };
        bail!("--rank is required for --method {method} (for example {example})");
    };
    let ranks = rank.clone();
    let rank = report::list(&ranks);
    if ranks.contains(&0) {
        bail!("--rank {rank}: ranks must be at least 1");
    }
    if method == Method::Cp {
        if ranks.len() != 1 {
            bail!(
                "--method cp takes a single rank R (the number of rank-one terms, e.g. --rank 32), got {} values",
                ranks.len()
            );
        }
        if n < 2 {
            bail!("--method cp needs a tensor of order >= 2, the input has shape {shape:?}");
        }
        return Ok(Plan {
            method,
            modes: (0..n).collect(),
            ranks: ranks.clone(),
            terms: ranks[0],
        });
    }
    let modes = match &args.modes {
        Some(m) => m.clone(),
        None => match method {
            Method::Tucker2 => vec![0, 1],
            Method::Btd { .. } if n == 4 => vec![0, 1],
            _ => (0..n).collect(),
        },
    };
    if method == Method::Tucker2 && modes.len() != 2 {
        bail!(
            "--method tucker2 factorizes exactly two modes, --modes gives {}",
            modes.len()
        );
    }
    validate_modes(&modes, n).map_err(|e| {
        anyhow!(
            "--modes {}: {e}; the input has shape {shape:?}",
            report::list(&modes)
        )
    })?;
    if ranks.len() != modes.len() {
        bail!(
            "--rank {rank} gives {} ranks but --method {method} factorizes {} modes ({}) of the input of shape {shape:?}; give one rank per mode, e.g. --rank {}",
            ranks.len(),
            modes.len(),
            report::list(&modes),
            report::list(&modes.iter().map(|&m| shape[m].min(8)).collect::<Vec<_>>())
        );
    }
    for (&m, &r) in modes.iter().zip(&ranks) {
        if r > shape[m] {
            bail!(
                "--rank {rank}: rank {r} of mode {m} exceeds that mode's dimension {} (shape {shape:?})",
                shape[m]
            );
        }
    }
    let terms = match method {
        Method::Btd { .. } => match args.terms {
            Some(0) => bail!("--terms must be at least 1"),
            Some(t) => t,
            None => bail!("--method btd needs --terms R, the number of block terms (for example --terms 8)"),
        },
        _ => 1,
    };
    Ok(Plan {
        method: if method.is_btd() {
            Method::Btd { terms }
        } else {
            method
        },
        modes,
        ranks,
        terms,
    })
}

fn list_of(n: usize, v: usize) -> String {
    vec![v.to_string(); n.max(1)].join(",")
}

/// The JSON report (`--json`).
#[derive(Debug, Serialize)]
struct Report {
    method: &'static str,
    input: String,
    tensor: Option<String>,
    shape: Vec<usize>,
    input_dtype: String,
    dtype: &'static str,
    modes: Vec<usize>,
    ranks: Vec<usize>,
    terms: usize,
    init: &'static str,
    seed: u64,
    max_iter: usize,
    tol: f64,
    rel_error: f64,
    params_before: usize,
    params_after: usize,
    compression: f64,
    iterations: usize,
    converged: bool,
    seconds: f64,
    error_history: Vec<f64>,
    out: Option<String>,
}

/// Result of the typed part of the run.
struct Outcome {
    rel_error: f64,
    params_after: usize,
    iterations: usize,
    converged: bool,
    seconds: f64,
    history: Vec<f64>,
}

/// Runs `gbtd decompose`.
pub fn run(args: &DecomposeArgs) -> Result<()> {
    if !(args.tol.is_finite() && args.tol >= 0.0) {
        bail!(
            "--tol {}: the tolerance must be a finite number >= 0 (0 runs all --max-iter sweeps)",
            args.tol
        );
    }
    if let Some(out) = &args.out {
        formats::check_output_path(out, &["safetensors"], "the factors", &args.input, "input")
            .context("--out")?;
    }
    let input = formats::read_tensor(&args.input, args.tensor.as_deref())?;
    let shape = input.data.shape().to_vec();
    let plan = plan(args, &shape)?;
    let use_f64 = match args.dtype {
        // f32 data near the ends of its range (beyond 2^±60) is decomposed in f64: its core
        // and weights (up to ‖X‖) would not fit in f32.
        DtypeArg::Auto => match &input.data {
            AnyTensor::F64(_) => true,
            AnyTensor::F32(a) => needs_f64(&a.view()),
        },
        DtypeArg::F32 => false,
        DtypeArg::F64 => true,
    };
    // The loaded array is decomposed in place when its precision is the one asked for; only a
    // change of precision copies it.
    let formats::NamedTensor {
        name: input_name,
        dtype: input_dtype,
        data,
    } = input;
    let outcome = match (use_f64, data) {
        (true, AnyTensor::F64(a)) => run_typed(a, &plan, args)?,
        (true, other) => run_typed(other.to_real::<f64>(), &plan, args)?,
        (false, AnyTensor::F32(a)) => run_typed(a, &plan, args)?,
        (false, other) => run_typed(other.to_real::<f32>(), &plan, args)?,
    };
    let params_before = shape.iter().product::<usize>();
    let report = Report {
        method: plan.method.as_str(),
        input: args.input.display().to_string(),
        tensor: args
            .tensor
            .clone()
            .or((!input_name.is_empty()).then_some(input_name)),
        shape,
        input_dtype: input_dtype.to_string(),
        dtype: if use_f64 { "f64" } else { "f32" },
        modes: plan.modes.clone(),
        ranks: plan.ranks.clone(),
        terms: plan.terms,
        init: match args.init {
            InitArg::Svd => "svd",
            InitArg::Random => "random",
        },
        seed: args.seed,
        max_iter: args.max_iter,
        tol: args.tol,
        rel_error: outcome.rel_error,
        params_before,
        params_after: outcome.params_after,
        compression: params_before as f64 / outcome.params_after.max(1) as f64,
        iterations: outcome.iterations,
        converged: outcome.converged,
        seconds: outcome.seconds,
        error_history: outcome.history,
        out: args.out.as_ref().map(|p| p.display().to_string()),
    };
    if report.compression < 1.0 && !args.json && !args.quiet {
        eprintln!("{}", growth_warning(report.params_before, report.params_after));
    }
    print_report(&report, args.json).context("cannot write to standard output")
}

/// The stderr warning for ranks that make the factorized layer larger than the original
/// (compression `params_before / params_after` below 1).
fn growth_warning(params_before: usize, params_after: usize) -> String {
    format!(
        "warning: these ranks make the layer larger than the original ({} parameters instead of {}, compression {:.2}×); choose smaller ranks to compress it",
        report::count(params_after),
        report::count(params_before),
        params_before as f64 / params_after.max(1) as f64
    )
}

fn print_report(r: &Report, json: bool) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        let text = serde_json::to_string(r).map_err(std::io::Error::other)?;
        use std::io::Write;
        writeln!(out, "{text}")?;
        return Ok(());
    }
    let source = match &r.tensor {
        Some(t) => format!("'{t}' in {}", r.input),
        None => r.input.clone(),
    };
    use std::io::Write;
    writeln!(
        out,
        "{} of {source} ({}, {}; computed in {})",
        r.method,
        report::shape(&r.shape),
        r.input_dtype,
        r.dtype
    )?;
    let terms = match r.method {
        "btd" => format!(", {} terms", r.terms),
        _ => String::new(),
    };
    let mut rows = vec![
        (
            "ranks",
            format!(
                "{} on modes {}{terms}",
                report::list(&r.ranks),
                report::list(&r.modes)
            ),
        ),
        ("relative error", report::error(r.rel_error)),
        ("params before", report::count(r.params_before)),
        ("params after", report::count(r.params_after)),
        ("compression", format!("{:.2}×", r.compression)),
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
    if let Some(o) = &r.out {
        rows.push(("factors", o.clone()));
    }
    report::table(&mut out, &rows)
}

/// Decomposes `x` in precision `T` ([`gbtd::fit::fit`]: scaling and error included), timing only
/// the library call, and writes the factors.
fn run_typed<T: Real>(x: ArrayD<T>, plan: &Plan, args: &DecomposeArgs) -> Result<Outcome> {
    let bar = progress_bar(args.quiet, args.max_iter, plan.method);
    let tick = |sweep: usize, err: f64| {
        bar.set_position(sweep as u64);
        bar.set_message(format!("rel. error {}", report::error(err)));
    };
    let opts = FitOptions {
        method: plan.method,
        modes: plan.modes.clone(),
        ranks: plan.ranks.clone(),
        iter: IterOptions {
            n_iter_max: args.max_iter,
            tol: args.tol,
            seed: args.seed,
        },
        init: match args.init {
            InitArg::Svd => Init::Svd,
            InitArg::Random => Init::Random,
        },
        progress: Progress::new(&tick),
    };
    let start = Instant::now();
    let result = fit(&x.view(), &opts);
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let fitted = result
        .map_err(|e| match e {
            gbtd::GbtdError::NonFinite(m) if m.contains("do not fit the range") => {
                anyhow!("{m}; rerun with --dtype f64")
            }
            e => anyhow::Error::new(e),
        })
        .with_context(|| format!("{} failed", plan.method))?;
    let rel_error = fitted.rel_error;
    let decomposition = fitted.decomposition.into_dyn();
    let conv = decomposition.convergence().clone();
    let params_after = decomposition.n_params();
    if let Some(out) = &args.out {
        let mut info = BTreeMap::new();
        info.insert("source".to_string(), args.input.display().to_string());
        if let Some(t) = &args.tensor {
            info.insert("tensor".to_string(), t.clone());
        }
        info.insert("rel_error".to_string(), format!("{rel_error:e}"));
        info.insert("iterations".to_string(), conv.iterations.to_string());
        info.insert("converged".to_string(), conv.converged.to_string());
        info.insert(
            "generator".to_string(),
            format!("gbtd {}", env!("CARGO_PKG_VERSION")),
        );
        let file = FactorsFile {
            method: plan.method,
            decomposition,
            info,
        };
        formats::write_factors(out, &file)?;
    }
    Ok(Outcome {
        rel_error,
        params_after,
        iterations: conv.iterations,
        converged: conv.converged,
        seconds,
        history: conv.errors,
    })
}

fn progress_bar(quiet: bool, max_iter: usize, method: Method) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(max_iter as u64);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} sweeps, {msg} ({elapsed})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(method.as_str());
    bar
}
