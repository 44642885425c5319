//! `gbtd decompose`: read a tensor, check the method's ranks and modes against its shape, run the
//! decomposition with a progress bar, report, and optionally save the factors.
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::ArrayD;
use serde::Serialize;

use gbtd::btd::{BtdOptions, btd};
use gbtd::cp::{CpOptions, parafac};
use gbtd::formats::{self, AnyTensor, FactorsFile};
use gbtd::options::{Init, IterOptions};
use gbtd::tensor::{relative_error, validate_modes};
use gbtd::tucker::{TuckerOptions, tucker};
use gbtd::{Decomposition, Method, Real};

use super::args::{DecomposeArgs, DtypeArg, InitArg, MethodArg};
use super::report;

/// What to compute: the method, the factorized modes with their ranks, and the number of terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The method.
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
        MethodArg::Btd => Method::Btd,
    }
}

/// Derives and checks the plan for a tensor of `shape` (every check that can be made before
/// the decomposition starts, each with its own message).
pub fn plan(args: &DecomposeArgs, shape: &[usize]) -> Result<Plan> {
    let method = method_of(args.method);
    let n = shape.len();
    if args.terms.is_some() && method != Method::Btd {
        bail!("--terms applies to --method btd only; for {method} drop it");
    }
    if args.modes.is_some() && method == Method::Cp {
        bail!("--modes does not apply to --method cp, which factorizes every mode");
    }
    let Some(rank) = &args.rank else {
        let example = match method {
            Method::Cp => "--rank 32".to_string(),
            Method::Tucker2 | Method::Btd if n >= 2 => "--rank 64,64".to_string(),
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
            Method::Btd if n == 4 => vec![0, 1],
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
        Method::Btd => match args.terms {
            Some(0) => bail!("--terms must be at least 1"),
            Some(t) => t,
            None => bail!("--method btd needs --terms R, the number of block terms (for example --terms 8)"),
        },
        _ => 1,
    };
    Ok(Plan {
        method,
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
            AnyTensor::F32(a) => scale_exponent(a).abs() > 60,
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

/// Decomposes `x` in precision `T`, timing only the library call, then measures the error on the
/// reconstruction and writes the factors.
fn run_typed<T: Real>(x: ArrayD<T>, plan: &Plan, args: &DecomposeArgs) -> Result<Outcome> {
    let iter = IterOptions {
        n_iter_max: args.max_iter,
        tol: args.tol,
        seed: args.seed,
    };
    let init = || match args.init {
        InitArg::Svd => Init::<T>::Svd,
        InitArg::Random => Init::<T>::Random,
    };
    let bar = progress_bar(args.quiet, args.max_iter, plan.method);
    let tick = |sweep: usize, err: f64| {
        bar.set_position(sweep as u64);
        bar.set_message(format!("rel. error {}", report::error(err)));
    };
    // Entries near the type's limits (f32 values near 3e38 square to infinity in the Gram
    // matrices): decompose X·2^-e, then scale the result back by 2^e (exact, powers of two);
    // the relative error is scale-invariant.
    let exponent = scale_exponent(&x);
    let scaled = (exponent != 0).then(|| {
        let down = T::from_f64_lossy((-f64::from(exponent)).exp2());
        x.mapv(|v| v * down)
    });
    let up = T::from_f64_lossy(f64::from(exponent).exp2());
    let xv = scaled.as_ref().unwrap_or(&x).view();
    let start = Instant::now();
    // The relative error, on the scaled problem (its reconstruction is always representable):
    // from the decomposition's own sums when they resolve it (see `fast_error_resolves`),
    // otherwise from the reconstruction.
    let scaled_error = |fast: Option<f64>, d: &dyn Decomposition<T>| match fast {
        Some(e) if fast_error_resolves::<T>(e) => Ok(e),
        _ => relative_error(&xv, &d.reconstruct()?.view()),
    };
    let result: gbtd::Result<(Box<dyn Decomposition<T>>, f64)> = match plan.method {
        Method::Tucker | Method::Tucker2 => {
            let opts = TuckerOptions::new(plan.ranks.clone())
                .with_modes(plan.modes.clone())
                .with_iter(iter)
                .with_init(init())
                .with_progress(&tick);
            tucker(&xv, &opts).and_then(|mut d| {
                let fast = tucker_error_from_core(sq_norm(&xv), &d.core.view());
                let e = scaled_error(Some(fast), &d)?;
                d.core.mapv_inplace(|v| v * up);
                Ok((Box::new(d) as _, e))
            })
        }
        Method::Cp => {
            let opts = CpOptions::new(plan.terms)
                .with_iter(iter)
                .with_init(init())
                .with_progress(&tick);
            parafac(&xv, &opts).and_then(|mut d| {
                // CP-ALS tracks ‖X − X̂‖² = ‖X‖² − 2⟨X, X̂⟩ + ‖X̂‖² of the model it returns, from
                // its last MTTKRP and the factors' Gram matrices.
                let fast = d.convergence.rel_error();
                let e = scaled_error(Some(fast), &d)?;
                d.weights.mapv_inplace(|v| v * up);
                Ok((Box::new(d) as _, e))
            })
        }
        Method::Btd => {
            let opts = BtdOptions::new(plan.terms, plan.ranks.clone())
                .with_modes(plan.modes.clone())
                .with_iter(iter)
                .with_init(init())
                .with_progress(&tick);
            btd(&xv, &opts).and_then(|mut d| {
                let e = scaled_error(None, &d)?;
                for t in &mut d.terms {
                    t.core.mapv_inplace(|v| v * up);
                }
                Ok((Box::new(d) as _, e))
            })
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (decomposition, rel_error) = result.with_context(|| format!("{} failed", plan.method))?;
    if exponent != 0
        && decomposition
            .named_tensors()
            .iter()
            .any(|(_, t)| t.iter().any(|v| !v.to_f64_exact().is_finite()))
    {
        bail!(
            "the factors of this tensor (entries up to 2^{exponent}) do not fit the range of f32; rerun with --dtype f64"
        );
    }
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

/// Smallest relative error, in units of `sqrt(ε)` of the element type, that is reported from a
/// decomposition's own sums instead of a reconstruction (see [`fast_error_resolves`]).
const FAST_ERROR_MIN: f64 = 1e4;

/// Whether a relative error `e` obtained by cancellation, `e² = (‖X‖² − …)/‖X‖²` with terms
/// known to a few `ε` relative, is accurate: the absolute error of `e²` is about `c·ε` (`c` a small
/// constant), so `e` is known to `c·ε/(2e²)` relative, below `c·5·10⁻⁹` when
/// `e ≥ 10⁴·sqrt(ε)` (`1.5·10⁻⁴` in `f64`; never in `f32`, where the bound exceeds 1 and the
/// error always comes from the reconstruction).
fn fast_error_resolves<T: Real>(e: f64) -> bool {
    e.is_finite() && e >= FAST_ERROR_MIN * T::epsilon().to_f64_exact().sqrt()
}

/// `‖X − X̂‖ / ‖X‖` of a Tucker decomposition from its core alone: with orthonormal factors and
/// the core the projection `G = X ×_m A_mᵀ` (what [`tucker`] returns), `‖X − X̂‖² = ‖X‖² − ‖G‖²`.
/// `nx2` is `‖X‖²`; 0 for a zero `X`.
fn tucker_error_from_core<T: Real>(nx2: f64, core: &ndarray::ArrayViewD<'_, T>) -> f64 {
    if nx2 <= 0.0 {
        return 0.0;
    }
    ((nx2 - sq_norm(core)).max(0.0) / nx2).sqrt()
}

/// `‖X‖²` accumulated in `f64`, over a contiguous slice with eight partial sums (so that the loop
/// vectorises), or element by element for other layouts.
fn sq_norm<T: Real>(x: &ndarray::ArrayViewD<'_, T>) -> f64 {
    const LANES: usize = 8;
    let Some(a) = x.as_slice_memory_order() else {
        return x.iter().map(|v| v.to_f64_exact().powi(2)).sum();
    };
    let mut acc = [0.0f64; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|v| v.to_f64_exact().powi(2)).sum();
    for c in chunks {
        for (s, v) in acc.iter_mut().zip(c) {
            let v = v.to_f64_exact();
            *s += v * v;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The exponent `e` with `max |x| · 2^-e` in `[1, 2)` when `max |x|` lies outside
/// `[2^-30, 2^30]`, else 0 (no scaling): squares and Gram matrices of the scaled tensor stay
/// far from overflow and underflow in `f32`.
fn scale_exponent<T: Real>(x: &ArrayD<T>) -> i32 {
    let max = x.iter().fold(0.0f64, |m, v| m.max(v.to_f64_exact().abs()));
    if max == 0.0 || !max.is_finite() || (2f64.powi(-30)..=2f64.powi(30)).contains(&max) {
        return 0;
    }
    max.log2().floor() as i32
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

#[cfg(test)]
mod tests {
    use super::*;
    use gbtd::random::{randn, rng};

    /// Random data of shape `shape` with a low multilinear rank part and some noise.
    fn data(shape: &[usize], seed: u64, noise: f64) -> ArrayD<f64> {
        let mut g = rng(seed);
        let small: Vec<usize> = shape.iter().map(|&d| d.div_ceil(2)).collect();
        let core = randn::<f64>(&small, &mut g);
        let factors: Vec<ndarray::Array2<f64>> = shape
            .iter()
            .zip(&small)
            .map(|(&d, &k)| gbtd::random::randn2::<f64>(d, k, &mut g))
            .collect();
        let views: Vec<_> = factors.iter().map(|f| f.view()).collect();
        let mut x = gbtd::tensor::multi_mode_dot(&core.view(), &views, None, None, false).unwrap();
        x.scaled_add(noise, &randn::<f64>(shape, &mut g));
        x
    }

    /// The error from the core (Tucker) and from CP-ALS's own sums equals the error of the
    /// reconstruction to 1e-6 relative wherever the guard accepts it, on random cases.
    #[test]
    fn fast_errors_equal_reconstructed_errors() {
        let cases: [(&[usize], &[usize]); 4] = [
            (&[12, 10, 3, 3], &[4, 3]),
            (&[9, 8, 7], &[3, 3, 3]),
            (&[20, 6, 5], &[5, 2, 2]),
            (&[16, 16, 3, 3], &[6, 6]),
        ];
        let mut accepted = 0;
        for (i, (shape, rank)) in cases.into_iter().enumerate() {
            for (j, noise) in [1.0, 0.1, 0.01].into_iter().enumerate() {
                let x = data(shape, 10 * i as u64 + j as u64, noise);
                let xv = x.view();
                let modes: Vec<usize> = (0..rank.len()).collect();
                let t = tucker(
                    &xv,
                    &TuckerOptions::new(rank.to_vec())
                        .with_modes(modes)
                        .with_n_iter_max(5),
                )
                .unwrap();
                let fast = tucker_error_from_core(sq_norm(&xv), &t.core.view());
                let slow = relative_error(&xv, &t.reconstruct().unwrap().view()).unwrap();
                assert!(fast_error_resolves::<f64>(fast), "{shape:?}: Tucker error {fast}");
                assert!(
                    (fast - slow).abs() <= 1e-6 * slow,
                    "{shape:?}: Tucker {fast} vs {slow}"
                );
                for r in [2, 5] {
                    let cp = parafac(&xv, &CpOptions::new(r).with_n_iter_max(10)).unwrap();
                    let fast = cp.convergence.rel_error();
                    let slow = relative_error(&xv, &cp.reconstruct().unwrap().view()).unwrap();
                    if fast_error_resolves::<f64>(fast) {
                        accepted += 1;
                        assert!(
                            (fast - slow).abs() <= 1e-6 * slow,
                            "{shape:?}: CP {fast} vs {slow}"
                        );
                    }
                }
            }
        }
        assert!(accepted >= 20, "the guard accepted only {accepted} CP errors");
    }

    /// Exact low-rank data: the fast error is pure rounding, and the guard refuses it; in f32 it
    /// is never accepted.
    #[test]
    fn the_guard_refuses_errors_below_the_resolution() {
        let x = data(&[10, 8, 6], 3, 0.0);
        let t = tucker(&x.view(), &TuckerOptions::new(vec![5, 4, 3]).with_n_iter_max(2)).unwrap();
        let fast = tucker_error_from_core(sq_norm(&x.view()), &t.core.view());
        assert!(!fast_error_resolves::<f64>(fast), "{fast}");
        assert!(fast_error_resolves::<f64>(1e-3));
        assert!(!fast_error_resolves::<f32>(0.9));
        assert!(!fast_error_resolves::<f64>(f64::NAN));
        assert_eq!(tucker_error_from_core::<f64>(0.0, &x.view()), 0.0);
    }

    /// The lane-wise sum of squares equals the plain sum, on contiguous and strided views.
    #[test]
    fn sq_norm_matches_the_plain_sum() {
        let x = randn::<f64>(&[7, 5, 3], &mut rng(4));
        let plain: f64 = x.iter().map(|v| v * v).sum();
        assert!((sq_norm(&x.view()) - plain).abs() <= 1e-12 * plain);
        let t = x.view().reversed_axes();
        assert!((sq_norm(&t) - plain).abs() <= 1e-12 * plain);
        let sl = x.slice(ndarray::s![.., 1.., ..]).into_dyn();
        let want: f64 = sl.iter().map(|v| v * v).sum();
        assert!((sq_norm(&sl) - want).abs() <= 1e-12 * want);
    }
}
