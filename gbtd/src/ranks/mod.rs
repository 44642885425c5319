//! Rank selection for compressing a model's layers: which ranks each layer gets.
//!
//! A [`RankRule`] (parsed from `fixed:64,32`, `energy:0.9`, `ratio:4`, `budget:0.25` or `vbmf`)
//! is applied by [`choose_ranks`] to every layer at once, from each layer's [`LayerSpectra`]
//! (the squared singular values of its mode-0 and mode-1 unfoldings) and the decomposition
//! [`Method`] (how the layer chain's parameter count depends on the ranks). Per-layer
//! [`Overrides`] come from a TOML or JSON file.
//!
//! Conventions: conv kernels are in PyTorch layout `(out, in/groups, kh, kw)`; the factorized
//! modes are `[0, 1]`, so ranks are `[r_out, r_in]` (per term for BTD) or `[K]` for CP. A conv
//! with `groups = G > 1` is compressed group by group with the same ranks for every group (its
//! spectra pool the groups, see [`LayerSpectra::of_grouped`]), so every count is `G` times that of
//! one group `(out/G, in/G, kh, kw)`. A 2-D layer `(out, in)` (a linear layer) is always
//! compressed by a truncated SVD of rank `r` (two linear layers, `r·(in + out)` weights), whatever
//! the method; its ranks are `[r]`.
//!
//! A layer is skipped (left unchanged, with the reason) when the rule cannot make it smaller:
//! an input or output mode of dimension 1 per group (a depthwise kernel), ranks that keep every
//! dimension, a chain with at least as many parameters as the layer, or a rule that retains
//! nothing (VBMF on a kernel that looks like pure noise, an all-zero kernel).
pub mod budget;
mod overrides;
mod rule;
mod spectra;
mod vbmf;

pub use budget::estimated_sq_error;
pub use overrides::{Override, Overrides};
pub use rule::RankRule;
pub use spectra::LayerSpectra;
pub use vbmf::{tau_threshold, vbmf_rank};

use crate::decomposition::Method;
use crate::error::{GbtdError, Result};

/// How one layer's parameter count depends on its ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Model {
    /// A conv kernel `(out, in/groups, kh, kw)`: each of its `groups` groups becomes a chain of
    /// `method` with the same ranks.
    Chain {
        /// The decomposition of each group.
        method: Method,
        /// The conv's groups.
        groups: usize,
    },
    /// A matrix `(out, in)` as a truncated SVD of rank `r`: `r·(out + in)` weights.
    Svd,
}

impl Model {
    /// The model of `layer` compressed with `method`: [`Model::Svd`] for a 2-D layer.
    pub(crate) fn of(method: Method, layer: &LayerSpectra) -> Model {
        if layer.shape.len() == 2 {
            Model::Svd
        } else {
            Model::Chain {
                method: match method {
                    // Compression factorizes the channel modes only.
                    Method::Tucker => Method::Tucker2,
                    m => m,
                },
                groups: layer.groups.max(1),
            }
        }
    }

    /// How many ranks a layer takes: 2 (`[r_out, r_in]`) or 1 (`[K]` for CP, `[r]` for SVD).
    pub(crate) fn n_ranks(&self) -> usize {
        match self {
            Model::Chain { method, .. } => method.n_ranks(),
            Model::Svd => 1,
        }
    }

