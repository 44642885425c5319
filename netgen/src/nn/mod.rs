//! tch networks built from a [`NetSpec`]: torchvision-compatible post-activation ResNet / ResNeXt,
//! pre-activation aggregated units, and collective residual units (CRU) with real weight sharing.
//!
//! # Layers of a unit and their GBTD reading (paper §3.2–3.3, Eq. 6–10)
//! An aggregated unit's residual function is 1×1 (d3 → R·d*) → k×k grouped (groups = R) → 1×1
//! (R·d* → d4), i.e. R block terms: `A3_r` = rows `r·d*..(r+1)·d*` of the first 1×1 weight,
//! `G_r` = group `r` of the grouped weight, `A4_r` = columns `r·d*..(r+1)·d*` of the last 1×1
//! weight. With σ = identity and no BN ([`Mode::Linear`]) the chain is one dense k×k conv whose
//! kernel is the BTD reconstruction (tested in `tests/unified.rs`).
//!
//! Every unit is built from its [`UnitPlan`](crate::arch::plan::UnitPlan), the description of its
//! layers that [`crate::count`] counts too ([`Unit::from_plan`]).
//!
//! A CRU stage groups its units into share groups of L consecutive units (Eq. 12): each group owns
//! ONE `(mid, width, 1, 1)` reduce tensor and ONE `(mid, mid / R, 3, 3)` grouped tensor, and every
//! unit of the group convolves with those very tensors, so autograd accumulates the gradients of
//! all units into them. BN is never shared.
//!
//! # Variable names
//! Post-activation presets use torchvision's state-dict names, so torchvision weights load by name
//! ([`load`]): `conv1`, `bn1`, `layer{s}.{i}.conv{1,2,3}`, `layer{s}.{i}.bn{1,2,3}`,
//! `layer{s}.{i}.downsample.0` (1×1 conv), `layer{s}.{i}.downsample.1` (its BN), `fc`. Stages are
//! numbered from 1 (`layer1` is the paper's conv2 stage).
//!
//! Pre-activation aggregated units: `layer{s}.{i}.bn1` → `conv1` → `bn2` → `conv2` → `bn3` →
//! `conv3` (each BN precedes the conv of the same number); projection `layer{s}.{i}.downsample`
//! (a 1×1 conv on the output of `bn1`-ReLU, or, with `NetSpec::separate_projection_bn`, on its own
//! `layer{s}.{i}.bn_downsample`-ReLU of the unit input). Head: `final_bn` → ReLU → pool → `fc`.
//!
//! CRU stages (`layer{s}`):
//! - `layer{s}.share{k}.conv_reduce.weight` `(mid, width, 1, 1)` — shared 1×1 of share group k;
//! - `layer{s}.share{k}.conv_grouped.weight` `(mid, mid / R, 3, 3)` — shared grouped 3×3;
//! - per unit i: `layer{s}.{i}.bn_reduce` (BN-ReLU before the shared 1×1); `layer{s}.{i}.bn_extra`
//!   and `layer{s}.{i}.conv_extra` `(mid, mid, 1, 1)` (the extra 1×1 of Fig. 3 right, when
//!   present); `layer{s}.{i}.bn_expand` and `layer{s}.{i}.conv_expand` `(width, mid, 1, 1)`;
//! - first unit with a projection: `layer{s}.0.conv_proj` `(width, in, 1, 1)`, applied after
//!   `layer{s}.0.bn_proj_branch`-ReLU at stride 1 (branch input) and after
//!   `layer{s}.0.bn_proj_shortcut`-ReLU at the stage stride (shortcut).
//!
//! Every BN has `weight`, `bias` (trainable) and `running_mean`, `running_var` (buffers).
//!
//! # Device, kind, initialisation
//! Every tensor is created on the `VarStore`'s device with its default kind (binaries use
//! `Device::cuda_if_available()`; `VarStore::set_kind(Kind::Double)` before building gives an f64
//! network). Initialisation follows torchvision: convs Kaiming-normal (fan-out, ReLU gain), BN
//! γ = 1, β = 0, fc uniform ±1/√in.
//!
//! # Example
//! ```no_run
//! use netgen::arch::presets::{PresetOptions, preset};
//! use netgen::nn::{Network, trainable_param_count};
//! use tch::nn::{ModuleT, VarStore};
//!
//! let spec = preset("crunet56", PresetOptions::default())?;
//! let vs = VarStore::new(tch::Device::cuda_if_available());
//! let net = Network::new(&vs.root(), &spec)?;
//! let x = tch::Tensor::randn([2, 3, 224, 224], (tch::Kind::Float, vs.device()));
//! let logits = net.forward_t(&x, false); // (2, 1000)
//! println!("{} parameters", trainable_param_count(&vs));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod layers;
pub mod load;
pub mod network;
pub mod units;

pub use layers::{BatchNorm2d, Conv2d, Linear, Norm};
pub use load::{load_safetensors, trainable_param_count};
pub use network::{Network, Stage};
pub use units::{BlockKind, SharedTensors, Unit, UnitDims};

use thiserror::Error;

#[doc(no_inline)]
pub use crate::arch::NetSpec;

/// How a network is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// The real network: BN layers and σ = ReLU.
    #[default]
    Standard,
    /// σ = identity and no BN anywhere (no BN variables are created). The residual functions are
    /// then linear maps, which the unified-framework tests compare with tensor decompositions.
    Linear,
}

/// Errors of network construction and weight loading.
#[derive(Debug, Error)]
pub enum NnError {
    /// The spec (or a unit's dimensions) is invalid; the message says what is wrong.
    #[error("invalid network: {0}")]
    Spec(String),
    /// A weight file does not fit the network (missing, unexpected or mis-shaped names).
    #[error("cannot load weights from {path}: {msg}")]
    Load {
        /// The file that was read.
        path: String,
        /// What does not fit.
        msg: String,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
}

impl From<crate::arch::ArchError> for NnError {
    fn from(e: crate::arch::ArchError) -> Self {
        NnError::Spec(e.to_string())
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, NnError>;
