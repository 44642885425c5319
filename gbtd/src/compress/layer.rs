//! One layer of a whole-model compression, and the driver that takes a set of layers through the
//! same steps whether they come from a model file (`gbtd compress`) or from memory (the Python
//! package's `compress_model`): the unfolding spectra, one rank choice for all layers at once,
//! then per layer the checks, the factorization ([`factorize`]) and the report row.
use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD, Axis, Slice};

use super::chain::{Factorized, GroupedChain, SvdChain};
use super::{CompressError, CompressOptions, LayerKind, LayerReport};
use crate::btd::{BtdOptions, btd};
use crate::cp::{CpOptions, parafac};
use crate::decomposition::Method;
use crate::error::{GbtdError, Result};
use crate::layers::LayerChain;
use crate::options::{IterOptions, Progress, Stage};
use crate::ranks::{LayerSpectra, RankChoice, RankRule, choose_ranks};
use crate::real::Real;
use crate::tensor::relative_error;
use crate::tucker::{TuckerOptions, tucker};

/// How a layer is used in the network, which its weight alone does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerGeometry {
    /// The conv's groups `G` (1 for a dense conv and for a linear layer); the stored kernel is
    /// `(out, in/G, kh, kw)`.
    pub groups: usize,
    /// Positions per sample at the layer's input: `H_in·W_in` for a conv, the number of vectors
    /// a linear layer maps per sample (1 for a plain classifier). `None` when unknown.
    pub input_positions: Option<u64>,
    /// Positions per sample at the layer's output: `H_out·W_out` for a conv (the linear layer's
    /// count again for a linear layer). `None` when unknown.
    pub output_positions: Option<u64>,
}

impl Default for LayerGeometry {
    /// One group, sizes unknown.
    fn default() -> Self {
        LayerGeometry {
            groups: 1,
            input_positions: None,
            output_positions: None,
        }
    }
}

/// One layer to compress: its module name (`NAME` of `NAME.weight`), its kind and geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMeta {
    /// The module name; rules, overrides and the output's tensor names use it.
    pub name: String,
    /// The weight's shape: `(out, in/G, kh, kw)` or `(out, in)`.
    pub shape: Vec<usize>,
    /// The weight's dtype as stored (`F32`, `F16`, `float32`, ...), for the report.
    pub dtype: String,
    /// Whether the layer has a bias (`NAME.bias`), which moves to the last layer of the chain.
    pub bias: bool,
    /// Groups and sizes.
    pub geometry: LayerGeometry,
}

impl LayerMeta {
    /// Conv or linear, from the weight's order.
    pub fn kind(&self) -> LayerKind {
        if self.shape.len() == 2 {
            LayerKind::Linear
        } else {
            LayerKind::Conv {
                groups: self.geometry.groups.max(1),
            }
        }
    }
}

/// A floating-point weight, borrowed, in the precision it is computed in.
#[derive(Debug, Clone)]
pub enum WeightView<'a> {
    /// `f32` (also `f16` and `bf16` data widened to `f32`).
    F32(ArrayViewD<'a, f32>),
    /// `f64`.
    F64(ArrayViewD<'a, f64>),
}

/// A factorized layer in the precision it was computed in.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyFactorized {
    /// From an `f32` (or `f16`/`bf16`) weight.
    F32(Factorized<f32>),
    /// From an `f64` weight.
    F64(Factorized<f64>),
}

/// Where the driver gets each layer's weight: it is asked twice per layer (spectra, then
/// decomposition), so that a model file need not hold more than one weight in memory.
pub(crate) trait WeightSource {
    /// Calls `f` with layer `index`'s weight.
    fn with_weight<R>(
        &self,
        index: usize,
        f: &mut dyn FnMut(WeightView<'_>) -> R,
    ) -> std::result::Result<R, CompressError>;
}

/// What the driver produced: one report row and factorized layer per compressed layer, and the
/// layers left as they were with the reason, each with its index in the input.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) compressed: Vec<(usize, LayerReport, AnyFactorized)>,
    pub(crate) skipped: Vec<(usize, String)>,
    pub(crate) unmatched_overrides: Vec<String>,
}

/// The unfolding spectra the rank rules need (per group for a grouped conv, see
/// [`LayerSpectra::of_grouped`]).
pub fn layer_spectra<T: Real>(meta: &LayerMeta, w: &ArrayViewD<'_, T>) -> Result<LayerSpectra> {
    match meta.kind() {
        LayerKind::Linear => LayerSpectra::of(&meta.name, w, &[0, 1]),
        LayerKind::Conv { groups } => LayerSpectra::of_grouped(&meta.name, w, groups),
    }
}