    /// The shape of one group's kernel: `(out/G, in/G, kh, kw)` from the stored `(out, in/G, kh,
    /// kw)` (the shape itself for `G = 1` and for matrices).
    pub(crate) fn group_shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut s = shape.to_vec();
        if let Model::Chain { groups, .. } = self {
            s[0] /= groups;
        }
        s
    }

    /// The parameters of the factorized layer for a layer of `shape` with `ranks`.
    pub(crate) fn params(&self, shape: &[usize], ranks: &[usize]) -> usize {
        match self {
            Model::Chain { method, groups } => groups * method.chain_params(&self.group_shape(shape), ranks),
            Model::Svd => ranks[0] * (shape[0] + shape[1]),
        }
    }

    /// The largest useful ranks per group when they are per mode: `⌊d/R⌋` per mode for BTD (so
    /// that `R·r ≤ d`), the group's dims for Tucker-2; `None` for CP and SVD (one rank).
    pub(crate) fn caps(&self, shape: &[usize]) -> Option<[usize; 2]> {
        let g = self.group_shape(shape);
        match self {
            Model::Chain {
                method: Method::Tucker | Method::Tucker2,
                ..
            } => Some([g[0], g[1]]),
            Model::Chain {
                method: Method::Btd { terms },
                ..
            } => Some([g[0] / terms, g[1] / terms]),
            Model::Chain {
                method: Method::Cp, ..
            }
            | Model::Svd => None,
        }
    }

    /// The largest useful single rank (SVD: `min(out, in)`, beyond which nothing is gained);
    /// `None` when unbounded (CP) or when ranks are per mode.
    pub(crate) fn rank_limit(&self, shape: &[usize]) -> Option<usize> {
        match self {
            Model::Svd => Some(shape[0].min(shape[1])),
            _ => None,
        }
    }

    /// The total ranks of the factorized modes per group, `[R·r_o, R·r_i]` (`[K, K]` for CP,
    /// `[r, r]` for SVD), which the spectra-based estimates use.
    pub(crate) fn total_ranks(&self, ranks: &[usize]) -> [usize; 2] {
        match self {
            Model::Chain { method, .. } => {
                let (r, ro, ri) = method.chain_dims(ranks);
                [r * ro, r * ri]
            }
            Model::Svd => [ranks[0], ranks[0]],
        }
    }

    /// The method's name in messages.
    fn name(&self) -> &'static str {
        match self {
            Model::Chain { method, .. } => method.as_str(),
            Model::Svd => "svd (linear layers)",
        }
    }
}

/// The outcome of a rule for one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RankChoice {
    /// Decompose with these ranks (`[r_out, r_in]`, per term for BTD; `[R]` for CP).
    Ranks(Vec<usize>),
    /// Leave the layer unchanged, for this reason (one line).
    Skip(String),
}

/// Chooses ranks for every layer at once (`Budget` needs all layers; the others are per layer).
///
/// Returns one [`RankChoice`] per layer, in order. Conv layers (4-D) are compressed by `method`
/// (`tucker` counts as `tucker2`: only the channel modes are factorized), 2-D layers by a
/// truncated SVD (see the module documentation). The layers' spectra must be on modes `[0, 1]`
/// (other layers are skipped with the reason). A layer named in `overrides` uses its own rule (or
/// is skipped); with `Budget`, overridden layers are outside the budget, which covers the
/// remaining layers only.
///
/// Per-layer rules (per group for a grouped conv):
/// - `fixed`: the given ranks, lowered to the caps of the method (`⌊d/R⌋` per mode for BTD); a
///   2-D layer takes the smaller of two ranks (or the one rank given), at most `min(out, in)`.
/// - `energy:f`: per mode the [`LayerSpectra::energy_rank`] `r_n`; BTD with `R` terms takes
///   `⌈r_n/R⌉` per term (total ranks at least `r_n`), CP takes `K = max(r_0, r_1)` (the CP rank
///   is at least every multilinear rank), SVD `r_0`.
/// - `ratio:x`: the largest `k` such that the ranks `(clamp(round(k·o/m)), clamp(round(k·i/m)))`,
///   `m = max(o, i)`, each clamped to `[1, cap]`, give at most `params/x` parameters; CP: the
///   largest `K` with `K·(o + i + kh·kw) ≤ params/x`; SVD: the largest `r` with
///   `r·(o + i) ≤ params/x`.
/// - `vbmf`: per mode the rank of [`vbmf_rank`] on the unfolding's singular values (the largest
///   over the groups of a grouped conv), mapped to BTD, CP and SVD as for `energy`.
///
/// Errors: `fixed` with the wrong number of ranks for the method, BTD with zero terms, spectra
/// not on modes `[0, 1]`, and a budget too small for rank-1 chains of all its layers.
pub fn choose_ranks(
    rule: &RankRule,
    layers: &[LayerSpectra],
    method: Method,
    overrides: &Overrides,
) -> Result<Vec<RankChoice>> {
    if let Method::Btd { terms: 0 } = method {
        return Err(GbtdError::Options("BTD needs at least one term".into()));
    }
    let models: Vec<Model> = layers.iter().map(|l| Model::of(method, l)).collect();
    let mut out: Vec<Option<RankChoice>> = vec![None; layers.len()];
    let mut pool = Vec::new();
    for (k, (layer, model)) in layers.iter().zip(&models).enumerate() {
        if let Some(why) = structural_skip(layer, model)? {
            out[k] = Some(RankChoice::Skip(why));
            continue;
        }
        let own = match overrides.get(&layer.name) {
            Some(Override::Skip) => {
                out[k] = Some(RankChoice::Skip("skipped by the overrides file".into()));
                continue;
            }
            Some(Override::Rule(r)) => Some(r),
            None => None,
        };
        match (own, rule) {
            (Some(r), _) => out[k] = Some(per_layer(r, layer, model).map_err(|e| in_layer(&layer.name, e))?),
            (None, RankRule::Budget(_)) => pool.push(k),
            (None, r) => out[k] = Some(per_layer(r, layer, model).map_err(|e| in_layer(&layer.name, e))?),
        }
    }
    if let RankRule::Budget(f) = rule {
        let members: Vec<(&LayerSpectra, Model)> = pool.iter().map(|&k| (&layers[k], models[k])).collect();
        for (k, choice) in pool.iter().zip(budget::allocate(*f, &members)?) {
            out[*k] = Some(choice);
        }
    }
    out.into_iter()
        .zip(layers.iter().zip(&models))
        .map(|(c, (layer, model))| match c {
            Some(RankChoice::Ranks(r)) => Ok(worth_it(layer, model, r)),
            Some(skip) => Ok(skip),
            None => Err(GbtdError::internal(format!(
                "no rank chosen for layer {}",
                layer.name
            ))),
        })
        .collect()
}

