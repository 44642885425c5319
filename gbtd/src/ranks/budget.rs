//! `budget:f`: one parameter budget for all layers, spent where the estimated error drops most
//! per parameter.
//!
//! **Error estimate.** Truncated HOSVD of modes 0 and 1 with ranks `(r_0, r_1)` (projecting each
//! mode on the leading `r_n` left singular vectors of its unfolding) satisfies
//! `‖X − X̂‖² ≤ Σ_n Σ_{k≥r_n} s_{n,k}²` (De Lathauwer, De Moor, Vandewalle 2000, property 10),
//! and HOOI, which `gbtd compress` runs from that start, does no worse. The estimate of a layer's
//! squared relative error is that bound over `‖X‖²`:
//! `ε²(r_0, r_1) = (Σ_{k≥r_0} s_{0,k}² + Σ_{k≥r_1} s_{1,k}²) / ‖X‖²`.
//! BTD with `R` terms of rank `(r_0, r_1)` is scored at its total ranks `(R·r_0, R·r_1)` (a BTD
//! is a Tucker model with a block-diagonal core, so this is optimistic), and CP of rank `R` at
//! `(R, R)` (a heuristic: a rank-`R` CP model has multilinear ranks at most `(R, R)`).
//!
//! **Allocation.** The objective is the sum of the layers' `ε²` under
//! `Σ_l params_l ≤ f · Σ_l params_before_l`. Every layer starts at the first step of the `ratio`
//! rule's proportional path, `(round(k·o/m), round(k·i/m))` clamped to `[1, cap]` with
//! `m = max(o, i)` (rank `k` for CP); then, greedily, the move with the largest
//! `Δε² / Δparams` that still fits the remaining budget is taken, where the moves of a layer are:
//! the next step of its path that changes the ranks, or keep the original kernel (error 0,
//! costing its parameters minus the chain's). The loop ends when no move fits or none lowers the
//! error; the final parameter total never exceeds the budget.
//!
//! Why a path and not one rank at a time: the bound adds the two modes' discarded energies, and
//! the chain's core costs `r_0·r_1·kh·kw`, so raising one rank while the other stays at 1 looks
//! cheap and halves the bound without lowering the true error, which is at least the larger of
//! the two discarded fractions. On a kernel with flat spectra (random initialisation), free
//! per-mode moves ended at ranks like (512, 1) with a relative error of 0.998.
use crate::decomposition::Method;
use crate::error::{GbtdError, Result};
use crate::ranks::{LayerSpectra, Model, RankChoice, proportional};

/// The estimated squared relative error `ε²` of `layer` decomposed with `ranks` by `method`
/// (see the module documentation; a 2-D layer is scored as a truncated SVD of rank `ranks[0]`,
/// a grouped conv on its pooled spectra). It bounds the truncated HOSVD's error for Tucker-2; it
/// can exceed 1 at very small ranks. An all-zero kernel gives 0.
pub fn estimated_sq_error(layer: &LayerSpectra, method: Method, ranks: &[usize]) -> f64 {
    sq_error(layer, &Model::of(method, layer), ranks)
}

fn sq_error(layer: &LayerSpectra, model: &Model, ranks: &[usize]) -> f64 {
    let total = layer.total_energy();
    if total <= 0.0 {
        return 0.0;
    }
    let [a, b] = model.total_ranks(ranks);
    (layer.discarded(0, a) + layer.discarded(1, b)) / total
}

/// A chain not smaller than its kernel is replaced by the kernel at once (no error, no more
/// parameters).
fn settle(s: &mut State<'_>, spent: &mut usize) {
    if !s.kept && s.params >= s.before {
        *spent = *spent - s.params + s.before;
        s.kept = true;
    }
}

/// One layer's state in the greedy allocation.
struct State<'a> {
    layer: &'a LayerSpectra,
    model: Model,
    /// `tails[n][r] = Σ_{k≥r} s_{n,k}²` (0 past the end).
    tails: [Vec<f64>; 2],
    total: f64,
    before: usize,
    /// Step of the proportional path (the rank itself for CP).
    k: usize,
    ranks: Vec<usize>,
    params: usize,
    kept: bool,
}

