//! `gbtd verify ORIGINAL FACTORIZED`: for every conv that FACTORIZED's `gbtd.compress` metadata
//! lists, runs the original kernel and its three-conv chain on the same seeded Gaussian input and
//! compares the outputs with the kernels.
//!
//! # What "agree" means
//! The chain is linear, so its output is the conv with its kernel `W'` ([`LayerChain::kernel`]):
//! `y − y' = conv(W − W', x)`. For `x` with i.i.d. standard normal entries, every output entry
//! `y[i, k, p, q] = Σ W[k, m, a, b]·x[…]` has variance `Σ` of the squared kernel entries whose
//! taps fall inside the input (cross terms vanish), so with stride 1 and padding
//! `((kh − 1)/2, (kw − 1)/2)` on an `s × s` input
//!
//! `E‖conv(W, x)‖² = n · Σ_{a,b} ‖W[:, :, a, b]‖² · V(a) · V(b)`,
//!
//! where `V(a)` counts the output rows whose tap `a` reads inside the input (`s` for every tap
//! when there is no border). The expected output error is therefore the *border-weighted*
//! kernel error `e_w = sqrt(Σ ‖ΔW_ab‖² V V / Σ ‖W_ab‖² V V)` (`ΔW = W − W'`), which equals the
//! kernel error `‖W − W'‖/‖W‖` when every tap carries the same weight; `e_w` removes the border
//! effect exactly.
//!
//! What remains is sampling noise. Per output position the vector over output channels is
//! Gaussian with covariance `M = A Aᵀ` (`A` = the kernel as an `out × (in·kh·kw)` matrix), so its
//! squared norm has mean `tr M = ‖A‖²` and variance `2 tr M²`; positions whose patches do not
//! overlap are independent and each position overlaps at most `c = (2kh − 1)(2kw − 1)` others.
//! Over `P = n·ho·wo` positions the relative standard deviation of `‖conv(A, x)‖²` is at most
//! `σ(A) = sqrt(2 c ρ(A) / P)` with `ρ(A) = ‖AᵀA‖²_F / ‖A‖⁴_F ∈ [1/rank, 1]` (Cauchy–Schwarz on the
//! covariances of overlapping positions). The output error `sqrt(‖Δy‖²/‖y‖²)` then deviates from
//! `e_w` by a relative amount of at most about `(σ(ΔW) + σ(W)) / 2` per standard deviation, and
//! the two agree when
//!
//! `|e_out − e_w| ≤ 6 · (σ(ΔW) + σ(W)) / 2 · e_w + 16 · ε · sqrt(in·kh·kw)`
//!
//! (six of these upper-bound standard deviations, plus the rounding of the two convs in the
//! computation's precision `ε`). A layer that does not agree means that the chain's tensors do
//! not compute the kernel they represent (a wrong `groups`, permuted weights): `verify` fails.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, Array4, ArrayD, Axis, IxDyn};
use safetensors::Dtype;
use serde::Serialize;

use gbtd::Real;
use gbtd::conv::{Conv2d, conv2d};
use gbtd::formats::{self, AnyTensor, DType, Format, NamedTensor, TensorInfo};
use gbtd::layers::LayerChain;
use gbtd::random::{randn, rng};
use gbtd::tensor::{relative_error, validate_tensor};

use super::args::VerifyArgs;
use super::chain_file::{self, LayerEntry};
use super::report;

/// Standard deviations allowed between the output error and its expectation.
const Z: f64 = 6.0;

/// One layer's result.
#[derive(Debug, Clone, Serialize)]
struct LayerResult {
    name: String,
    shape: Vec<usize>,
    method: String,
    terms: usize,
    ranks: Vec<usize>,
    /// `‖W − W'‖ / ‖W‖`.
    kernel_error: f64,
    /// The error the writer recorded in the metadata, if any.
    recorded_error: Option<f64>,
    /// `‖y − y'‖ / ‖y‖`.
    output_error: f64,
    /// The border-weighted kernel error, the expectation of `output_error`.
    expected_output_error: f64,
    /// The allowed `|output_error − expected_output_error|`.
    tolerance: f64,
    agree: bool,
    bias: bool,
    /// The computation's precision: `f64` for an `f64` original kernel, else `f32`.
    dtype: &'static str,
    seconds: f64,
}