fn in_layer(name: &str, e: GbtdError) -> GbtdError {
    match e {
        GbtdError::Options(m) => GbtdError::Options(format!("layer {name}: {m}")),
        other => other,
    }
}

/// Why the layer cannot be compressed whatever the ranks, if so. Spectra not on modes `[0, 1]`
/// are an error (a caller's mistake, not a property of the layer).
fn structural_skip(layer: &LayerSpectra, model: &Model) -> Result<Option<String>> {
    if layer.shape.len() != 4 && layer.shape.len() != 2 {
        return Ok(Some(format!(
            "not a 4-D conv kernel or a 2-D weight (shape {:?})",
            layer.shape
        )));
    }
    if layer.modes != [0, 1] || layer.sq_singular_values.len() != 2 {
        return Err(GbtdError::Options(format!(
            "layer {}: rank rules need the spectra of modes [0, 1], got modes {:?}",
            layer.name, layer.modes
        )));
    }
    let g = model.group_shape(&layer.shape);
    let per_group = if layer.groups > 1 {
        format!(" per group ({} groups)", layer.groups)
    } else {
        String::new()
    };
    if g[1] == 1 {
        return Ok(Some(format!(
            "input mode has dimension 1{per_group} (a depthwise kernel {:?}): a decomposition of modes 0 and 1 cannot make it smaller",
            layer.shape
        )));
    }
    if g[0] == 1 {
        return Ok(Some(format!(
            "output mode has dimension 1{per_group} (kernel {:?}): a decomposition of modes 0 and 1 cannot make it smaller",
            layer.shape
        )));
    }
    if model.caps(&layer.shape).is_some_and(|[a, b]| a == 0 || b == 0) {
        let t = match model {
            Model::Chain {
                method: Method::Btd { terms },
                ..
            } => *terms,
            _ => 1,
        };
        return Ok(Some(format!(
            "{t} terms do not fit the dims {:?}{per_group}: each term needs at least one channel per mode",
            &g[..2]
        )));
    }
    if layer.total_energy() <= 0.0 {
        return Ok(Some("all-zero kernel: nothing to decompose".into()));
    }
    Ok(None)
}

