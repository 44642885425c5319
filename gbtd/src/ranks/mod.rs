//! Rank selection for compressing conv kernels: which ranks each layer of a model gets.
//!
//! A [`RankRule`] (parsed from `fixed:64,32`, `energy:0.9`, `ratio:4`, `budget:0.25` or `vbmf`)
//! is applied by [`choose_ranks`] to every layer at once, from each kernel's [`LayerSpectra`]
//! (the squared singular values of its mode-0 and mode-1 unfoldings) and the [`ParamModel`] of
//! the decomposition method (how the layer chain's parameter count depends on the ranks).
//! Per-layer [`Overrides`] come from a TOML or JSON file.
//!
//! Conventions: kernels are in PyTorch layout `(out, in, kh, kw)`; the factorized modes are
//! `[0, 1]`, so ranks are `[r_out, r_in]` (per term for BTD) or `[R]` for CP.
//!
//! A layer is skipped (left unchanged, with the reason) when the rule cannot make it smaller:
//! an input or output mode of dimension 1 (a depthwise or grouped kernel `(C, 1, kh, kw)`, whose
//! 4-D decomposition would only add parameters), ranks that keep every dimension, a chain with
//! at least as many parameters as the kernel, or a rule that retains nothing (VBMF on a kernel
//! that looks like pure noise, an all-zero kernel).
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

use crate::error::{GbtdError, Result};

/// How a method's parameter count depends on the ranks, for a kernel `(o, i, kh, kw)`: the
/// parameters of the layer chain it is stored as (1×1 reduce, grouped `kh×kw`, 1×1 expand; see
/// [`crate::layers::LayerChain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamModel {
    /// Tucker-2 on modes 0 and 1 with ranks `(r_o, r_i)`: `o·r_o + i·r_i + r_o·r_i·kh·kw`.
    Tucker2,
    /// BTD with `terms` terms of rank `(r_o, r_i)`: `R·(o·r_o + i·r_i + r_o·r_i·kh·kw)`.
    Btd {
        /// The number of block terms `R`.
        terms: usize,
    },
    /// CP of rank `R`: `R·(o + i + kh·kw)` as a chain (its middle conv is depthwise `kh×kw`,
    /// which holds the outer product of the two spatial factors; the factors themselves have
    /// `R·(o + i + kh + kw)`).
    Cp,
}

impl ParamModel {
    /// How many ranks a layer takes: 2 (`[r_out, r_in]`) or 1 (`[R]` for CP).
    pub fn n_ranks(&self) -> usize {
        match self {
            ParamModel::Cp => 1,
            _ => 2,
        }
    }

    /// The parameters of the chain for a kernel of `shape` (`(o, i, kh, kw)`; any trailing
    /// spatial modes multiply into `kh·kw`) with `ranks`.
    pub fn params(&self, shape: &[usize], ranks: &[usize]) -> usize {
        let (o, i) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        match self {
            ParamModel::Tucker2 => o * ranks[0] + i * ranks[1] + ranks[0] * ranks[1] * s,
            ParamModel::Btd { terms } => terms * (o * ranks[0] + i * ranks[1] + ranks[0] * ranks[1] * s),
            ParamModel::Cp => ranks[0] * (o + i + s),
        }
    }

    /// The largest useful ranks: `⌊d/R⌋` per mode for BTD (so that `R·r ≤ d`), the dims for
    /// Tucker-2, and `None` (no cap) for CP.
    pub fn caps(&self, shape: &[usize]) -> Option<[usize; 2]> {
        match self {
            ParamModel::Tucker2 => Some([shape[0], shape[1]]),
            ParamModel::Btd { terms } => Some([shape[0] / terms, shape[1] / terms]),
            ParamModel::Cp => None,
        }
    }

