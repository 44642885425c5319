//! BatchNorm statistics of the converted network: carried over from the source, or re-estimated on
//! training batches, with the new BN-ReLUs set up to pass their input on (see [`crate::convert`]).
//!
//! Re-estimation runs train-mode forwards without gradients and sets every BN's momentum to
//! `1 / (t + 1)` at batch `t`, so the running statistics end as the plain average of the `N`
//! batches' statistics (PyTorch's `momentum = None`). It runs three times: (1) with the new BNs at
//! γ = 1, β = k (normalised input shifted by k standard deviations, so the ReLU passes it); then
//! each new BN gets γ = √(σ² + ε), β = k·γ from its measured statistics, which makes it
//! `z ↦ z − μ + k·σ`; (2) and (3) re-estimate with those, the new BNs' affine being refreshed after
//! (2). The last pass leaves every running statistic consistent with the final weights.
use std::str::FromStr;

use tch::Tensor;
use tch::nn::ModuleT;

use super::weights::BN_EPS;
use super::{ConvertError, Result};
use crate::nn::units::{Layer, Seq, Shortcut};
use crate::nn::{BatchNorm2d, Network};
use crate::train::TrainData;

/// How many standard deviations above the mean a new BN shifts its input, so that the following
/// ReLU is inactive for every value above `μ − k·σ`.
pub const SHIFT_SIGMAS: f64 = 3.0;

/// What happens to the BatchNorm statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BnMode {
    /// Re-estimate every BN's running statistics on training batches (default).
    #[default]
    Reestimate,
    /// Keep the source's statistics; the new BNs start as γ = 1, β = 0 on statistics (0, 1).
    Carry,
}

impl FromStr for BnMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "reestimate" => Ok(BnMode::Reestimate),
            "carry" => Ok(BnMode::Carry),
            o => Err(format!("unknown --bn '{o}': use reestimate or carry")),
        }
    }
}

fn seq_bns<'a>(s: &'a mut Seq, f: &mut dyn FnMut(&str, &'a mut BatchNorm2d)) {
    for (name, l) in s.0.iter_mut() {
        if let Layer::Norm(n, _) = l
            && let Some(bn) = n.0.as_mut()
        {
            f(name, bn);
        }
    }
}

/// Every BN of the network with its module name.
pub fn bns_mut(net: &mut Network) -> Vec<(String, &mut BatchNorm2d)> {
    let mut v: Vec<(String, &mut BatchNorm2d)> = Vec::new();
    if let Some(bn) = net.stem_bn.0.as_mut() {
        v.push(("bn1".into(), bn));
    }
    for st in net.stages.iter_mut() {
        for u in st.units.iter_mut() {
            let mut f = |n: &str, bn| v.push((n.to_string(), bn));
            seq_bns(&mut u.pre, &mut f);
            seq_bns(&mut u.branch, &mut f);
            if let Shortcut::Projection(_, s) = &mut u.shortcut {
                seq_bns(s, &mut f);
            }
        }
    }
    if let Some(bn) = net.final_bn.as_mut().and_then(|n| n.0.as_mut()) {
        v.push(("final_bn".into(), bn));
    }
    v
}

/// One re-estimation pass over `batches` training batches (epoch 0 of `seed`, batch size `batch`).
fn pass(
    net: &mut Network,
    data: &dyn TrainData,
    batch: usize,
    batches: usize,
    seed: u64,
    tick: &dyn Fn(),
) -> Result<()> {
    let device = net.fc.weight.device();
    let mut seen = 0usize;
    for b in data.train_batches(0, seed, batch, 0).take(batches) {
        let (x, _) = b.map_err(|e| ConvertError::Source(format!("calibration data: {e}")))?;
        let m = 1.0 / (seen as f64 + 1.0);
        for (_, bn) in bns_mut(net) {
            bn.momentum = m;
        }
        let _ = tch::no_grad(|| net.forward_t(&x.to_device(device), true));
        seen += 1;
        tick();
    }
    for (_, bn) in bns_mut(net) {
        bn.momentum = 0.1;
    }
    if seen == 0 {
        return Err(ConvertError::Source(format!(
            "no calibration batch of size {batch}: the training split is smaller; use --bn carry or a smaller \
             --batch-size"
        )));
    }
    Ok(())
}

/// Sets the new BNs (module names `new`) to `z ↦ z − μ + k·σ` from their running statistics, or to
/// γ = 1, β = k when `from_stats` is false (first pass).
fn set_new(net: &mut Network, new: &[String], from_stats: bool) {
    tch::no_grad(|| {
        for (name, bn) in bns_mut(net) {
            if !new.contains(&name) {
                continue;
            }
            let g = if from_stats {
                (&bn.running_var + BN_EPS).sqrt()
            } else {
                bn.weight.ones_like()
            };
            let beta: Tensor = &g * SHIFT_SIGMAS;
            bn.weight.copy_(&g);
            bn.bias.copy_(&beta);
        }
    });
}

/// Re-estimates every BN's statistics on `batches` training batches and sets up the new BNs
/// (module names `new`), in the three passes described in the module documentation. `tick` is
/// called after every batch (`3 · batches` in all).
pub fn reestimate(
    net: &mut Network,
    new: &[String],
    data: &dyn TrainData,
    batch: usize,
    batches: usize,
    seed: u64,
    tick: &dyn Fn(),
) -> Result<()> {
    set_new(net, new, false);
    pass(net, data, batch, batches, seed, tick)?;
    set_new(net, new, true);
    pass(net, data, batch, batches, seed, tick)?;
    set_new(net, new, true);
    pass(net, data, batch, batches, seed, tick)
}
