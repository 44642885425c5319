//! Compressing a whole model: every selected conv kernel (and, when asked, every linear weight)
//! is decomposed and replaced by the layers that compute it (the library behind `gbtd compress`
//! and the Python package's `compress_model`).
//!
//! # What is compressed
//! A tensor is a candidate when its name matches the `layers` regex (all names when `None`)
//! and not the `skip` regex (both searched anywhere in the name, `Regex::is_match`). A candidate
//! is compressed when it is a floating-point tensor named `NAME.weight` that is a conv kernel
//! (4-D, PyTorch layout `(out, in/G, kh, kw)` for a conv with `G` groups) or, with
//! [`CompressOptions::linear`], a linear layer's weight (2-D, `(out, in)`); the rank rule gives it
//! ranks that fit its channels; and the factorized form has fewer weights than the layer (the rank
//! rules skip other layers; a `fixed` rule that still gives a larger chain keeps it, and
//! [`LayerReport::grows`] says so). Every other candidate is reported in [`Compressed::skipped`]
//! with the reason; tensors outside the filters are copied without being mentioned.
//!
//! # Groups
//! A state dict stores a grouped conv's kernel as `(out, in/G, kh, kw)` and does not record `G`.
//! A grouped kernel compressed as if it were dense would give a chain that reads `in/G` channels
//! where the layer receives `in`: the file would load and the model then fail. So `G` comes from
//! [`CompressOptions::geometry`] (a layer-info file written by the Python package, which reads it
//! from each module) or, in a PyTorch checkpoint (whose tensors keep the module order), from the
//! preceding normalization layer: a spatial kernel (`kh·kw > 1`) whose `in/G` differs from the
//! channel count `c` of the nearest preceding 1-D floating-point tensor, with `c` a multiple of
//! `in/G` and `out` a multiple of `G = c/(in/G)`, is taken as grouped ([`Compressed::inferred`]
//! lists those layers). A kernel with one input channel per group whose groups are unknown is
//! skipped (a depthwise conv). A grouped conv is compressed group by group with the same ranks
//! ([`chain::GroupedChain`]).
//!
//! # Methods (ranks listed as `[r_out, r_in]`, mode 0 = out, mode 1 = in, as `gbtd decompose`)
//! - Tucker-2: [`tucker`](crate::tucker::tucker) on modes `[0, 1]` with ranks
//!   `[r_out, r_in]`; chain with `R = 1`.
//! - BTD: [`btd`](crate::btd::btd) with `R` terms of ranks `[r_out, r_in]` on modes `[0, 1]`;
//!   middle conv with `groups = R` (per conv group).
//! - CP: [`parafac`](crate::cp::parafac) of rank `K` (ranks `[K]`); `R = K`, `r_in = r_out = 1`
//!   (depthwise middle).
//! - Linear layers, whatever the method: the truncated SVD of rank `r` (ranks `[r]`), two linear
//!   layers ([`chain::SvdChain`]).
//!
//! The chain of a conv group has `R·r_in·in + R·r_out·r_in·kh·kw + out·R·r_out` weights (CP:
//! `K·(in + kh·kw + out)`), `G` times that for the whole conv. The relative error is
//! `‖W − W_f‖ / ‖W‖` with `W_f` the weight that the written layers compute.
//!
//! # Multiply-adds
//! Counted per sample from the positions of [`LayerGeometry`] when they are known (the Python
//! package records them in one forward pass): the original conv costs its weights times its
//! output positions; in the chain the 1×1 reduce conv runs at the input positions (before the
//! middle conv's stride) and the other two at the output positions. Without positions (a bare
//! state dict) no multiply-adds are reported; the weights are then the multiply-adds per output
//! position of a stride-1 layer.
//!
//! # Precision and memory
//! `f64` weights are decomposed in `f64` and their factors stored as `F64`; `f32`, `f16` and
//! `bf16` weights in `f32`, factors stored as `F32`. One weight is held at a time: a first pass
//! reads each to compute the unfolding spectra the rank rule needs (the `budget` rule needs all
//! layers at once), a second reads each again, decomposes it and keeps only its factors.
//!
//! The output file ([`Compressed::write`]) is described in [`writer`].
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;
use thiserror::Error;

use crate::decomposition::Method;
use crate::error::GbtdError;
use crate::formats::{AnyTensor, IoError, TensorInfo};
use crate::options::{IterOptions, Progress};

pub mod chain;
mod layer;
pub mod layer_info;
mod model;
mod report;
pub mod verify;
pub mod writer;