/// Factorizes one layer's weight with `ranks` (as chosen by [`choose_ranks`]): a conv kernel
/// `(out, in/G, kh, kw)` group by group with `method` on the channel modes `[0, 1]` (Tucker-2,
/// BTD with `terms` terms, or CP of rank `ranks[0]`), a linear weight `(out, in)` by a truncated
/// SVD of rank `ranks[0]`. Returns the factorized layer, `‖W − W_f‖/‖W‖` with `W_f` the weight the
/// factorized layers compute, and the sweeps run (summed over the groups; 0 for the SVD).
pub fn factorize<T: Real>(
    w: &ArrayViewD<'_, T>,
    kind: LayerKind,
    method: Method,
    ranks: &[usize],
    iter: IterOptions,
    progress: Progress<'_>,
) -> Result<(Factorized<T>, f64, usize)> {
    let (f, iterations) = match kind {
        LayerKind::Linear => (Factorized::Linear(SvdChain::truncated_svd(w, ranks[0])?), 0),
        LayerKind::Conv { groups } => {
            if w.ndim() != 4 || groups == 0 || !w.shape()[0].is_multiple_of(groups) {
                return Err(GbtdError::Shape(format!(
                    "a conv kernel (out, in/groups, kh, kw) with out divisible by {groups} groups is needed, got shape {:?}",
                    w.shape()
                )));
            }
            let per = w.shape()[0] / groups;
            let mut parts = Vec::with_capacity(groups);
            let mut iterations = 0;
            for g in 0..groups {
                let wg = w.slice_axis(Axis(0), Slice::from(g * per..(g + 1) * per));
                let (chain, it) = chain_of(&wg, method, ranks, iter, progress)?;
                parts.push(chain);
                iterations += it;
            }
            (Factorized::Conv(GroupedChain::new(parts)?), iterations)
        }
    };
    let approx: ArrayD<T> = f.weight()?;
    let err = relative_error(w, &approx.view())?;
    Ok((f, err, iterations))
}

/// One dense kernel `(out, in, kh, kw)` as a chain of `method` with `ranks`, and the sweeps run.
fn chain_of<T: Real>(
    x: &ArrayViewD<'_, T>,
    method: Method,
    ranks: &[usize],
    iter: IterOptions,
    progress: Progress<'_>,
) -> Result<(LayerChain<T>, usize)> {
    Ok(match method {
        Method::Tucker | Method::Tucker2 => {
            let opts = TuckerOptions::new(ranks.to_vec())
                .with_modes(vec![0, 1])
                .with_iter(iter)
                .with_callback(progress);
            let d = tucker(x, &opts)?;
            (LayerChain::from_tucker(&d)?, d.convergence.iterations)
        }
        Method::Btd { terms } => {
            let opts = BtdOptions::new(terms, ranks.to_vec())
                .with_modes(vec![0, 1])
                .with_iter(iter)
                .with_callback(progress);
            let d = btd(x, &opts)?;
            (LayerChain::from_btd(&d)?, d.convergence.iterations)
        }
        Method::Cp => {
            let opts = CpOptions::new(ranks[0]).with_iter(iter).with_callback(progress);
            let d = parafac(x, &opts)?;
            (LayerChain::from_cp(&d)?, d.convergence.iterations)
        }
    })
}

/// The multiply-adds per sample of a layer and of its factorized form, when the positions are
/// known: `params × output positions` for the original (its weights already count `in/G` per
/// output channel); for a conv chain the 1×1 reduce conv runs at the input positions (before the
/// middle conv's stride), the middle and expand convs at the output positions; a linear layer
/// and its two factors run at its positions.
fn macs(meta: &LayerMeta, f_params: [u64; 3]) -> (Option<u64>, Option<u64>) {
    let g = &meta.geometry;
    let before: u64 = meta.shape.iter().map(|&d| d as u64).product();
    match (g.input_positions, g.output_positions) {
        (Some(pi), Some(po)) => {
            let [first, middle, last] = f_params;
            (Some(before * po), Some(first * pi + (middle + last) * po))
        }
        _ => (None, None),
    }
}

/// Why ranks chosen by the rule cannot be used for this layer (a skip reason), or the ranks.
fn usable_ranks(
    meta: &LayerMeta,
    method: Method,
    ranks: Vec<usize>,
    fixed: bool,
) -> std::result::Result<Vec<usize>, String> {
    let kind = meta.kind();
    let shape = &meta.shape;
    let before: u64 = shape.iter().map(|&d| d as u64).product();
    let after = params_of(kind, method, shape, &ranks);
    if let LayerKind::Conv { groups } = kind {
        let (_, r_out, r_in) = method.chain_dims(&ranks);
        if method != Method::Cp && (r_out > shape[0] / groups || r_in > shape[1]) {
            return Err(format!(
                "ranks {r_out},{r_in} exceed the channels (out {}, in {}{})",
                shape[0] / groups,
                shape[1],
                if groups > 1 { " per group" } else { "" }
            ));
        }
    }
    if after >= before && !fixed {
        return Err(format!(
            "the chain would have {after} weights, not fewer than the layer's {before}"
        ));
    }
    Ok(ranks)
}

