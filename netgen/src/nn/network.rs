//! A whole network from a [`NetSpec`]: stem → stages of units → head.
//!
//! - Stem: `conv1` (7×7/2, padding 3, or 3×3/1 for small images) → `bn1` → σ → [3×3/2 max pool,
//!   padding 1, ImageNet stem only]. Pre-activation nets keep the stem's BN-σ.
//! - Stage `s` (1-based name `layer{s}`): units `layer{s}.{i}`, each built from its
//!   [`UnitPlan`](crate::arch::plan::UnitPlan); for CRU stages also the share groups
//!   `layer{s}.share{k}` (units `k·L .. min((k+1)·L, depth)`).
//! - Head: [`final_bn` → σ, pre-activation nets only] → global average pool → `fc` (with bias).
use tch::Tensor;
use tch::nn::{ModuleT, Path};

use super::layers::{Conv2d, Linear, Norm};
use super::units::{SharedTensors, Unit};
use super::{Mode, NnError, Result};
use crate::arch::plan::unit_plan;
use crate::arch::{NetSpec, Stem};

/// A stage: its units in order.
#[derive(Debug)]
pub struct Stage {
    /// The units, in order. The units of a CRU share group hold handles to the same
    /// `layer{s}.share{k}.conv_reduce` / `conv_grouped` tensors.
    pub units: Vec<Unit>,
}

impl ModuleT for Stage {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for u in &self.units {
            y = u.forward_t(&y, train);
        }
        y
    }
}

/// A network built from a [`NetSpec`] in a `VarStore` (on the store's device, with its kind).
#[derive(Debug)]
pub struct Network {
    /// The spec it was built from.
    pub spec: NetSpec,
    /// Standard or linear (σ = identity, no BN).
    pub mode: Mode,
    /// Stem conv (`conv1`).
    pub stem_conv: Conv2d,
    /// Stem BN (`bn1`).
    pub stem_bn: Norm,
    /// Whether the stem ends with the 3×3/2 max pool (ImageNet stem).
    pub stem_pool: bool,
    /// The stages.
    pub stages: Vec<Stage>,
    /// Final BN before pooling (pre-activation nets, `final_bn`).
    pub final_bn: Option<Norm>,
    /// Classifier (`fc`).
    pub fc: Linear,
}

impl Network {
    /// Builds the standard network (BN, σ = ReLU) of `spec` under `vs`. The spec is validated first
    /// ([`NetSpec::validate`]).
    pub fn new(vs: &Path, spec: &NetSpec) -> Result<Self> {
        Self::with_mode(vs, spec, Mode::Standard)
    }

    /// Builds the network in the given [`Mode`]. Every unit is built from its
    /// [`UnitPlan`](crate::arch::plan::UnitPlan), the description the counter uses too.
    pub fn with_mode(vs: &Path, spec: &NetSpec, mode: Mode) -> Result<Self> {
        spec.validate()?;
        let (stem_width, k, stem_stride, stem_pool) = match spec.stem {
            Stem::Imagenet { width } => (width, 7, 2, true),
            Stem::Small { width } => (width, 3, 1, false),
        };
        let stem_conv = Conv2d::new(&(vs / "conv1"), spec.in_channels, stem_width, k, stem_stride, 1)?;
        let stem_bn = Norm::new(&(vs / "bn1"), stem_width, mode)?;
        let mut stages: Vec<Stage> = spec.stages.iter().map(|_| Stage { units: Vec::new() }).collect();
        let mut shared = SharedTensors::new();
        for u in spec.units() {
            let unit = Unit::from_plan(vs, &unit_plan(spec, &u), &mut shared, mode)?;
            let stage = stages.get_mut(u.stage).ok_or_else(|| {
                NnError::Spec(format!(
                    "unit {u:?} lies outside the {} stages",
                    spec.stages.len()
                ))
            })?;
            stage.units.push(unit);
        }
        let final_width = spec.final_width();
        let final_bn = if spec.preact {
            Some(Norm::new(&(vs / "final_bn"), final_width, mode)?)
        } else {
            None
        };
        let fc = Linear::new(&(vs / "fc"), final_width, spec.classes)?;
        Ok(Self {
            spec: spec.clone(),
            mode,
            stem_conv,
            stem_bn,
            stem_pool,
            stages,
            final_bn,
            fc,
        })
    }

    /// The stem: conv → BN → σ → [max pool].
    pub fn stem_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.stem_bn.bn_act(&self.stem_conv.forward(x), train);
        if self.stem_pool {
            y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        } else {
            y
        }
    }

    /// Features entering the classifier: stem, stages, [final BN-σ], global average pool, flatten →
    /// `(N, final width)`.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem_t(x, train);
        for s in &self.stages {
            y = s.forward_t(&y, train);
        }
        if let Some(bn) = &self.final_bn {
            y = bn.bn_act(&y, train);
        }
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl ModuleT for Network {
    /// Logits `(N, classes)` of an `(N, in_channels, H, W)` input.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.fc.forward(&self.features_t(x, train))
    }
}