pub use crate::options::{Event, Stage};
pub use crate::ranks::{LayerSpectra, Overrides, RankChoice, RankRule, choose_ranks};
pub use chain::{Factorized, GroupedChain, SvdChain};
pub use layer::{AnyFactorized, LayerGeometry, LayerMeta, WeightView, factorize, layer_spectra, params_of};
use layer::{WeightSource, run};
pub use layer_info::read_layer_info;
use model::ModelFile;
pub use model::{RawTensor, read_all};
pub use report::Totals;

/// What a compressed layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A conv with `groups` groups (1 for a dense conv), replaced by three convs.
    Conv {
        /// The conv's groups `G`.
        groups: usize,
    },
    /// A linear layer, replaced by two linear layers (truncated SVD).
    Linear,
}

/// Options of [`compress`] and [`compress_layers`].
pub struct CompressOptions<'a> {
    /// The decomposition of conv kernels ([`Method::Tucker`] counts as Tucker-2: only the
    /// channel modes are factorized).
    pub method: Method,
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
    /// Whether 2-D weights (linear layers) are compressed too ([`compress`] only; the layers
    /// given to [`compress_layers`] are all compressed).
    pub linear: bool,
    /// Groups and sizes per module name ([`compress`] only; missing layers: groups inferred or 1,
    /// sizes unknown).
    pub geometry: BTreeMap<String, LayerGeometry>,
    /// Told of each layer of each pass and each sweep; may interrupt.
    pub progress: Progress<'a>,
}

impl CompressOptions<'_> {
    /// Options with `method` and `rule`, no overrides or filters, the default iteration settings,
    /// conv kernels only, no geometry and no progress callback.
    pub fn new(method: Method, rule: RankRule) -> Self {
        CompressOptions {
            method,
            rule,
            overrides: Overrides::empty(),
            layers: None,
            skip: None,
            iter: IterOptions::default(),
            linear: false,
            geometry: BTreeMap::new(),
            progress: Progress::none(),
        }
    }
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
    /// The module name `NAME` (the weight is `NAME.weight`).
    pub name: String,
    /// The weight's shape: `(out, in/G, kh, kw)` or `(out, in)`.
    pub shape: Vec<usize>,
    /// The weight's dtype in the file (or the array's).
    pub dtype: String,
    /// Conv (with its groups) or linear.
    pub kind: LayerKind,
    /// The method conv kernels were compressed with (a linear layer: truncated SVD).
    pub method: Method,
    /// `[r_out, r_in]` (`[K]` for CP, `[r]` for a linear layer's SVD).
    pub ranks: Vec<usize>,
    /// `R`: terms per conv group, groups of the middle conv per conv group (1 for a linear layer).
    pub terms: usize,
    /// Whether `NAME.bias` exists (it moves to the last layer of the chain).
    pub bias: bool,
    /// `‖W − W_f‖ / ‖W‖`.
    pub relative_error: f64,
    /// Weights of the layer.
    pub params_before: u64,
    /// Weights of its factorized form.
    pub params_after: u64,
    /// Multiply-adds of the layer per sample, when its positions are known.
    pub macs_before: Option<u64>,
    /// Multiply-adds of its factorized form per sample, when its positions are known.
    pub macs_after: Option<u64>,
    /// Seconds spent decomposing.
    pub seconds: f64,
    /// Sweeps run (summed over a grouped conv's groups; 0 for an SVD).
    pub iterations: usize,
}

impl LayerReport {
    /// Whether the factorized form is not smaller than the layer (only a `fixed` rule keeps such
    /// a layer).
    pub fn grows(&self) -> bool {
        self.params_after >= self.params_before
    }

    /// The conv's groups `G` (1 for a linear layer).
    pub fn conv_groups(&self) -> usize {
        match self.kind {
            LayerKind::Conv { groups } => groups,
            LayerKind::Linear => 1,
        }
    }

    /// `(R, r_out, r_in)` of each group's chain (`(1, r, r)` for a linear layer's SVD).
    pub fn chain_dims(&self) -> (usize, usize, usize) {
        match self.kind {
            LayerKind::Conv { .. } => self.method.chain_dims(&self.ranks),
            LayerKind::Linear => (1, self.ranks[0], self.ranks[0]),
        }
    }