/// The `--json` report.
#[derive(Debug, Serialize)]
struct Report {
    original: String,
    factorized: String,
    input_size: usize,
    batch: usize,
    seed: u64,
    /// `f32`, `f64`, or `f32/f64` when layers differ.
    dtype: &'static str,
    max_error: Option<f64>,
    layers: Vec<LayerResult>,
    worst_layer: Option<String>,
    worst_output_error: f64,
    all_agree: bool,
    passed: bool,
    seconds: f64,
}

/// Runs `gbtd verify`.
pub fn run(args: &VerifyArgs) -> Result<()> {
    if let Some(m) = args.max_error
        && !(m.is_finite() && m >= 0.0)
    {
        bail!("--max-error {m}: give a finite number >= 0, e.g. --max-error 0.1");
    }
    let start = Instant::now();
    let meta = chain_file::read(&args.factorized)?;
    // Every listed conv must be in ORIGINAL (checked before any work).
    let originals = formats::list_tensors(&args.original)?;
    for l in &meta.layers {
        let w = format!("{}.weight", l.name);
        if !originals.iter().any(|t| t.name == w) {
            bail!(
                "layer '{}': {} has no tensor '{w}'; give the model that {} was compressed from",
                l.name,
                args.original.display(),
                args.factorized.display()
            );
        }
    }
    let sources = Sources {
        original: Source::open(&args.original)?,
        factorized: Source::open(&args.factorized)?,
    };
    let bar = progress_bar(args.quiet, meta.layers.len());
    let mut layers = Vec::with_capacity(meta.layers.len());
    for l in &meta.layers {
        bar.set_message(l.name.clone());
        let r = verify_layer(args, l, &originals, &sources).with_context(|| format!("layer '{}'", l.name))?;
        layers.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let worst = layers
        .iter()
        .max_by(|a, b| a.output_error.total_cmp(&b.output_error));
    let worst_output_error = worst.map_or(0.0, |w| w.output_error);
    let all_agree = layers.iter().all(|l| l.agree);
    let exceeding = args
        .max_error
        .map_or(0, |m| layers.iter().filter(|l| l.output_error > m).count());
    let report = Report {
        original: args.original.display().to_string(),
        factorized: args.factorized.display().to_string(),
        input_size: args.input_size,
        batch: args.batch,
        seed: args.seed,
        dtype: if layers.iter().all(|l| l.dtype == "f32") {
            "f32"
        } else if layers.iter().all(|l| l.dtype == "f64") {
            "f64"
        } else {
            "f32/f64"
        },
        max_error: args.max_error,
        worst_layer: worst.map(|w| w.name.clone()),
        worst_output_error,
        all_agree,
        passed: all_agree && exceeding == 0,
        seconds: start.elapsed().as_secs_f64(),
        layers,
    };
    print_report(&report, args.json).context("cannot write to standard output")?;
    if let Some(bad) = report.layers.iter().find(|l| !l.agree) {
        bail!(
            "layer '{}': output error {} does not agree with its kernel error {} (expected {} ± {}); the chain's tensors in {} do not compute the kernel they stand for",
            bad.name,
            report::error(bad.output_error),
            report::error(bad.kernel_error),
            report::error(bad.expected_output_error),
            report::error(bad.tolerance),
            report.factorized
        );
    }
    if let (Some(m), Some(w)) = (args.max_error, &report.worst_layer)
        && exceeding > 0
    {
        bail!(
            "layer '{w}' has output error {} > --max-error {m} ({exceeding} of {} layers exceed it); compress it with larger ranks or skip it",
            report::error(worst_output_error),
            report.layers.len()
        );
    }
    Ok(())
}

/// ORIGINAL and FACTORIZED.
struct Sources {
    original: Source,
    factorized: Source,
}

/// A tensor file read once: a `.safetensors` file is kept in memory and each tensor decoded
/// from it (instead of reading the whole file again per tensor); other formats go through
/// [`formats::read_tensor`], which reads only the tensor asked for.
struct Source {
    path: PathBuf,
    bytes: Option<Vec<u8>>,
}

impl Source {
    fn open(path: &Path) -> Result<Source> {
        let bytes = match Format::from_path(path)? {
            Format::Safetensors => {
                Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
            }
            _ => None,
        };
        Ok(Source {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// The floating-point tensor `name`, checked finite and non-empty.
    fn read(&self, name: &str) -> Result<NamedTensor> {
        if let Some(t) = self.bytes.as_deref().and_then(|b| decode_safetensor(b, name)) {
            let checked = match &t.data {
                AnyTensor::F32(a) => validate_tensor(&a.view(), &format!("tensor '{name}'")),
                AnyTensor::F64(a) => validate_tensor(&a.view(), &format!("tensor '{name}'")),
            };
            checked.map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
            return Ok(t);
        }
        // Missing names, other dtypes and other formats: the reader's own messages.
        Ok(formats::read_tensor(&self.path, Some(name))?)
    }
}

/// Decodes the `F32`, `F64`, `F16` or `BF16` tensor `name` of safetensors bytes (`None` for
/// anything else, left to [`formats::read_tensor`] to report).
fn decode_safetensor(bytes: &[u8], name: &str) -> Option<NamedTensor> {
    let st = safetensors::SafeTensors::deserialize(bytes).ok()?;
    let v = st.tensor(name).ok()?;
    let d = v.data();
    let shape = v.shape().to_vec();
    let f32s = |x: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&shape), x).ok();
    let (dtype, data) = match v.dtype() {
        Dtype::F32 => (
            DType::F32,
            AnyTensor::F32(f32s(
                d.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )?),
        ),
        Dtype::F16 => (
            DType::F16,
            AnyTensor::F32(f32s(
                d.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )?),
        ),
        Dtype::BF16 => (
            DType::BF16,
            AnyTensor::F32(f32s(
                d.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )?),
        ),
        Dtype::F64 => (
            DType::F64,
            AnyTensor::F64(
                ArrayD::from_shape_vec(
                    IxDyn(&shape),
                    d.chunks_exact(8)
                        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                        .collect(),
                )
                .ok()?,
            ),
        ),
        _ => return None,
    };
    Some(NamedTensor {
        name: name.to_string(),
        dtype,
        data,
    })
}

fn as4<T: Real>(t: &AnyTensor, name: &str) -> Result<Array4<T>> {
    t.to_real::<T>()
        .into_dimensionality()
        .map_err(|_| anyhow!("tensor '{name}' has shape {:?}, expected 4 modes", t.shape()))
}

/// Verifies one layer, in `f64` when the original kernel is `f64`, else in `f32`.
fn verify_layer(
    args: &VerifyArgs,
    l: &LayerEntry,
    originals: &[TensorInfo],
    src: &Sources,
) -> Result<LayerResult> {
    let t0 = Instant::now();
    let wname = format!("{}.weight", l.name);
    let orig = src.original.read(&wname)?;
    let bias = check_bias(args, l, originals, src)?;
    let mut r = if orig.dtype == DType::F64 {
        verify_typed::<f64>(args, l, &orig, &src.factorized)?
    } else {
        verify_typed::<f32>(args, l, &orig, &src.factorized)?
    };
    r.bias = bias;
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// Verifies one layer in precision `T` (`bias` and `seconds` are filled in by the caller).
fn verify_typed<T: Real>(
    args: &VerifyArgs,
    l: &LayerEntry,
    orig: &NamedTensor,
    factorized: &Source,
) -> Result<LayerResult> {
    let wname = &orig.name;
    if orig.data.shape() != l.shape.as_slice() {
        bail!(
            "shape mismatch: {} holds '{wname}' with shape {:?}, the metadata of {} says {:?}; give the model it was compressed from",
            args.original.display(),
            orig.data.shape(),
            args.factorized.display(),
            l.shape
        );
    }
    let w: Array4<T> = as4(&orig.data, wname)?;
    let names: Vec<&str> = l.chain.iter().map(|c| c.weight.as_str()).collect();
    let [reduce, grouped, expand] = [0, 1, 2].map(|i| -> Result<Array4<T>> {
        let t = factorized.read(names[i])?;
        as4(&t.data, names[i])
    });
    let chain = LayerChain::new(reduce?, grouped?, expand?, l.chain[1].groups).with_context(|| {
        format!(
            "the chain {} of {} is inconsistent",
            names.join(", "),
            args.factorized.display()
        )
    })?;
    let wc = chain.kernel()?;
    if wc.shape() != w.shape() {
        bail!(
            "shape mismatch: the chain in {} computes a {} kernel, the original is {}",
            args.factorized.display(),
            report::shape(wc.shape()),
            report::shape(w.shape())
        );
    }
    if w.iter().all(|v| *v == T::zero()) {
        bail!("the original kernel '{wname}' is all zeros: there is no output to compare");
    }
    let (_, i, kh, kw) = w.dim();
    let s = args.input_size;
    let geo = Conv2d::same(kh, kw);
    let (ho, wo) = geo.output_size((s, s), (kh, kw)).map_err(|_| {
        anyhow!("a {kh}×{kw} kernel does not fit --input-size {s}; use --input-size {kh} or more")
    })?;
    let x: Array4<T> = randn::<T>(&[args.batch, i, s, s], &mut rng(args.seed)).into_dimensionality()?;
    let y = conv2d(&x.view(), &w.view(), None, &geo)?;
    let yc = chain.forward(&x.view(), &geo, None)?;
    let output_error = relative_error(&y.view().into_dyn(), &yc.view().into_dyn())?;
    let kernel_error = relative_error(&w.view().into_dyn(), &wc.view().into_dyn())?;
    if !output_error.is_finite() || !kernel_error.is_finite() {
        bail!(
            "the outputs are not finite (NaN or infinity): the weights are too large for the computation's precision"
        );
    }
    let w64 = w.mapv(|v| v.to_f64_exact());
    let dw = &w64 - &wc.mapv(|v| v.to_f64_exact());
    let (vh, vw) = (
        taps_inside(ho, s, kh, geo.padding.0),
        taps_inside(wo, s, kw, geo.padding.1),
    );
    let expected = (weighted_sq(&dw, &vh, &vw) / weighted_sq(&w64, &vh, &vw)).sqrt();
    let positions = (args.batch * ho * wo) as f64;
    let overlap = ((2 * kh - 1) * (2 * kw - 1)) as f64;
    let sigma = |a: &Array4<f64>| (2.0 * overlap * concentration(a) / positions).sqrt();
    let floor = 16.0 * T::epsilon().to_f64_exact() * ((i * kh * kw) as f64).sqrt();
    let tolerance = Z * 0.5 * (sigma(&dw) + sigma(&w64)) * expected + floor;
    let r = chain.dims()?;
    Ok(LayerResult {
        name: l.name.clone(),
        shape: l.shape.clone(),
        method: l.method.clone(),
        terms: r.terms,
        ranks: if l.ranks.is_empty() {
            vec![r.d4_star, r.d3_star]
        } else {
            l.ranks.clone()
        },
        kernel_error,
        recorded_error: l.relative_error,
        output_error,
        expected_output_error: expected,
        tolerance,
        agree: (output_error - expected).abs() <= tolerance,
        bias: false,
        dtype: if T::epsilon().to_f64_exact() < 1e-10 {
            "f64"
        } else {
            "f32"
        },
        seconds: 0.0,
    })
}

/// Whether the layer has a bias; when it has, the chain's last conv must carry the original's
/// values unchanged (outputs are compared without biases: a bias adds the same to both).
fn check_bias(args: &VerifyArgs, l: &LayerEntry, originals: &[TensorInfo], src: &Sources) -> Result<bool> {
    let bname = format!("{}.bias", l.name);
    let has_orig = originals.iter().any(|t| t.name == bname);
    let chain_bias = l.chain[2].bias.clone();
    match (has_orig, chain_bias) {
        (false, None) => Ok(false),
        (true, None) => bail!(
            "{} has '{bname}' but the chain in {} has no bias; the compressed layer would lose it",
            args.original.display(),
            args.factorized.display()
        ),
        (false, Some(b)) => bail!(
            "the chain in {} has a bias '{b}' but {} has no '{bname}'",
            args.factorized.display(),
            args.original.display()
        ),
        (true, Some(b)) => {
            let a = src.original.read(&bname)?.data.to_real::<f64>();
            let c = src.factorized.read(&b)?.data.to_real::<f64>();
            let max = if a.shape() == c.shape() {
                a.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
            } else {
                f64::INFINITY
            };
            // f16/bf16 biases are widened exactly; an f64 bias stored as f32 is rounded.
            let tol = a.iter().fold(0.0f64, |m, v| m.max(v.abs())) * f64::from(f32::EPSILON);
            if max > tol {
                bail!(
                    "the bias '{b}' in {} differs from '{bname}' in {} (max |difference| {max:e}, shapes {:?} and {:?})",
                    args.factorized.display(),
                    args.original.display(),
                    c.shape(),
                    a.shape()
                );
            }
            Ok(true)
        }
    }
}

/// `V(a)` for each tap `a < k`: how many of the `n_out` output positions (stride 1, dilation 1,
/// padding `pad`) read tap `a` from inside an input of `n_in`.
fn taps_inside(n_out: usize, n_in: usize, k: usize, pad: usize) -> Vec<f64> {
    (0..k)
        .map(|a| (0..n_out).filter(|&p| p + a >= pad && p + a - pad < n_in).count() as f64)
        .collect()
}

/// `Σ_{a,b} ‖W[:, :, a, b]‖² · vh[a] · vw[b]`.
fn weighted_sq(w: &Array4<f64>, vh: &[f64], vw: &[f64]) -> f64 {
    let mut s = 0.0;
    for ((_, _, a, b), v) in w.indexed_iter() {
        s += v * v * vh[a] * vw[b];
    }
    s
}

/// `ρ(A) = ‖AᵀA‖²_F / ‖A‖⁴_F` of the kernel as an `out × (in·kh·kw)` matrix (computed on the
/// smaller Gram matrix; 0 for a zero kernel).
fn concentration(w: &Array4<f64>) -> f64 {
    let o = w.len_of(Axis(0));
    let a: Array2<f64> = w
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((o, w.len() / o))
        .expect("a standard-layout kernel reshapes to a matrix");
    let gram = if a.nrows() <= a.ncols() {
        a.dot(&a.t())
    } else {
        a.t().dot(&a)
    };
    let fro2: f64 = a.iter().map(|v| v * v).sum();
    if fro2 == 0.0 {
        return 0.0;
    }
    gram.iter().map(|v| v * v).sum::<f64>() / (fro2 * fro2)
}

fn progress_bar(quiet: bool, n: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    let style = ProgressStyle::with_template("verify [{bar:30}] {pos}/{len} layers, {msg} ({elapsed})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn print_report(r: &Report, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string(r).map_err(std::io::Error::other)?;
        return writeln!(out, "{text}");
    }
    writeln!(
        out,
        "verify {} against {} ({} layer{}; Gaussian input {}×C×{}×{}, seed {}, computed in {})",
        r.factorized,
        r.original,
        r.layers.len(),
        if r.layers.len() == 1 { "" } else { "s" },
        r.batch,
        r.input_size,
        r.input_size,
        r.seed,
        r.dtype
    )?;
    let head = [
        "layer",
        "shape",
        "chain",
        "kernel err",
        "output err",
        "expected ± tol",
        "agree",
    ];
    let rows: Vec<[String; 7]> = r
        .layers
        .iter()
        .map(|l| {
            [
                l.name.clone(),
                report::shape(&l.shape),
                format!(
                    "{} R={} ranks {}",
                    if l.method.is_empty() { "chain" } else { &l.method },
                    l.terms,
                    report::list(&l.ranks)
                ),
                report::error(l.kernel_error),
                report::error(l.output_error),
                format!(
                    "{} ± {}",
                    report::error(l.expected_output_error),
                    report::error(l.tolerance)
                ),
                if l.agree { "yes" } else { "NO" }.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..7)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .chain([head[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut s = String::from(" ");
        for (c, cell) in cells.iter().enumerate() {
            s.push_str(&format!(" {cell:<w$}", w = widths[c]));
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(&head))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    let verdict = match (r.all_agree, r.max_error) {
        (false, _) => "output and kernel errors DISAGREE".to_string(),
        (true, Some(m)) if r.worst_output_error > m => format!("all agree; above --max-error {m}"),
        (true, Some(m)) => format!("all agree; within --max-error {m}"),
        (true, None) => "all agree".to_string(),
    };
    match &r.worst_layer {
        Some(w) => writeln!(
            out,
            "totals: {} layers, worst output error {} ({w}), {verdict}, {:.2} s",
            r.layers.len(),
            report::error(r.worst_output_error),
            r.seconds
        ),
        None => writeln!(out, "totals: no compressed layers listed, nothing to verify"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_inside_counts_the_border() {
        // 3 taps, padding 1, 5 positions: tap 0 misses the first row, tap 2 the last.
        assert_eq!(taps_inside(5, 5, 3, 1), vec![4.0, 5.0, 4.0]);
        assert_eq!(taps_inside(4, 4, 1, 0), vec![4.0]);
    }

    #[test]
    fn concentration_is_one_over_the_rank_for_equal_singular_values() {
        let mut w = Array4::<f64>::zeros((4, 4, 1, 1));
        for k in 0..4 {
            w[[k, k, 0, 0]] = 2.0;
        }
        assert!((concentration(&w) - 0.25).abs() < 1e-15);
        let mut r1 = Array4::<f64>::zeros((3, 2, 1, 1));
        r1.fill(1.0);
        assert!((concentration(&r1) - 1.0).abs() < 1e-15);
    }
}