/// A per-layer rule on one layer that passed [`structural_skip`].
fn per_layer(rule: &RankRule, layer: &LayerSpectra, model: &Model) -> Result<RankChoice> {
    let shape = &layer.shape;
    let caps = model.caps(shape);
    let limit = model.rank_limit(shape);
    let cap = |r: usize, n: usize| caps.map_or(r, |c| r.min(c[n]).max(1));
    let one = |r: usize| limit.map_or(r, |l| r.min(l)).max(1);
    let from_modes = |r0: usize, r1: usize| -> Vec<usize> {
        match model {
            Model::Chain {
                method: Method::Btd { terms },
                ..
            } => vec![cap(r0.div_ceil(*terms), 0), cap(r1.div_ceil(*terms), 1)],
            Model::Chain {
                method: Method::Cp, ..
            } => vec![r0.max(r1)],
            Model::Chain { .. } => vec![cap(r0, 0), cap(r1, 1)],
            Model::Svd => vec![one(r0)],
        }
    };
    Ok(match rule {
        RankRule::Fixed(r) => match model {
            Model::Svd if !r.is_empty() && r.len() <= 2 => {
                RankChoice::Ranks(vec![one(r.iter().copied().min().unwrap_or(1))])
            }
            _ if r.len() != model.n_ranks() => {
                return Err(GbtdError::Options(format!(
                    "{rule} gives {} rank(s) but {} needs {}",
                    r.len(),
                    model.name(),
                    if model.n_ranks() == 2 {
                        "2 (fixed:R_OUT,R_IN)"
                    } else {
                        "1 (fixed:R)"
                    }
                )));
            }
            Model::Chain {
                method: Method::Cp, ..
            } => RankChoice::Ranks(r.clone()),
            _ => RankChoice::Ranks(vec![cap(r[0], 0), cap(r[1], 1)]),
        },
        RankRule::Energy(f) => match (layer.energy_rank(0, *f), layer.energy_rank(1, *f)) {
            (Some(a), Some(b)) => RankChoice::Ranks(from_modes(a, b)),
            _ => RankChoice::Skip("all-zero kernel: nothing to decompose".into()),
        },
        RankRule::Ratio(x) => ratio_ranks(*x, shape, model),
        RankRule::Vbmf => {
            let r = layer.vbmf_ranks();
            if r.contains(&0) {
                RankChoice::Skip(format!(
                    "vbmf retains no component of mode {} (the unfolding looks like noise)",
                    if r[0] == 0 { 0 } else { 1 }
                ))
            } else {
                RankChoice::Ranks(from_modes(r[0], r[1]))
            }
        }
        RankRule::Budget(_) => {
            return Err(GbtdError::Options(
                "budget is a global rule, not a per-layer one".into(),
            ));
        }
    })
}

/// `ratio:x` on one layer (see [`choose_ranks`]).
fn ratio_ranks(x: f64, shape: &[usize], model: &Model) -> RankChoice {
    let before: usize = shape.iter().product();
    let target = before as f64 / x;
    let fits = |r: &[usize]| model.params(shape, r) as f64 <= target;
    let best = match model.caps(shape) {
        None => {
            let per = model.params(shape, &[1]) as f64;
            let r = (target / per).floor() as usize;
            let r = model.rank_limit(shape).map_or(r, |l| r.min(l));
            (r >= 1).then(|| vec![r])
        }
        Some(caps) => {
            let g = model.group_shape(shape);
            let m = g[0].max(g[1]);
            let mut best = None;
            // Both ranks are non-decreasing in k, so the parameter count is too.
            for k in 1..=m {
                let r = proportional(k, &g, caps);
                if fits(&r) {
                    best = Some(r);
                } else {
                    break;
                }
            }
            best
        }
    };
    match best {
        Some(r) => RankChoice::Ranks(r),
        None => {
            let smallest = if model.n_ranks() == 1 { vec![1] } else { vec![1, 1] };
            RankChoice::Skip(format!(
                "ratio:{x} allows {} parameters but even ranks {smallest:?} need {}",
                target.floor(),
                model.params(shape, &smallest)
            ))
        }
    }
}

/// Step `k` of the proportional path: `clamp(round(k·d_n/m), 1, cap_n)` with `m = max(o, i)` of
/// the (group) kernel `shape`.
pub(crate) fn proportional(k: usize, shape: &[usize], caps: [usize; 2]) -> Vec<usize> {
    let m = shape[0].max(shape[1]) as f64;
    (0..2)
        .map(|n| (((k as f64) * shape[n] as f64 / m).round() as usize).clamp(1, caps[n].max(1)))
        .collect()
}

/// The final check of every chosen rank vector: skip when the factorized layer is not smaller.
fn worth_it(layer: &LayerSpectra, model: &Model, ranks: Vec<usize>) -> RankChoice {
    let before: usize = layer.shape.iter().product();
    let after = model.params(&layer.shape, &ranks);
    let total = model.total_ranks(&ranks);
    let g = model.group_shape(&layer.shape);
    let cp = matches!(
        model,
        Model::Chain {
            method: Method::Cp,
            ..
        }
    );
    if !cp && total[0] >= g[0] && total[1] >= g[1] {
        return RankChoice::Skip(format!(
            "ranks {ranks:?} keep the full dimensions {:?}: nothing is gained",
            &g[..2]
        ));
    }
    if after >= before {
        return RankChoice::Skip(format!(
            "ranks {ranks:?} give a chain of {after} parameters, not fewer than the kernel's {before}"
        ));
    }
    RankChoice::Ranks(ranks)
}