    /// The method's name: `tucker2`, `btd`, `cp`, or `svd` for a linear layer.
    pub fn method_name(&self) -> &'static str {
        match self.kind {
            LayerKind::Conv { .. } => match self.method {
                Method::Tucker => "tucker2",
                m => m.as_str(),
            },
            LayerKind::Linear => "svd",
        }
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
    /// Whether it is a layer's weight that could have been compressed (a floating-point conv
    /// kernel, or a linear weight when linear layers were asked for).
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

/// The result of [`compress`]: the report and the factorized layers, ready to be written.
#[derive(Debug)]
pub struct Compressed {
    model: ModelFile,
    tensors: Vec<TensorInfo>,
    factors: Vec<AnyFactorized>,
    /// The input file as given.
    pub source: String,
    /// The method.
    pub method: Method,
    /// The rule as given.
    pub rank_rule: String,
    /// One row per compressed layer, in file order.
    pub layers: Vec<LayerReport>,
    /// Candidates left unchanged, in file order.
    pub skipped: Vec<Skipped>,
    /// Layer names of the overrides file that name no selected layer.
    pub unmatched_overrides: Vec<String>,
    /// Layers whose groups were inferred from the preceding normalization layer, with the
    /// groups (see the module documentation).
    pub inferred: Vec<(String, usize)>,
}

impl Compressed {
    /// Whether every compressed layer's multiply-adds are known.
    pub fn macs_known(&self) -> bool {
        self.layers.iter().all(|l| l.macs_before.is_some())
    }
}

/// The groups of the kernel `tensors[idx]` read off the preceding normalization layer, if it is
/// a grouped conv by the rule of the module documentation.
fn infer_groups(tensors: &[TensorInfo], idx: usize) -> Option<usize> {
    let s = &tensors[idx].shape;
    if s.len() != 4 || s[2] * s[3] <= 1 {
        return None;
    }
    let (out, in_g) = (s[0], s[1]);
    let c = tensors[..idx]
        .iter()
        .rev()
        .find(|t| t.readable && t.shape.len() == 1)?
        .shape[0];
    if c == in_g || in_g == 0 || c % in_g != 0 {
        return None;
    }
    let g = c / in_g;
    (g > 1 && out % g == 0).then_some(g)
}

/// Reads each layer's weight from the model file.
struct FileSource<'m> {
    model: &'m ModelFile,
    tensors: Vec<&'m str>,
}

impl WeightSource for FileSource<'_> {
    fn with_weight<R>(
        &self,
        index: usize,
        f: &mut dyn FnMut(WeightView<'_>) -> R,
    ) -> Result<R, CompressError> {
        let t = self.model.read_float(self.tensors[index])?;
        Ok(match &t.data {
            AnyTensor::F32(a) => f(WeightView::F32(a.view())),
            AnyTensor::F64(a) => f(WeightView::F64(a.view())),
        })
    }
}

/// Layers in memory (the Python package's path).
struct MemorySource<'s, 'a> {
    weights: &'s [WeightView<'a>],
}

