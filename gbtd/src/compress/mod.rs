//! Compressing a whole model: every conv kernel of a model file is decomposed and replaced by the
//! chain of three convs that computes it (the library behind `gbtd compress`).
//!
//! # What is compressed
//! A tensor is a candidate when its name matches the `layers` regex (all names when `None`)
//! and not the `skip` regex (both searched anywhere in the name, `Regex::is_match`). A candidate
//! is compressed when it is a floating-point 4-D tensor named `NAME.weight` (a conv kernel in
//! PyTorch layout `(out, in, kh, kw)`), its input mode has more than one channel, the rank rule
//! gives it ranks that fit its channels, and the chain has fewer weights than the kernel (the
//! rank rules skip other layers; a `fixed` rule that still gives a larger chain keeps it, and
//! [`LayerReport::grows`] says so). Every other candidate is reported in [`Compressed::skipped`] with
//! the reason; tensors outside the filters are copied without being mentioned.
//!
//! Depthwise and grouped convs store kernels `(C, 1, k, k)` / `(C, C/g, k, k)`: their input mode
//! is not the layer's input channels, so they are never treated as a 4-D kernel whose input mode
//! has dimension 1: a kernel with `in == 1` is skipped ("depthwise or grouped"). A grouped
//! kernel with `in > 1` cannot be told apart from a dense one by its shape alone and is
//! compressed as dense; exclude such layers with `skip`.
//!
//! # Methods (ranks listed as `[r_out, r_in]`, mode 0 = out, mode 1 = in, as `gbtd decompose`)
//! - Tucker-2: [`tucker`] on modes `[0, 1]` with ranks `[r_out, r_in]`; chain with `R = 1`.
//! - BTD: [`btd`] with `R` terms of ranks `[r_out, r_in]` on modes `[0, 1]`; middle conv with
//!   `groups = R`.
//! - CP: [`parafac`] of rank `K` (ranks `[K]`); `R = K`, `r_in = r_out = 1` (depthwise middle).
//!
//! The chain ([`LayerChain`]) has `R·r_in·in + R·r_out·r_in·kh·kw + out·R·r_out` weights (CP:
//! `K·(in + kh·kw + out)`). Multiply-adds are counted per image at an output of
//! `input_size × input_size` (stride 1 and "same" padding assumed for every layer, since a state
//! dict does not record them): `weights × input_size²` for the kernel and for the chain alike.
//! The relative error is `‖W − W_chain‖ / ‖W‖` with `W_chain` = [`LayerChain::kernel`], the
//! kernel that the written chain computes.
//!
//! # Precision and memory
//! `f64` kernels are decomposed in `f64` and their chains stored as `F64`; `f32`, `f16` and
//! `bf16` kernels in `f32`, chains stored as `F32`. One kernel is held at a time: a first pass
//! reads each to compute the unfolding spectra the rank rule needs (the `budget` rule needs all
//! layers at once), a second reads each again, decomposes it and keeps only its chain.
//!
//! The output file ([`Compressed::write`]) is described in [`writer`].
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD};
use regex::Regex;
use thiserror::Error;

use crate::btd::{BtdOptions, btd};
use crate::cp::{CpOptions, parafac};
use crate::error::GbtdError;
use crate::formats::{AnyTensor, IoError, TensorInfo};
use crate::layers::LayerChain;
use crate::options::IterOptions;
use crate::real::Real;
use crate::tensor::relative_error;
use crate::tucker::{TuckerOptions, tucker};

mod model;
mod report;
pub mod verify;
pub mod writer;

pub use crate::ranks::{LayerSpectra, Overrides, ParamModel, RankChoice, RankRule, choose_ranks};
use model::ModelFile;
pub use model::RawTensor;
pub use report::Totals;

/// The decomposition applied to every kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressMethod {
    /// Partial Tucker on the channel modes `[0, 1]`.
    Tucker2,
    /// `terms` block terms on the channel modes.
    Btd {
        /// `R`, the number of block terms (groups of the middle conv).
        terms: usize,
    },
    /// CP of rank `K` (the rule's single rank).
    Cp,
}