/// The weights of a layer of `shape` factorized with `ranks`.
pub fn params_of(kind: LayerKind, method: Method, shape: &[usize], ranks: &[usize]) -> u64 {
    match kind {
        LayerKind::Linear => (ranks[0] * (shape[0] + shape[1])) as u64,
        LayerKind::Conv { groups } => {
            let mut g = shape.to_vec();
            g[0] /= groups.max(1);
            (groups * method.chain_params(&g, ranks)) as u64
        }
    }
}

/// The weights of the first, middle and last factor layers (the linear SVD's has no middle).
fn part_params<T: Real>(f: &Factorized<T>) -> [u64; 3] {
    match f {
        Factorized::Conv(c) => {
            let sum = |k: fn(&LayerChain<T>) -> usize| c.parts.iter().map(k).sum::<usize>() as u64;
            [
                sum(|p| p.reduce.len()),
                sum(|p| p.grouped.len()),
                sum(|p| p.expand.len()),
            ]
        }
        Factorized::Linear(l) => [l.first.len() as u64, 0, l.second.len() as u64],
    }
}

/// Runs `layers` (whose weights `source` gives, in the same order) through spectra, rank choice
/// and factorization under `opts`; see the module documentation of [`super`].
pub(crate) fn run(
    layers: &[LayerMeta],
    source: &impl WeightSource,
    opts: &CompressOptions<'_>,
) -> std::result::Result<Outcome, CompressError> {
    let n = layers.len();
    let layer_err = |name: &str, source: GbtdError| CompressError::Layer {
        name: name.to_string(),
        source,
    };
    // Pass 1: the spectra the rule needs, one weight at a time.
    let mut spectra = Vec::with_capacity(n);
    for (k, meta) in layers.iter().enumerate() {
        opts.progress
            .layer(Stage::Spectra, k, n, &meta.name)
            .map_err(|e| layer_err(&meta.name, e))?;
        let s = source.with_weight(k, &mut |w| match w {
            WeightView::F32(a) => layer_spectra(meta, &a),
            WeightView::F64(a) => layer_spectra(meta, &a),
        })?;
        spectra.push(s.map_err(|e| layer_err(&meta.name, e))?);
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
    let choices = choose_ranks(&opts.rule, &spectra, opts.method, &opts.overrides).map_err(rule_err)?;
    drop(spectra);
    if choices.len() != n {
        return Err(rule_err(GbtdError::internal(format!(
            "{} rank choices for {n} layers",
            choices.len()
        ))));
    }
    let fixed = matches!(opts.rule, RankRule::Fixed(_));

    // Pass 2: factorize each layer the rule gives usable ranks.
    let mut compressed = Vec::new();
    let mut skipped = Vec::new();
    for (k, (meta, choice)) in layers.iter().zip(choices).enumerate() {
        let ranks = match choice {
            RankChoice::Skip(reason) => {
                skipped.push((k, reason));
                continue;
            }
            RankChoice::Ranks(r) => r,
        };
        let kind = meta.kind();
        let want = match kind {
            LayerKind::Linear => 1,
            LayerKind::Conv { .. } => opts.method.n_ranks(),
        };
        if ranks.len() != want || ranks.contains(&0) {
            return Err(rule_err(GbtdError::Rank(format!(
                "ranks {ranks:?} for layer '{}', which takes {want} rank(s) of at least 1",
                meta.name
            ))));
        }
        let ranks = match usable_ranks(meta, opts.method, ranks, fixed) {
            Ok(r) => r,
            Err(reason) => {
                skipped.push((k, reason));
                continue;
            }
        };
        opts.progress
            .layer(Stage::Decompose, k, n, &meta.name)
            .map_err(|e| layer_err(&meta.name, e))?;
        let start = Instant::now();
        let result = source.with_weight(k, &mut |w| match w {
            WeightView::F32(a) => factorize(&a, kind, opts.method, &ranks, opts.iter, opts.progress)
                .map(|(f, e, it)| (part_params(&f), AnyFactorized::F32(f), e, it)),
            WeightView::F64(a) => factorize(&a, kind, opts.method, &ranks, opts.iter, opts.progress)
                .map(|(f, e, it)| (part_params(&f), AnyFactorized::F64(f), e, it)),
        })?;
        let (parts, f, rel, iterations) = result.map_err(|e| layer_err(&meta.name, e))?;
        let (macs_before, macs_after) = macs(meta, parts);
        let before: u64 = meta.shape.iter().map(|&d| d as u64).product();
        let (terms, _, _) = match kind {
            LayerKind::Linear => (1, 0, 0),
            LayerKind::Conv { .. } => opts.method.chain_dims(&ranks),
        };
        let report = LayerReport {
            name: meta.name.clone(),
            shape: meta.shape.clone(),
            dtype: meta.dtype.clone(),
            kind,
            method: opts.method,
            ranks,
            terms,
            bias: meta.bias,
            relative_error: rel,
            params_before: before,
            params_after: parts.iter().sum(),
            macs_before,
            macs_after,
            seconds: start.elapsed().as_secs_f64(),
            iterations,
        };
        compressed.push((k, report, f));
    }
    Ok(Outcome {
        compressed,
        skipped,
        unmatched_overrides,
    })
}
