//! Verifying a compressed checkpoint (the library behind `gbtd verify`): for every conv that its
//! `gbtd.compress` description lists ([`super::writer::read_description`]), the original kernel
//! and its three-conv chain are run on the same seeded Gaussian input, and the outputs are
//! compared with the kernels. [`verify_chain`] does this for one kernel and its chain,
//! [`verify_checkpoint`] for the files.
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
//! not compute the kernel they represent (a wrong `groups`, permuted weights): the checkpoint
//! fails ([`Verdict::Disagree`]).
//!
//! # Files
//! The original kernel `NAME.weight` is read from the original model (`.safetensors`, `.npz` or a
//! PyTorch checkpoint), the chain's tensors from the compressed checkpoint; each layer is
//! computed in `f64` when its original kernel is `f64`, else in `f32`. A bias `NAME.bias` must be
//! carried unchanged by the chain's last conv (outputs are compared without biases: a bias adds
//! the same to both).
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Axis};
use thiserror::Error;

use super::chain::{GroupedChain, SvdChain};
use super::model::ModelFile;
use super::writer::{ChainConv, DescribedChain, DescribedLayer, DescriptionError, read_description};
use crate::conv::{Conv2d, conv2d};
use crate::error::GbtdError;
use crate::formats::{AnyTensor, DType, IoError, TensorInfo};
use crate::layers::LayerChain;
use crate::options::{Progress, Stage};
use crate::random::{randn, rng};
use crate::real::Real;
use crate::tensor::relative_error;

/// Standard deviations allowed between the output error and its expectation.
const Z: f64 = 6.0;

/// The random input and the pass limit.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VerifyOptions {
    /// Height and width `s` of the input (at least the kernels' height and width).
    pub input_size: usize,
    /// Images `n` of the input.
    pub batch: usize,
    /// Seed of the input's i.i.d. standard normal entries.
    pub seed: u64,
    /// The largest relative output error that passes (`None`: any).
    pub max_error: Option<f64>,
}

impl Default for VerifyOptions {
    /// 4 images of 56 × 56, seed 0, no limit.
    fn default() -> Self {
        VerifyOptions {
            input_size: 56,
            batch: 4,
            seed: 0,
            max_error: None,
        }
    }
}

impl VerifyOptions {
    /// Checks that `input_size` and `batch` are at least 1 and `max_error` is finite and `>= 0`.
    pub fn validate(&self) -> Result<(), VerifyError> {
        if let Some(m) = self.max_error
            && !(m.is_finite() && m >= 0.0)
        {
            return Err(VerifyError::MaxError(m));
        }
        if self.input_size == 0 || self.batch == 0 {
            return Err(VerifyError::Options(format!(
                "input size {} and batch {}: both must be at least 1",
                self.input_size, self.batch
            )));
        }
        Ok(())
    }
}

/// One kernel against its chain ([`verify_chain`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainCheck {
    /// `‖W − W'‖ / ‖W‖`, `W'` the chain's kernel.
    pub kernel_error: f64,
    /// `‖y − y'‖ / ‖y‖` on the random input.
    pub output_error: f64,
    /// The border-weighted kernel error `e_w`, the expectation of `output_error`.
    pub expected_output_error: f64,
    /// The allowed `|output_error − expected_output_error|`.
    pub tolerance: f64,
    /// Whether `output_error` is within `tolerance` of its expectation.
    pub agree: bool,
    /// The computation's precision, [`DType::F32`] or [`DType::F64`].
    pub dtype: DType,
}

/// One layer of a verified checkpoint.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VerifiedLayer {
    /// The module name `NAME`.
    pub name: String,
    /// The weight's shape: `(out, in/G, kh, kw)`, or `(out, in)` for a linear layer.
    pub shape: Vec<usize>,
    /// The method the description records (empty when it records none).
    pub method: String,
    /// `R`, the groups of the chain's middle conv.
    pub terms: usize,
    /// The ranks the description records, else the chain's `[d4*, d3*]`.
    pub ranks: Vec<usize>,
    /// `‖W − W'‖ / ‖W‖`.
    pub kernel_error: f64,
    /// The kernel error the writer recorded, if any.
    pub recorded_error: Option<f64>,
    /// `‖y − y'‖ / ‖y‖`.
    pub output_error: f64,
    /// The border-weighted kernel error, the expectation of `output_error`.
    pub expected_output_error: f64,
    /// The allowed `|output_error − expected_output_error|`.
    pub tolerance: f64,
    /// Whether the output error agrees with the kernel error.
    pub agree: bool,
    /// Whether the layer has a bias (checked equal in both files).
    pub bias: bool,
    /// The computation's precision: `f64` for an `f64` original kernel, else `f32`.
    #[cfg_attr(feature = "serde", serde(serialize_with = "as_text"))]
    pub dtype: DType,
    /// Seconds spent on the layer.
    pub seconds: f64,
}