    /// The total ranks of the factorized modes, `[R·r_o, R·r_i]` (`[R, R]` for CP), which the
    /// spectra-based estimates use.
    pub fn total_ranks(&self, ranks: &[usize]) -> [usize; 2] {
        match self {
            ParamModel::Tucker2 => [ranks[0], ranks[1]],
            ParamModel::Btd { terms } => [terms * ranks[0], terms * ranks[1]],
            ParamModel::Cp => [ranks[0], ranks[0]],
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
/// Returns one [`RankChoice`] per layer, in order. The layers' spectra must be on modes `[0, 1]`
/// of 4-D kernels (other layers are skipped with the reason). A layer named in `overrides` uses
/// its own rule (or is skipped); with `Budget`, overridden layers are outside the budget, which
/// covers the remaining layers only.
///
/// Per-layer rules:
/// - `fixed`: the given ranks, lowered to the caps of [`ParamModel::caps`].
/// - `energy:f`: per mode the [`LayerSpectra::energy_rank`] `r_n`; BTD with `R` terms takes
///   `⌈r_n/R⌉` per term (total ranks at least `r_n`), CP takes `R = max(r_0, r_1)` (the CP rank
///   is at least every multilinear rank).
/// - `ratio:x`: the largest `k` such that the ranks `(clamp(round(k·o/m)), clamp(round(k·i/m)))`,
///   `m = max(o, i)`, each clamped to `[1, cap]`, give at most `params/x` parameters; CP: the
///   largest `R` with `R·(o + i + kh·kw) ≤ params/x`.
/// - `vbmf`: per mode the rank of [`vbmf_rank`] on the unfolding's singular values, mapped to
///   BTD and CP as for `energy`.
///
/// Errors: `fixed` with the wrong number of ranks for the method, BTD with zero terms, spectra
/// not on modes `[0, 1]`, and a budget too small for rank-1 chains of all its layers.
pub fn choose_ranks(
    rule: &RankRule,
    layers: &[LayerSpectra],
    model: &ParamModel,
    overrides: &Overrides,
) -> Result<Vec<RankChoice>> {
    if let ParamModel::Btd { terms: 0 } = model {
        return Err(GbtdError::Options("BTD needs at least one term".into()));
    }
    let mut out: Vec<Option<RankChoice>> = vec![None; layers.len()];
    let mut pool = Vec::new();
    for (k, layer) in layers.iter().enumerate() {
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
        let members: Vec<&LayerSpectra> = pool.iter().map(|&k| &layers[k]).collect();
        for (k, choice) in pool.iter().zip(budget::allocate(*f, &members, model)?) {
            out[*k] = Some(choice);
        }
    }
    out.into_iter()
        .zip(layers)
        .map(|(c, layer)| match c {
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
fn structural_skip(layer: &LayerSpectra, model: &ParamModel) -> Result<Option<String>> {
    if layer.shape.len() != 4 {
        return Ok(Some(format!(
            "not a 4-D conv kernel (shape {:?}); only (out, in, kh, kw) kernels are compressed",
            layer.shape
        )));
    }
    if layer.modes != [0, 1] || layer.sq_singular_values.len() != 2 {
        return Err(GbtdError::Options(format!(
            "layer {}: rank rules need the spectra of modes [0, 1], got modes {:?}",
            layer.name, layer.modes
        )));
    }
    if layer.shape[1] == 1 {
        return Ok(Some(format!(
            "input mode has dimension 1 (a depthwise or grouped kernel {:?}): a decomposition of modes 0 and 1 cannot make it smaller",
            layer.shape
        )));
    }
    if layer.shape[0] == 1 {
        return Ok(Some(format!(
            "output mode has dimension 1 (kernel {:?}): a decomposition of modes 0 and 1 cannot make it smaller",
            layer.shape
        )));
    }
    if model.caps(&layer.shape).is_some_and(|[a, b]| a == 0 || b == 0) {
        let t = match model {
            ParamModel::Btd { terms } => *terms,
            _ => 1,
        };
        return Ok(Some(format!(
            "{t} terms do not fit the dims {:?}: each term needs at least one channel per mode",
            &layer.shape[..2]
        )));
    }
    if layer.total_energy() <= 0.0 {
        return Ok(Some("all-zero kernel: nothing to decompose".into()));
    }
    Ok(None)
}

/// A per-layer rule on one layer that passed [`structural_skip`].
fn per_layer(rule: &RankRule, layer: &LayerSpectra, model: &ParamModel) -> Result<RankChoice> {
    let shape = &layer.shape;
    let caps = model.caps(shape);
    let cap = |r: usize, n: usize| caps.map_or(r, |c| r.min(c[n]).max(1));
    let from_modes = |r0: usize, r1: usize| -> Vec<usize> {
        match model {
            ParamModel::Tucker2 => vec![cap(r0, 0), cap(r1, 1)],
            ParamModel::Btd { terms } => vec![cap(r0.div_ceil(*terms), 0), cap(r1.div_ceil(*terms), 1)],
            ParamModel::Cp => vec![r0.max(r1)],
        }
    };
    Ok(match rule {
        RankRule::Fixed(r) => {
            if r.len() != model.n_ranks() {
                return Err(GbtdError::Options(format!(
                    "{rule} gives {} rank(s) but {} needs {}",
                    r.len(),
                    method_name(model),
                    if model.n_ranks() == 2 {
                        "2 (fixed:R_OUT,R_IN)"
                    } else {
                        "1 (fixed:R)"
                    }
                )));
            }
            RankChoice::Ranks(match model {
                ParamModel::Cp => r.clone(),
                _ => vec![cap(r[0], 0), cap(r[1], 1)],
            })
        }
        RankRule::Energy(f) => match (layer.energy_rank(0, *f), layer.energy_rank(1, *f)) {
            (Some(a), Some(b)) => RankChoice::Ranks(from_modes(a, b)),
            _ => RankChoice::Skip("all-zero kernel: nothing to decompose".into()),
        },
        RankRule::Ratio(x) => ratio_ranks(*x, shape, model),
        RankRule::Vbmf => {
            let mut r = [0usize; 2];
            for (n, rn) in r.iter_mut().enumerate() {
                let (rows, cols) = layer.unfolding_dims(n);
                let s: Vec<f64> = layer.sq_singular_values[n].iter().map(|v| v.sqrt()).collect();
                *rn = vbmf_rank(&s, rows, cols).0;
            }
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

fn method_name(model: &ParamModel) -> &'static str {
    match model {
        ParamModel::Tucker2 => "tucker2",
        ParamModel::Btd { .. } => "btd",
        ParamModel::Cp => "cp",
    }
}

/// `ratio:x` on one layer (see [`choose_ranks`]).
fn ratio_ranks(x: f64, shape: &[usize], model: &ParamModel) -> RankChoice {
    let before: usize = shape.iter().product();
    let target = before as f64 / x;
    let fits = |r: &[usize]| model.params(shape, r) as f64 <= target;
    let best = match model.caps(shape) {
        None => {
            let per = model.params(shape, &[1]) as f64;
            let r = (target / per).floor() as usize;
            (r >= 1).then(|| vec![r])
        }
        Some(caps) => {
            let m = shape[0].max(shape[1]);
            let mut best = None;
            // Both ranks are non-decreasing in k, so the parameter count is too.
            for k in 1..=m {
                let r = proportional(k, shape, caps);
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

/// Step `k` of the proportional path: `clamp(round(k·d_n/m), 1, cap_n)` with `m = max(o, i)`.
pub(crate) fn proportional(k: usize, shape: &[usize], caps: [usize; 2]) -> Vec<usize> {
    let m = shape[0].max(shape[1]) as f64;
    (0..2)
        .map(|n| (((k as f64) * shape[n] as f64 / m).round() as usize).clamp(1, caps[n].max(1)))
        .collect()
}

/// The final check of every chosen rank vector: skip when the chain is not smaller.
fn worth_it(layer: &LayerSpectra, model: &ParamModel, ranks: Vec<usize>) -> RankChoice {
    let before: usize = layer.shape.iter().product();
    let after = model.params(&layer.shape, &ranks);
    let total = model.total_ranks(&ranks);
    if !matches!(model, ParamModel::Cp) && total[0] >= layer.shape[0] && total[1] >= layer.shape[1] {
        return RankChoice::Skip(format!(
            "ranks {ranks:?} keep the full dimensions {:?}: nothing is gained",
            &layer.shape[..2]
        ));
    }
    if after >= before {
        return RankChoice::Skip(format!(
            "ranks {ranks:?} give a chain of {after} parameters, not fewer than the kernel's {before}"
        ));
    }
    RankChoice::Ranks(ranks)
}