impl CompressMethod {
    /// `tucker2`, `btd` or `cp`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompressMethod::Tucker2 => "tucker2",
            CompressMethod::Btd { .. } => "btd",
            CompressMethod::Cp => "cp",
        }
    }

    /// The rank rule's parameter model of this method.
    pub fn param_model(self) -> ParamModel {
        match self {
            CompressMethod::Tucker2 => ParamModel::Tucker2,
            CompressMethod::Btd { terms } => ParamModel::Btd { terms },
            CompressMethod::Cp => ParamModel::Cp,
        }
    }

    /// `(R, r_out, r_in)` of the chain for these ranks.
    fn chain_dims(self, ranks: &[usize]) -> (usize, usize, usize) {
        match self {
            CompressMethod::Tucker2 => (1, ranks[0], ranks[1]),
            CompressMethod::Btd { terms } => (terms, ranks[0], ranks[1]),
            CompressMethod::Cp => (ranks[0], 1, 1),
        }
    }
}

/// Which pass a progress call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading a kernel and computing its unfolding spectra (for the rank rule).
    Spectra,
    /// Decomposing a kernel.
    Decompose,
}

/// Progress callback: `(stage, layer index from 0, number of layers, tensor name)`, called
/// before each layer of each pass.
pub type LayerProgress<'a> = &'a dyn Fn(Stage, usize, usize, &str);

/// Options of [`compress`].
pub struct CompressOptions<'a> {
    /// The decomposition.
    pub method: CompressMethod,
    /// How ranks are chosen.
    pub rule: RankRule,
    /// Per-layer rules replacing `rule`, keyed by module name (`NAME` of `NAME.weight`).
    pub overrides: Overrides,
    /// Only tensors whose name matches (all when `None`).
    pub layers: Option<Regex>,
    /// Never tensors whose name matches.
    pub skip: Option<Regex>,
    /// Sweeps, tolerance and seed of each decomposition (SVD initialisation).
    pub iter: IterOptions,
    /// Output height and width for the multiply-add counts.
    pub input_size: usize,
    /// Called before each layer of each pass.
    pub progress: Option<LayerProgress<'a>>,
}

/// Errors of [`compress`] and [`Compressed::write`].
#[derive(Debug, Error)]
pub enum CompressError {
    /// Reading the model or writing the output failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The rank rule could not be applied (wrong number of ranks, bad overrides ...).
    #[error("rank rule {rule}: {source}")]
    Rule {
        /// The rule as given.
        rule: String,
        /// What is wrong.
        source: GbtdError,
    },
    /// Decomposing one layer failed.
    #[error("layer '{name}': {source}")]
    Layer {
        /// The kernel's tensor name.
        name: String,
        /// The failure.
        source: GbtdError,
    },
    /// No tensor passed the filters and was a conv kernel.
    #[error("{0}")]
    NoKernels(String),
    /// Every matched kernel was skipped.
    #[error("nothing to compress: {0}")]
    NothingCompressed(String),
    /// A chain tensor's name is already taken in the model.
    #[error("{0}")]
    NameClash(String),
    /// A kernel to replace by a chain is not named `NAME.weight`.
    #[error(
        "'{0}' is not named NAME.weight (the PyTorch convention for a conv's weight), which a chain NAME.0/1/2.weight replaces; select conv weights only"
    )]
    NotAWeight(String),
    /// A collective factorization does not fit the kernels it is written for.
    #[error("collective factorization: {0}")]
    Collective(GbtdError),
}

/// One compressed layer: the report row.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// The module name `NAME` (the kernel is `NAME.weight`).
    pub name: String,
    /// `(out, in, kh, kw)`.
    pub shape: [usize; 4],
    /// The kernel's dtype in the file.
    pub dtype: String,
    /// The method.
    pub method: CompressMethod,
    /// `[r_out, r_in]` (`[K]` for CP).
    pub ranks: Vec<usize>,
    /// `R`: terms, groups of the middle conv.
    pub groups: usize,
    /// Whether `NAME.bias` exists (moved to `NAME.2.bias`).
    pub bias: bool,
    /// `‖W − W_chain‖ / ‖W‖`.
    pub relative_error: f64,
    /// Weights of the kernel.
    pub params_before: u64,
    /// Weights of the chain.
    pub params_after: u64,
    /// Multiply-adds of the conv per image at `input_size²` outputs.
    pub macs_before: u64,
    /// Multiply-adds of the chain per image at `input_size²` outputs.
    pub macs_after: u64,
    /// Seconds spent decomposing.
    pub seconds: f64,
    /// Sweeps run.
    pub iterations: usize,
}