/// The result of [`verify_checkpoint`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VerifyReport {
    /// The original model as given.
    pub original: String,
    /// The compressed checkpoint as given.
    pub factorized: String,
    /// The input's height and width.
    pub input_size: usize,
    /// The input's images.
    pub batch: usize,
    /// The input's seed.
    pub seed: u64,
    /// `f32`, `f64`, or `f32/f64` when layers differ.
    pub dtype: &'static str,
    /// The pass limit on every layer's output error.
    pub max_error: Option<f64>,
    /// One entry per listed layer, in the description's order.
    pub layers: Vec<VerifiedLayer>,
    /// The layer of the largest output error (`None` when no layer is listed).
    pub worst_layer: Option<String>,
    /// Its output error (0 when no layer is listed).
    pub worst_output_error: f64,
    /// Whether every layer agrees.
    pub all_agree: bool,
    /// Whether every layer agrees and none exceeds `max_error`.
    pub passed: bool,
    /// Seconds spent.
    pub seconds: f64,
}

/// Why a report passes or fails ([`VerifyReport::verdict`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict<'a> {
    /// Every layer agrees, and none exceeds the limit.
    Pass,
    /// The first layer whose output error does not agree with its kernel error: the chain's
    /// tensors do not compute the kernel they stand for.
    Disagree(&'a VerifiedLayer),
    /// Every layer agrees but `exceeding` of them have an output error above `max_error`; `worst`
    /// has the largest.
    AboveMaxError {
        /// The layer of the largest output error.
        worst: &'a VerifiedLayer,
        /// The limit.
        max_error: f64,
        /// How many layers exceed it.
        exceeding: usize,
    },
}

impl VerifyReport {
    /// Whether the checkpoint passes, and if not, why.
    pub fn verdict(&self) -> Verdict<'_> {
        if let Some(bad) = self.layers.iter().find(|l| !l.agree) {
            return Verdict::Disagree(bad);
        }
        let exceeding = |m: f64| self.layers.iter().filter(|l| l.output_error > m).count();
        match (self.max_error, self.worst()) {
            (Some(m), Some(worst)) if exceeding(m) > 0 => Verdict::AboveMaxError {
                worst,
                max_error: m,
                exceeding: exceeding(m),
            },
            _ => Verdict::Pass,
        }
    }

    fn worst(&self) -> Option<&VerifiedLayer> {
        self.layers
            .iter()
            .max_by(|a, b| a.output_error.total_cmp(&b.output_error))
    }
}