impl WeightSource for MemorySource<'_, '_> {
    fn with_weight<R>(
        &self,
        index: usize,
        f: &mut dyn FnMut(WeightView<'_>) -> R,
    ) -> Result<R, CompressError> {
        Ok(f(self.weights[index].clone()))
    }
}

/// The result of [`compress_layers`]: per input layer, its report row and factorized form, or
/// the reason it was left as it was.
#[derive(Debug)]
pub struct CompressedLayers {
    /// One entry per input layer, in order.
    pub layers: Vec<Result<(LayerReport, AnyFactorized), String>>,
    /// Layer names of the overrides that name no given layer.
    pub unmatched_overrides: Vec<String>,
}

/// Compresses layers held in memory: `layers[i]` describes the weight `weights[i]` (a conv kernel
/// `(out, in/G, kh, kw)` with its groups and sizes in [`LayerMeta::geometry`], or a linear weight
/// `(out, in)`). The rank rule sees all layers at once, as in [`compress`]; `opts.layers`,
/// `opts.skip`, `opts.linear` and `opts.geometry` are not used (the caller selected the layers).
pub fn compress_layers(
    layers: &[LayerMeta],
    weights: &[WeightView<'_>],
    opts: &CompressOptions<'_>,
) -> Result<CompressedLayers, CompressError> {
    if layers.len() != weights.len() {
        return Err(CompressError::Layer {
            name: String::new(),
            source: GbtdError::Shape(format!(
                "{} layers described, {} weights given",
                layers.len(),
                weights.len()
            )),
        });
    }
    for (m, w) in layers.iter().zip(weights) {
        let shape = match w {
            WeightView::F32(a) => a.shape(),
            WeightView::F64(a) => a.shape(),
        };
        if shape != m.shape.as_slice() || !(m.shape.len() == 2 || m.shape.len() == 4) {
            return Err(CompressError::Layer {
                name: m.name.clone(),
                source: GbtdError::Shape(format!(
                    "weight of shape {shape:?} described as {:?}; a conv kernel is 4-D and a linear weight 2-D",
                    m.shape
                )),
            });
        }
    }
    let out = run(layers, &MemorySource { weights }, opts)?;
    let mut result: Vec<Result<(LayerReport, AnyFactorized), String>> =
        (0..layers.len()).map(|_| Err(String::new())).collect();
    for (k, reason) in out.skipped {
        result[k] = Err(reason);
    }
    for (k, report, f) in out.compressed {
        result[k] = Ok((report, f));
    }
    Ok(CompressedLayers {
        layers: result,
        unmatched_overrides: out.unmatched_overrides,
    })
}

/// Decomposes the candidate layers of the model at `path` (see the module documentation).
/// Nothing is written; see [`Compressed::write`].
pub fn compress(path: &Path, opts: &CompressOptions<'_>) -> Result<Compressed, CompressError> {
    let model = ModelFile::open(path)?;
    let tensors = model.list()?;
    let ordered = model.keeps_module_order();
    let names: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let mut skipped = Vec::new();
    let mut metas: Vec<LayerMeta> = Vec::new();
    let mut sources: Vec<usize> = Vec::new();
    let mut inferred = Vec::new();
    for (idx, t) in tensors.iter().enumerate() {
        let selected = opts.layers.as_ref().is_none_or(|r| r.is_match(&t.name))
            && !opts.skip.as_ref().is_some_and(|r| r.is_match(&t.name));
        if !selected {
            continue;
        }
        // `readable`: a floating-point dtype that gbtd decodes (f64, f32, f16, bf16).
        let float = t.readable;
        let linear = opts.linear && t.shape.len() == 2;
        let kernel = float && (t.shape.len() == 4 || linear);
        let module = t.name.strip_suffix(".weight").unwrap_or(&t.name);
        let mut geometry = opts.geometry.get(module).copied();
        if geometry.is_none()
            && ordered
            && let Some(g) = infer_groups(&tensors, idx)
        {
            inferred.push((module.to_string(), g));
            geometry = Some(LayerGeometry {
                groups: g,
                ..LayerGeometry::default()
            });
        }
        let geometry = geometry.unwrap_or_default();
        let reason = if !float {
            Some(format!("not floating point (dtype {})", t.dtype))
        } else if !kernel {
            Some(if t.shape.len() == 2 {
                format!(
                    "a 2-D weight (shape {:?}); linear layers are compressed only when asked for",
                    t.shape
                )
            } else {
                format!("not a 4-D conv kernel (shape {:?})", t.shape)
            })
        } else if !t.name.ends_with(".weight") {
            Some("not a module's weight (the name does not end in .weight)".to_string())
        } else if t.shape.contains(&0) {
            Some("empty kernel".to_string())
        } else if t.shape.len() == 4 && t.shape[1] == 1 && geometry.groups == 1 {
            Some(format!(
                "depthwise or grouped conv (input mode of dimension 1, shape {:?}, groups unknown); left as is",
                t.shape
            ))
        } else if t.shape.len() == 4 && geometry.groups > 1 && t.shape[0] % geometry.groups != 0 {
            Some(format!(
                "{} groups do not divide the {} output channels of shape {:?}",
                geometry.groups, t.shape[0], t.shape
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
            None => {
                metas.push(LayerMeta {
                    name: module.to_string(),
                    shape: t.shape.clone(),
                    dtype: t.dtype.clone(),
                    bias: names.contains(format!("{module}.bias").as_str()),
                    geometry,
                });
                sources.push(idx);
            }
        }
    }
    if metas.is_empty() {
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
    let source = FileSource {
        model: &model,
        tensors: sources.iter().map(|&i| tensors[i].name.as_str()).collect(),
    };
    let out = run(&metas, &source, opts)?;
    let n = metas.len();
    for (k, reason) in out.skipped {
        let t = &tensors[sources[k]];
        skipped.push(Skipped {
            tensor: t.name.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype.clone(),
            kernel: true,
            reason,
        });
    }
    // Skipped layers are listed in file order with the other skipped candidates.
    let order: std::collections::HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    skipped.sort_by_key(|s| order.get(s.tensor.as_str()).copied().unwrap_or(usize::MAX));
    if out.compressed.is_empty() {
        let reasons: Vec<String> = skipped
            .iter()
            .filter(|s| s.kernel)
            .take(4)
            .map(|s| format!("{}: {}", s.tensor, s.reason))
            .collect();
        return Err(CompressError::NothingCompressed(format!(
            "rank rule {} compresses none of the {n} matched layers ({}{})",
            opts.rule,
            reasons.join("; "),
            if n > 4 { "; ..." } else { "" }
        )));
    }
    let (layers, factors): (Vec<_>, Vec<_>) = out.compressed.into_iter().map(|(_, r, f)| (r, f)).unzip();
    let kept: BTreeSet<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    inferred.retain(|(name, _)| kept.contains(name.as_str()));
    Ok(Compressed {
        source: path.display().to_string(),
        model,
        tensors,
        factors,
        method: opts.method,
        rank_rule: opts.rule.to_string(),
        layers,
        skipped,
        unmatched_overrides: out.unmatched_overrides,
        inferred,
    })
}