impl State<'_> {
    /// The next ranks on this layer's path after step `self.k` that differ from the current
    /// ones, with their step; `None` at the end of the path.
    fn next(&self) -> Option<(usize, Vec<usize>)> {
        let shape = &self.layer.shape;
        match self.model.caps(shape) {
            None => {
                let k = self.k + 1;
                let within = self.model.rank_limit(shape).is_none_or(|l| k <= l);
                within.then(|| (k, vec![k]))
            }
            Some(caps) => {
                let g = self.model.group_shape(shape);
                let m = g[0].max(g[1]);
                (self.k + 1..=m)
                    .map(|k| (k, proportional(k, &g, caps)))
                    .find(|(_, r)| *r != self.ranks)
            }
        }
    }

    fn err(&self, ranks: &[usize]) -> f64 {
        let t = self.model.total_ranks(ranks);
        let tail = |n: usize| self.tails[n].get(t[n]).copied().unwrap_or(0.0);
        (tail(0) + tail(1)) / self.total
    }
}

/// A move of a layer: `(Δε², Δparams, None)` to keep the original kernel, or
/// `(Δε², Δparams, Some((k, ranks)))` to go to step `k` of its path.
type Move = (f64, usize, Option<(usize, Vec<usize>)>);

/// Allocates `f` times the layers' parameters across `layers` (which passed the structural
/// checks of [`crate::ranks::choose_ranks`]), each with its parameter model; one choice per layer.
pub(crate) fn allocate(f: f64, layers: &[(&LayerSpectra, Model)]) -> Result<Vec<RankChoice>> {
    let mut states: Vec<State<'_>> = layers
        .iter()
        .map(|&(layer, model)| {
            let start = match model.caps(&layer.shape) {
                None => vec![1],
                Some(caps) => proportional(1, &model.group_shape(&layer.shape), caps),
            };
            let tails = [0, 1].map(|n| {
                let s = &layer.sq_singular_values[n];
                let mut t = vec![0.0; s.len() + 1];
                for k in (0..s.len()).rev() {
                    t[k] = t[k + 1] + s[k];
                }
                t
            });
            State {
                layer,
                model,
                tails,
                total: layer.total_energy(),
                before: layer.shape.iter().product(),
                params: model.params(&layer.shape, &start),
                k: 1,
                ranks: start,
                kept: false,
            }
        })
        .collect();
    let before: usize = states.iter().map(|s| s.before).sum();
    let budget = (f * before as f64).floor() as usize;
    let mut spent: usize = states.iter().map(|s| s.params).sum();
    if spent > budget {
        return Err(GbtdError::Options(format!(
            "budget:{f} allows {budget} parameters for {} layers of {before}, but their smallest chains (rank 1) already need {spent}; raise the fraction or compress fewer layers",
            states.len()
        )));
    }
    for s in states.iter_mut() {
        settle(s, &mut spent);
    }
    loop {
        let left = budget - spent;
        let mut best: Option<(usize, Move)> = None;
        for (l, s) in states.iter().enumerate() {
            if s.kept {
                continue;
            }
            let now = s.err(&s.ranks);
            let mut consider = |m: Move| {
                let (gain, cost, _) = m;
                if gain <= 0.0 || cost == 0 || cost > left {
                    return;
                }
                let better = match &best {
                    None => true,
                    Some((_, (g, c, _))) => gain * (*c as f64) > g * cost as f64,
                };
                if better {
                    best = Some((l, m));
                }
            };
            consider((now, s.before - s.params, None));
            if let Some((k, r)) = s.next() {
                let p = s.model.params(&s.layer.shape, &r);
                consider((now - s.err(&r), p.saturating_sub(s.params), Some((k, r))));
            }
        }
        let Some((l, (_, cost, what))) = best else { break };
        let s = &mut states[l];
        spent += cost;
        match what {
            None => s.kept = true,
            Some((k, r)) => {
                s.k = k;
                s.ranks = r;
                s.params += cost;
                settle(s, &mut spent);
            }
        }
    }
    Ok(states
        .into_iter()
        .map(|s| {
            if s.kept {
                RankChoice::Skip(format!(
                    "budget:{f} keeps the original kernel: cheaper per unit of estimated error than a larger chain"
                ))
            } else {
                RankChoice::Ranks(s.ranks)
            }
        })
        .collect())
}