/// Errors of [`verify_checkpoint`] and [`verify_chain`].
#[derive(Debug, Error)]
pub enum VerifyError {
    /// A file could not be read, or a tensor in it is unusable.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The compressed checkpoint's description is missing or invalid.
    #[error(transparent)]
    Description(#[from] DescriptionError),
    /// A convolution or error computation failed.
    #[error(transparent)]
    Gbtd(#[from] GbtdError),
    /// `max_error` is negative or not finite.
    #[error("maximum output error {0}: give a finite number >= 0, e.g. 0.1")]
    MaxError(f64),
    /// Another option is out of range.
    #[error("{0}")]
    Options(String),
    /// A listed layer's kernel is not in the original model.
    #[error(
        "layer '{layer}': {} has no tensor '{layer}.weight'; give the model that {} was compressed from",
        original.display(),
        factorized.display()
    )]
    MissingKernel {
        /// The layer.
        layer: String,
        /// The original model.
        original: PathBuf,
        /// The compressed checkpoint.
        factorized: PathBuf,
    },
    /// Verifying one layer failed.
    #[error("layer '{layer}': {source}")]
    Layer {
        /// The layer.
        layer: String,
        /// What failed.
        source: Box<VerifyError>,
    },
    /// A tensor that should be a conv kernel has another number of modes.
    #[error("tensor '{tensor}' has shape {shape:?}, expected 4 modes")]
    NotAKernel {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The original kernel's shape is not the one the description records.
    #[error(
        "shape mismatch: the original model holds '{tensor}' with shape {shape:?}, the compressed checkpoint's description says {recorded:?}; give the model it was compressed from"
    )]
    RecordedShape {
        /// The kernel.
        tensor: String,
        /// Its shape in the original model.
        shape: Vec<usize>,
        /// The shape the description records.
        recorded: Vec<usize>,
    },
    /// The chain's tensors do not form a chain.
    #[error("the chain {names} is inconsistent: {source}")]
    InconsistentChain {
        /// Its three weight names.
        names: String,
        /// What does not fit.
        source: GbtdError,
    },
    /// The chain computes a kernel of another shape than the original.
    #[error(
        "shape mismatch: the chain computes a {} kernel, the original is {}",
        dims(chain),
        dims(original)
    )]
    ChainShape {
        /// The chain's kernel shape.
        chain: Vec<usize>,
        /// The original's.
        original: Vec<usize>,
    },
    /// An all-zero original kernel: there is no output error to measure.
    #[error("the original kernel is all zeros: there is no output to compare")]
    ZeroKernel,
    /// The input is smaller than the kernel.
    #[error(
        "a {kh}×{kw} kernel does not fit an input of {input_size}×{input_size}; use an input size of {} or more",
        kh.max(kw)
    )]
    InputTooSmall {
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// The input size given.
        input_size: usize,
    },
    /// The outputs overflowed the computation's precision.
    #[error(
        "the outputs are not finite (NaN or infinity): the weights are too large for the computation's precision"
    )]
    NotFinite,
    /// The original has a bias that the chain lost.
    #[error("the original model has '{bias}' but the chain has no bias; the compressed layer would lose it")]
    BiasLost {
        /// The original's bias tensor.
        bias: String,
    },
    /// The chain has a bias that the original does not.
    #[error("the chain has a bias '{chain_bias}' but the original model has no '{bias}'")]
    BiasAdded {
        /// The chain's bias tensor.
        chain_bias: String,
        /// The bias tensor the original lacks.
        bias: String,
    },
    /// The chain's bias differs from the original's.
    #[error(
        "the chain's bias '{chain_bias}' differs from the original's '{bias}' (max |difference| {max_difference:e}, shapes {chain_shape:?} and {shape:?})"
    )]
    BiasDiffers {
        /// The chain's bias tensor.
        chain_bias: String,
        /// Its shape.
        chain_shape: Vec<usize>,
        /// The original bias tensor.
        bias: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The largest absolute difference (infinite when the shapes differ).
        max_difference: f64,
    },
}