impl LayerReport {
    /// Whether the chain is not smaller than the kernel (only a `fixed` rule keeps such a layer).
    pub fn grows(&self) -> bool {
        self.params_after >= self.params_before
    }

    /// `(R, r_out, r_in)`.
    pub fn chain_dims(&self) -> (usize, usize, usize) {
        self.method.chain_dims(&self.ranks)
    }
}

/// A candidate tensor left unchanged, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// The tensor's name in the file.
    pub tensor: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype in the file.
    pub dtype: String,
    /// Whether it is a floating-point 4-D tensor (a conv kernel).
    pub kernel: bool,
    /// Why it was not compressed.
    pub reason: String,
}

impl Skipped {
    /// The module name for a `NAME.weight` tensor, else the tensor name.
    pub fn name(&self) -> &str {
        self.tensor.strip_suffix(".weight").unwrap_or(&self.tensor)
    }
}

/// A chain in the precision it was computed in.
#[derive(Debug, Clone)]
pub(crate) enum AnyChain {
    F32(LayerChain<f32>),
    F64(LayerChain<f64>),
}

/// The result of [`compress`]: the report and the chains, ready to be written.
#[derive(Debug)]
pub struct Compressed {
    model: ModelFile,
    tensors: Vec<TensorInfo>,
    chains: Vec<AnyChain>,
    /// The input file as given.
    pub source: String,
    /// The method.
    pub method: CompressMethod,
    /// The rule as given.
    pub rank_rule: String,
    /// Output size of the multiply-add counts.
    pub input_size: usize,
    /// One row per compressed layer, in file order.
    pub layers: Vec<LayerReport>,
    /// Candidates left unchanged, in file order.
    pub skipped: Vec<Skipped>,
    /// Layer names of the overrides file that name no selected conv kernel.
    pub unmatched_overrides: Vec<String>,
}

/// Weights of the chain for a kernel `(out, in, kh, kw)`.
pub fn chain_params(method: CompressMethod, shape: [usize; 4], ranks: &[usize]) -> u64 {
    let [o, i, kh, kw] = shape.map(|d| d as u64);
    let (r, ro, ri) = method.chain_dims(ranks);
    let (r, ro, ri) = (r as u64, ro as u64, ri as u64);
    r * ri * i + r * ro * ri * kh * kw + o * r * ro
}

/// Decomposes the candidate kernels of the model at `path` (see the module documentation).
/// Nothing is written; see [`Compressed::write`].
pub fn compress(path: &Path, opts: &CompressOptions<'_>) -> Result<Compressed, CompressError> {
    let model = ModelFile::open(path)?;
    let tensors = model.list()?;
    let names: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let mut skipped = Vec::new();
    let mut kernels: Vec<(usize, [usize; 4])> = Vec::new();
    for (idx, t) in tensors.iter().enumerate() {
        let selected = opts.layers.as_ref().is_none_or(|r| r.is_match(&t.name))
            && !opts.skip.as_ref().is_some_and(|r| r.is_match(&t.name));
        if !selected {
            continue;
        }
        // `readable`: a floating-point dtype that gbtd decodes (f64, f32, f16, bf16).
        let float = t.readable;
        let kernel = float && t.shape.len() == 4;
        let reason = if !float {
            Some(format!("not floating point (dtype {})", t.dtype))
        } else if t.shape.len() != 4 {
            Some(format!("not a 4-D conv kernel (shape {:?})", t.shape))
        } else if !t.name.ends_with(".weight") {
            Some("not a module's weight (the name does not end in .weight)".to_string())
        } else if t.shape.contains(&0) {
            Some("empty kernel".to_string())
        } else if t.shape[1] == 1 {
            Some(format!(
                "depthwise or grouped conv (input mode of dimension 1, shape {:?}); left as is",
                t.shape
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(Skipped {
                tensor: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype.clone(),
                kernel,
                reason,
            }),
            None => kernels.push((idx, [t.shape[0], t.shape[1], t.shape[2], t.shape[3]])),
        }
    }
    if kernels.is_empty() {
        let filters = match (&opts.layers, &opts.skip) {
            (None, None) => String::new(),
            (l, s) => format!(
                " matching{}{}",
                l.as_ref().map(|r| format!(" --layers '{r}'")).unwrap_or_default(),
                s.as_ref()
                    .map(|r| format!(" and not --skip '{r}'"))
                    .unwrap_or_default()
            ),
        };
        let all: Vec<&str> = tensors
            .iter()
            .filter(|t| t.shape.len() == 4 && t.readable)
            .map(|t| t.name.as_str())
            .take(8)
            .collect();
        let hint = if all.is_empty() {
            "the model has no 4-D floating-point tensors".to_string()
        } else {
            format!("its conv kernels include {}", all.join(", "))
        };
        return Err(CompressError::NoKernels(format!(
            "{}: no conv kernel to compress{filters} ({hint})",
            path.display()
        )));
    }

    // Pass 1: the spectra the rule needs, one kernel at a time.
    let n = kernels.len();
    let modes = [0usize, 1];
    let mut spectra = Vec::with_capacity(n);
    for (k, &(idx, _)) in kernels.iter().enumerate() {
        let name = &tensors[idx].name;
        if let Some(p) = opts.progress {
            p(Stage::Spectra, k, n, name);
        }
        let t = model.read_float(name)?;
        // Rules and overrides name layers by their module name (`NAME`, not `NAME.weight`).
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let s = match &t.data {
            AnyTensor::F32(a) => LayerSpectra::of(module, &a.view(), &modes),
            AnyTensor::F64(a) => LayerSpectra::of(module, &a.view(), &modes),
        };
        spectra.push(s.map_err(|source| CompressError::Layer {
            name: name.clone(),
            source,
        })?);
    }
    let modules: Vec<&str> = spectra.iter().map(|s| s.name.as_str()).collect();
    let unmatched_overrides: Vec<String> = opts
        .overrides
        .unmatched(&modules)
        .into_iter()
        .map(String::from)
        .collect();
    let rule_err = |source| CompressError::Rule {
        rule: opts.rule.to_string(),
        source,
    };
    let choices =
        choose_ranks(&opts.rule, &spectra, &opts.method.param_model(), &opts.overrides).map_err(rule_err)?;
    drop(spectra);
    if choices.len() != n {
        return Err(rule_err(GbtdError::internal(format!(
            "{} rank choices for {n} layers",
            choices.len()
        ))));
    }
    let fixed = matches!(opts.rule, RankRule::Fixed(_));
    let want = match opts.method {
        CompressMethod::Cp => 1,
        _ => 2,
    };

    // Pass 2: decompose each kernel the rule gives ranks.
    let size2 = (opts.input_size as u64).pow(2);
    let mut layers = Vec::new();
    let mut chains = Vec::new();
    let mut kernel_skips: Vec<(usize, String)> = Vec::new();
    for (k, (&(idx, shape), choice)) in kernels.iter().zip(choices).enumerate() {
        let t = &tensors[idx];
        let ranks = match choice {
            RankChoice::Skip(reason) => {
                kernel_skips.push((idx, reason));
                continue;
            }
            RankChoice::Ranks(r) => r,
        };
        if ranks.len() != want {
            return Err(rule_err(GbtdError::Rank(format!(
                "{} ranks for layer '{}', but --method {} takes {want} ({})",
                ranks.len(),
                t.name,
                opts.method.as_str(),
                if want == 1 { "K" } else { "r_out,r_in" }
            ))));
        }
        if ranks.contains(&0) {
            return Err(rule_err(GbtdError::Rank(format!(
                "a rank of 0 for layer '{}'",
                t.name
            ))));
        }
        let (_, r_out, r_in) = opts.method.chain_dims(&ranks);
        if opts.method != CompressMethod::Cp && (r_out > shape[0] || r_in > shape[1]) {
            kernel_skips.push((
                idx,
                format!(
                    "ranks {r_out},{r_in} exceed the channels (out {}, in {})",
                    shape[0], shape[1]
                ),
            ));
            continue;
        }
        let before = shape.iter().product::<usize>() as u64;
        let after = chain_params(opts.method, shape, &ranks);
        if after >= before && !fixed {
            kernel_skips.push((
                idx,
                format!("the chain would have {after} weights, not fewer than the kernel's {before}"),
            ));
            continue;
        }
        if let Some(p) = opts.progress {
            p(Stage::Decompose, k, n, &t.name);
        }
        let x = model.read_float(&t.name)?;
        let start = Instant::now();
        let layer_err = |source| CompressError::Layer {
            name: t.name.clone(),
            source,
        };
        let (chain, rel, iterations) = match &x.data {
            AnyTensor::F32(a) => {
                let (c, e, it) = decompose(&a.view(), opts.method, &ranks, opts.iter).map_err(layer_err)?;
                (AnyChain::F32(c), e, it)
            }
            AnyTensor::F64(a) => {
                let (c, e, it) = decompose(&a.view(), opts.method, &ranks, opts.iter).map_err(layer_err)?;
                (AnyChain::F64(c), e, it)
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        let name = t.name.strip_suffix(".weight").unwrap_or(&t.name).to_string();
        let (r, _, _) = opts.method.chain_dims(&ranks);
        layers.push(LayerReport {
            bias: names.contains(format!("{name}.bias").as_str()),
            name,
            shape,
            dtype: t.dtype.clone(),
            method: opts.method,
            ranks,
            groups: r,
            relative_error: rel,
            params_before: before,
            params_after: after,
            macs_before: before * size2,
            macs_after: after * size2,
            seconds,
            iterations,
        });
        chains.push(chain);
    }
    // Skipped kernels are listed in file order with the other skipped candidates.
    for (idx, reason) in kernel_skips {
        let t = &tensors[idx];
        skipped.push(Skipped {
            tensor: t.name.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype.clone(),
            kernel: true,
            reason,
        });
    }
    let order: std::collections::HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    skipped.sort_by_key(|s| order.get(s.tensor.as_str()).copied().unwrap_or(usize::MAX));
    if layers.is_empty() {
        let reasons: Vec<String> = skipped
            .iter()
            .filter(|s| s.kernel)
            .take(4)
            .map(|s| format!("{}: {}", s.tensor, s.reason))
            .collect();
        return Err(CompressError::NothingCompressed(format!(
            "rank rule {} compresses none of the {n} matched conv kernels ({}{})",
            opts.rule,
            reasons.join("; "),
            if n > 4 { "; ..." } else { "" }
        )));
    }
    Ok(Compressed {
        source: path.display().to_string(),
        model,
        tensors,
        chains,
        method: opts.method,
        rank_rule: opts.rule.to_string(),
        input_size: opts.input_size,
        layers,
        skipped,
        unmatched_overrides,
    })
}

/// Decomposes one kernel `(out, in, kh, kw)`; returns its chain, `‖W − W_chain‖/‖W‖` and the
/// sweeps run.
fn decompose<T: Real>(
    x: &ArrayViewD<'_, T>,
    method: CompressMethod,
    ranks: &[usize],
    iter: IterOptions,
) -> crate::Result<(LayerChain<T>, f64, usize)> {
    let (chain, iterations) = match method {
        CompressMethod::Tucker2 => {
            let opts = TuckerOptions::new(ranks.to_vec())
                .with_modes(vec![0, 1])
                .with_iter(iter);
            let d = tucker(x, &opts)?;
            (LayerChain::from_tucker(&d)?, d.convergence.iterations)
        }
        CompressMethod::Btd { terms } => {
            let opts = BtdOptions::new(terms, ranks.to_vec())
                .with_modes(vec![0, 1])
                .with_iter(iter);
            let d = btd(x, &opts)?;
            (LayerChain::from_btd(&d)?, d.convergence.iterations)
        }
        CompressMethod::Cp => {
            let opts = CpOptions::new(ranks[0]).with_iter(iter);
            let d = parafac(x, &opts)?;
            (LayerChain::from_cp(&d)?, d.convergence.iterations)
        }
    };
    let k: ArrayD<T> = chain.kernel()?.into_dyn();
    let err = relative_error(x, &k.view())?;
    Ok((chain, err, iterations))
}