/// `[512, 512, 3, 3]` → `512×512×3×3`.
fn dims(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

#[cfg(feature = "serde")]
fn as_text<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// Runs `kernel` `W` (PyTorch layout `(out, in, kh, kw)`) and `chain` on the same input of
/// `opts.batch` images of `in × s × s` i.i.d. standard normal entries (`s = opts.input_size`,
/// seeded by `opts.seed`), stride 1 and "same" padding `((kh − 1)/2, (kw − 1)/2)`, no bias, in
/// precision `T`, and compares the output error with the kernel error (see the module
/// documentation). [`verify_grouped`] with one group.
pub fn verify_chain<T: Real>(
    kernel: &ArrayView4<'_, T>,
    chain: &LayerChain<T>,
    opts: &VerifyOptions,
) -> Result<ChainCheck, VerifyError> {
    verify_grouped(kernel, &GroupedChain::new(vec![chain.clone()])?, opts)
}

/// [`verify_chain`] for a conv with `G` groups (`G` = the chain's groups): the kernel is
/// `(out, in/G, kh, kw)`, the input has `in` channels, and both convs run with `G` groups. The
/// derivation of the module documentation holds group by group (each output entry sums over its
/// group's `in/G·kh·kw` taps); `ρ` is taken over the whole `out × (in/G·kh·kw)` matrix, which can
/// only overstate it (outputs of different groups read independent inputs), so the tolerance stays
/// an upper bound.
///
/// Errors: [`VerifyError::ChainShape`] when the chain's kernel is not `W`'s shape,
/// [`VerifyError::ZeroKernel`], [`VerifyError::InputTooSmall`] when `s` is below `kh` or `kw`,
/// [`VerifyError::NotFinite`] when an output overflows, the options' errors and the chain's.
pub fn verify_grouped<T: Real>(
    kernel: &ArrayView4<'_, T>,
    chain: &GroupedChain<T>,
    opts: &VerifyOptions,
) -> Result<ChainCheck, VerifyError> {
    opts.validate()?;
    let wc = chain.kernel()?;
    if wc.shape() != kernel.shape() {
        return Err(VerifyError::ChainShape {
            chain: wc.shape().to_vec(),
            original: kernel.shape().to_vec(),
        });
    }
    if kernel.iter().all(|v| *v == T::zero()) {
        return Err(VerifyError::ZeroKernel);
    }
    let (_, ig, kh, kw) = kernel.dim();
    let g = chain.groups();
    let s = opts.input_size;
    let geo = Conv2d::same(kh, kw).with_groups(g);
    let (ho, wo) = geo
        .output_size((s, s), (kh, kw))
        .map_err(|_| VerifyError::InputTooSmall {
            kh,
            kw,
            input_size: s,
        })?;
    let x: Array4<T> = randn::<T>(&[opts.batch, ig * g, s, s], &mut rng(opts.seed))
        .into_dimensionality()
        .map_err(GbtdError::from)?;
    let y = conv2d(&x.view(), kernel, None, &geo)?;
    let yc = chain.forward(&x.view(), &geo, None)?;
    let w64 = kernel.mapv(|v| v.to_f64_exact());
    let dw = &w64 - &wc.mapv(|v| v.to_f64_exact());
    let (vh, vw) = (
        taps_inside(ho, s, kh, geo.padding.0),
        taps_inside(wo, s, kw, geo.padding.1),
    );
    let expected = (weighted_sq(&dw, &vh, &vw) / weighted_sq(&w64, &vh, &vw)).sqrt();
    let positions = (opts.batch * ho * wo) as f64;
    let overlap = ((2 * kh - 1) * (2 * kw - 1)) as f64;
    check(
        (&y.view().into_dyn(), &yc.view().into_dyn()),
        (&kernel.view().into_dyn(), &wc.view().into_dyn()),
        expected,
        [concentration(&dw), concentration(&w64)].map(|rho| (2.0 * overlap * rho / positions).sqrt()),
        ig * kh * kw,
    )
}

/// [`verify_chain`] for a linear layer `W` `(out, in)` and its SVD factors: `n = batch·s²`
/// input vectors of i.i.d. standard normal entries. For such `x`, `E‖ΔW x‖² = ‖ΔW‖²_F` exactly,
/// so the expected output error is the kernel error itself; the spread is that of the module
/// documentation with independent positions (`c = 1`, `P = n`).
pub fn verify_linear<T: Real>(
    weight: &ArrayView2<'_, T>,
    chain: &SvdChain<T>,
    opts: &VerifyOptions,
) -> Result<ChainCheck, VerifyError> {
    opts.validate()?;
    let wc = chain.weight();
    if wc.dim() != weight.dim() {
        return Err(VerifyError::ChainShape {
            chain: wc.shape().to_vec(),
            original: weight.shape().to_vec(),
        });
    }
    if weight.iter().all(|v| *v == T::zero()) {
        return Err(VerifyError::ZeroKernel);
    }
    let n = opts.batch * opts.input_size * opts.input_size;
    let i = weight.ncols();
    let x: Array2<T> = randn::<T>(&[n, i], &mut rng(opts.seed))
        .into_dimensionality()
        .map_err(GbtdError::from)?;
    let y = x.dot(&weight.t());
    let yc = x.dot(&chain.first.t()).dot(&chain.second.t());
    let as4 = |a: &Array2<f64>| a.clone().insert_axis(Axis(2)).insert_axis(Axis(3));
    let w64 = weight.mapv(|v| v.to_f64_exact());
    let dw = &w64 - &wc.mapv(|v| v.to_f64_exact());
    let kernel_error =
        (dw.iter().map(|v| v * v).sum::<f64>() / w64.iter().map(|v| v * v).sum::<f64>()).sqrt();
    check(
        (&y.view().into_dyn(), &yc.view().into_dyn()),
        (&weight.view().into_dyn(), &wc.view().into_dyn()),
        kernel_error,
        [concentration(&as4(&dw)), concentration(&as4(&w64))].map(|rho| (2.0 * rho / n as f64).sqrt()),
        i,
    )
}

/// The comparison shared by convs and linear layers: output and kernel errors, and agreement
/// within six upper-bound standard deviations `σ = (σ(ΔW), σ(W))` of the expectation plus the
/// rounding of sums of `terms` products in `T`.
fn check<T: Real>(
    (y, yc): (&ndarray::ArrayViewD<'_, T>, &ndarray::ArrayViewD<'_, T>),
    (w, wc): (&ndarray::ArrayViewD<'_, T>, &ndarray::ArrayViewD<'_, T>),
    expected: f64,
    sigma: [f64; 2],
    terms: usize,
) -> Result<ChainCheck, VerifyError> {
    let output_error = relative_error(y, yc)?;
    let kernel_error = relative_error(w, wc)?;
    if !output_error.is_finite() || !kernel_error.is_finite() {
        return Err(VerifyError::NotFinite);
    }
    let floor = 16.0 * T::epsilon().to_f64_exact() * (terms as f64).sqrt();
    let tolerance = Z * 0.5 * (sigma[0] + sigma[1]) * expected + floor;
    Ok(ChainCheck {
        kernel_error,
        output_error,
        expected_output_error: expected,
        tolerance,
        agree: (output_error - expected).abs() <= tolerance,
        dtype: DType::of::<T>(),
    })
}

/// Verifies every layer that the description of the compressed checkpoint `factorized` lists
/// against the original model `original` (see the module documentation), calling
/// `progress` before each layer ([`Stage::Verify`]; an interruptible callback may stop it). A checkpoint that fails is a report
/// whose [`VerifyReport::verdict`] says why, not an error.
///
/// Errors: [`VerifyError::Description`] for a file without a valid description,
/// [`VerifyError::MissingKernel`] (checked for every layer before any work), and
/// [`VerifyError::Layer`] wrapping what failed in one layer (reading, shapes, biases,
/// [`verify_chain`]).
pub fn verify_checkpoint(
    original: &Path,
    factorized: &Path,
    opts: &VerifyOptions,
    progress: Progress<'_>,
) -> Result<VerifyReport, VerifyError> {
    opts.validate()?;
    let start = Instant::now();
    let description = read_description(factorized)?;
    let files = Files {
        original: ModelFile::open(original)?,
        factorized: ModelFile::open(factorized)?,
    };
    let originals = files.original.list()?;
    for l in &description.layers {
        let w = format!("{}.weight", l.name);
        if !originals.iter().any(|t| t.name == w) {
            return Err(VerifyError::MissingKernel {
                layer: l.name.clone(),
                original: original.to_path_buf(),
                factorized: factorized.to_path_buf(),
            });
        }
    }
    let n = description.layers.len();
    let mut layers = Vec::with_capacity(n);
    for (k, l) in description.layers.iter().enumerate() {
        progress.layer(Stage::Verify, k, n, &l.name)?;
        let r = files
            .verify_layer(l, &originals, opts)
            .map_err(|e| VerifyError::Layer {
                layer: l.name.clone(),
                source: Box::new(e),
            })?;
        layers.push(r);
    }
    let all_agree = layers.iter().all(|l| l.agree);
    let dtype = if layers.iter().all(|l| l.dtype == DType::F32) {
        "f32"
    } else if layers.iter().all(|l| l.dtype == DType::F64) {
        "f64"
    } else {
        "f32/f64"
    };
    let mut report = VerifyReport {
        original: original.display().to_string(),
        factorized: factorized.display().to_string(),
        input_size: opts.input_size,
        batch: opts.batch,
        seed: opts.seed,
        dtype,
        max_error: opts.max_error,
        layers,
        worst_layer: None,
        worst_output_error: 0.0,
        all_agree,
        passed: false,
        seconds: 0.0,
    };
    if let Some(w) = report.worst() {
        (report.worst_layer, report.worst_output_error) = (Some(w.name.clone()), w.output_error);
    }
    report.passed = report.verdict() == Verdict::Pass;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The two files of a verification.
struct Files {
    original: ModelFile,
    factorized: ModelFile,
}

impl Files {
    /// Verifies one layer, in `f64` when the original kernel is `f64`, else in `f32`.
    fn verify_layer(
        &self,
        l: &DescribedLayer,
        originals: &[TensorInfo],
        opts: &VerifyOptions,
    ) -> Result<VerifiedLayer, VerifyError> {
        let t0 = Instant::now();
        let wname = format!("{}.weight", l.name);
        let orig = self.original.read_float(&wname)?;
        let bias = self.check_bias(l, originals)?;
        if orig.data.shape() != l.shape.as_slice() {
            return Err(VerifyError::RecordedShape {
                tensor: wname,
                shape: orig.data.shape().to_vec(),
                recorded: l.shape.clone(),
            });
        }
        let (check, terms, chain_ranks) = match &orig.data {
            AnyTensor::F64(_) => self.verify_typed::<f64>(l, &orig.data, opts)?,
            AnyTensor::F32(_) => self.verify_typed::<f32>(l, &orig.data, opts)?,
        };
        Ok(VerifiedLayer {
            name: l.name.clone(),
            shape: l.shape.clone(),
            method: l.method.clone(),
            terms,
            ranks: if l.ranks.is_empty() {
                chain_ranks.to_vec()
            } else {
                l.ranks.clone()
            },
            kernel_error: check.kernel_error,
            recorded_error: l.relative_error,
            output_error: check.output_error,
            expected_output_error: check.expected_output_error,
            tolerance: check.tolerance,
            agree: check.agree,
            bias,
            dtype: check.dtype,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The chain's check in precision `T`, its `R` and its `[d4*, d3*]` (`[r, r]` for a linear
    /// layer's SVD).
    fn verify_typed<T: Real>(
        &self,
        l: &DescribedLayer,
        orig: &AnyTensor,
        opts: &VerifyOptions,
    ) -> Result<(ChainCheck, usize, [usize; 2]), VerifyError> {
        let wname = format!("{}.weight", l.name);
        let names = || {
            l.chain
                .layers()
                .iter()
                .map(|c| c.weight.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let read = |c: &ChainConv| -> Result<ndarray::ArrayD<T>, VerifyError> {
            Ok(self.factorized.read_float(&c.weight)?.data.to_real::<T>())
        };
        match &l.chain {
            DescribedChain::Conv(convs) => {
                let w: Array4<T> = as4(orig, &wname)?;
                let [reduce, middle, expand] = convs
                    .each_ref()
                    .map(|c| as4::<T>(&self.factorized.read_float(&c.weight)?.data, &c.weight));
                let chain = GroupedChain::from_weights(
                    [reduce?, middle?, expand?],
                    convs.each_ref().map(|c| c.groups),
                )
                .map_err(|source| VerifyError::InconsistentChain {
                    names: names(),
                    source,
                })?;
                let check = verify_grouped(&w.view(), &chain, opts)?;
                let r = chain.parts[0].dims()?;
                Ok((check, r.terms, [r.d4_star, r.d3_star]))
            }
            DescribedChain::Linear([first, second]) => {
                let two = |a: ndarray::ArrayD<T>, name: &str| -> Result<Array2<T>, VerifyError> {
                    let shape = a.shape().to_vec();
                    a.into_dimensionality()
                        .map_err(|_| VerifyError::InconsistentChain {
                            names: names(),
                            source: GbtdError::Shape(format!(
                                "'{name}' has shape {shape:?}, expected a linear weight (out, in)"
                            )),
                        })
                };
                let w = two(orig.to_real::<T>(), &wname)?;
                let chain = SvdChain {
                    first: two(read(first)?, &first.weight)?,
                    second: two(read(second)?, &second.weight)?,
                };
                if chain.first.nrows() != chain.second.ncols() {
                    return Err(VerifyError::InconsistentChain {
                        names: names(),
                        source: GbtdError::Shape(format!(
                            "the first layer gives {} features, the second takes {}",
                            chain.first.nrows(),
                            chain.second.ncols()
                        )),
                    });
                }
                let check = verify_linear(&w.view(), &chain, opts)?;
                let r = chain.rank();
                Ok((check, 1, [r, r]))
            }
        }
    }

    /// Whether the layer has a bias; when it has, the chain's last conv must carry the original's
    /// values unchanged.
    fn check_bias(&self, l: &DescribedLayer, originals: &[TensorInfo]) -> Result<bool, VerifyError> {
        let bname = format!("{}.bias", l.name);
        let has_orig = originals.iter().any(|t| t.name == bname);
        match (has_orig, l.chain.last().bias.clone()) {
            (false, None) => Ok(false),
            (true, None) => Err(VerifyError::BiasLost { bias: bname }),
            (false, Some(chain_bias)) => Err(VerifyError::BiasAdded {
                chain_bias,
                bias: bname,
            }),
            (true, Some(chain_bias)) => {
                let a = self.original.read_float(&bname)?.data.to_real::<f64>();
                let c = self.factorized.read_float(&chain_bias)?.data.to_real::<f64>();
                let max = if a.shape() == c.shape() {
                    a.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
                } else {
                    f64::INFINITY
                };
                // f16/bf16 biases are widened exactly; an f64 bias stored as f32 is rounded.
                let tol = a.iter().fold(0.0f64, |m, v| m.max(v.abs())) * f64::from(f32::EPSILON);
                if max > tol {
                    return Err(VerifyError::BiasDiffers {
                        chain_bias,
                        chain_shape: c.shape().to_vec(),
                        bias: bname,
                        shape: a.shape().to_vec(),
                        max_difference: max,
                    });
                }
                Ok(true)
            }
        }
    }
}

fn as4<T: Real>(t: &AnyTensor, name: &str) -> Result<Array4<T>, VerifyError> {
    t.to_real::<T>()
        .into_dimensionality()
        .map_err(|_| VerifyError::NotAKernel {
            tensor: name.to_string(),
            shape: t.shape().to_vec(),
        })
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
/// smaller Gram matrix; 0 for a zero or empty kernel).
fn concentration(w: &Array4<f64>) -> f64 {
    let o = w.len_of(Axis(0));
    let standard = w.as_standard_layout();
    let Some(a) = standard
        .as_slice()
        .filter(|_| o > 0)
        .and_then(|s| ArrayView2::from_shape((o, s.len() / o), s).ok())
    else {
        return 0.0;
    };
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
        assert_eq!(concentration(&Array4::<f64>::zeros((0, 2, 1, 1))), 0.0);
    }

    /// A chain that is exactly its kernel: the kernel error is 0, the output error is rounding,
    /// and they agree; a chain scaled by 1.5 has kernel and output error 0.5 (no border effect
    /// on a scaled kernel), agreeing too.
    #[test]
    fn an_exact_and_a_scaled_chain_agree() {
        let mut g = rng(3);
        let (o, i, r) = (6, 5, 2);
        let reduce: Array4<f64> = randn(&[r * 2, i, 1, 1], &mut g).into_dimensionality().unwrap();
        let grouped: Array4<f64> = randn(&[r * 3, 2, 2, 3], &mut g).into_dimensionality().unwrap();
        let expand: Array4<f64> = randn(&[o, r * 3, 1, 1], &mut g).into_dimensionality().unwrap();
        let chain = LayerChain::new(reduce, grouped, expand, r).unwrap();
        let w = chain.kernel().unwrap();
        let opts = VerifyOptions {
            input_size: 8,
            batch: 2,
            ..VerifyOptions::default()
        };
        let c = verify_chain(&w.view(), &chain, &opts).unwrap();
        assert!(c.kernel_error < 1e-14 && c.output_error < 1e-13, "{c:?}");
        assert!(c.agree && c.dtype == DType::F64, "{c:?}");
        let scaled = w.mapv(|v| v / 1.5);
        let c = verify_chain(&scaled.view(), &chain, &opts).unwrap();
        assert!((c.kernel_error - 0.5).abs() < 1e-12, "{c:?}");
        assert!((c.expected_output_error - 0.5).abs() < 1e-12, "{c:?}");
        assert!((c.output_error - 0.5).abs() < 1e-12 && c.agree, "{c:?}");
        // Errors, not panics, on unusable inputs.
        let small = VerifyOptions {
            input_size: 1,
            ..opts
        };
        let e = verify_chain(&w.view(), &chain, &small).unwrap_err();
        assert!(
            matches!(e, VerifyError::InputTooSmall { kh: 2, kw: 3, .. }),
            "{e}"
        );
        let zero = Array4::<f64>::zeros(w.dim());
        assert!(matches!(
            verify_chain(&zero.view(), &chain, &opts),
            Err(VerifyError::ZeroKernel)
        ));
        let other = Array4::<f64>::ones((o, i, 1, 1));
        let e = verify_chain(&other.view(), &chain, &opts).unwrap_err();
        assert!(
            e.to_string()
                .contains("computes a 6×5×2×3 kernel, the original is 6×5×1×1"),
            "{e}"
        );
        let bad = VerifyOptions {
            max_error: Some(-1.0),
            ..opts
        };
        assert!(matches!(
            verify_chain(&w.view(), &chain, &bad),
            Err(VerifyError::MaxError(_))
        ));
    }
}
