//! A CRU-Net initialised from a trained pre-activation ResNeXt (`netgen convert`): the grouped
//! kernels of each share group are factorized jointly with gbtd's collective factorization
//! (paper §4.1, Eq. 12), and the factors become the CRU's shared and per-unit tensors.
//!
//! # The networks
//! The source is a pre-activation ResNeXt ([`crate::arch::plan`]): unit `u` computes
//! `a = σ(bn1(x))`, `y = conv3 σ(bn3(conv2 σ(bn2(conv1 a)))) + S`, `conv1` 1×1 `in → mid`,
//! `conv2` 3×3 grouped (`R` groups, stride), `conv3` 1×1 `mid → width`. The target is the network
//! `netgen emit` gives for the same flags plus `--share L` ([`target_spec`]): pre-activation, the
//! stages of depth ≥ L are CRU stages (released form, with the extra 1×1), the others stay
//! aggregated units. A CRU unit computes `a = σ(bn_reduce(x))`,
//! `z = conv_grouped(conv_reduce(a))` (both shared by the share group),
//! `y = conv_expand σ(bn_expand(conv_extra σ(bn_extra(z)))) + S`.
//!
//! # What is factorized (the linear parts)
//! For unit `u` of a share group, the map from `a` to the input of `bn3` is, without the ReLU and
//! the shift of `bn2`, the dense 3×3 conv with kernel
//! `K_u[o, c, i, j] = Σ_m conv2[o, m − g(o), i, j] · s2[m] · conv1[m, c]` (`m` over the channels of
//! the group `g(o)` of output `o`, `s2 = γ2 / √(σ2² + ε)` the scale of `bn2`): `bn2`'s scale is
//! FOLDED into the kernel, its shift `β2 − μ2·s2` and the ReLU are dropped. `K_u` is itself a BTD
//! with `R` terms of rank `(mid / R, mid / R)` (the ResNeXt's own factors), so with `L = 1` and the
//! source's `R` the collective factorization can hold it exactly.
//!
//! The `L` kernels of a group, `(mid, d3, 3, 3)` each, are factorized collectively:
//! `K_u ≈ Σ_r G_r ×_0 A4_r^u ×_1 A3_r`. The factors map onto the CRU tensors exactly as
//! [`gbtd::layers::LayerChain::from_collective`] lays them out:
//! `share{k}.conv_reduce` = `[A3_0 … A3_{R−1}]ᵀ` `(R·d*, d3, 1, 1)`, `share{k}.conv_grouped` = the
//! cores `G_r` (groups `R`), unit `u`'s `conv_extra` = `[A4_0^u … A4_{R−1}^u]` `(mid, R·d*, 1, 1)`.
//! Hence `R·d* = mid` is required: `conv_extra` is square. The composition
//! `conv_extra ∘ conv_grouped ∘ conv_reduce` equals the collective reconstruction of `K_u`
//! (exact, up to f32 rounding of the stored weights); its relative error is the one gbtd reports.
//!
//! A stage's first unit with a projection reads `p = conv_proj(σ(bn_proj_branch(x)))` (width
//! channels, stride 1) instead of `a` (`in` channels). `conv_proj` gets the source's `downsample`
//! weight `P` `(width, in)`, and the kernel factorized for that unit is `K_u ×_1 P⁺` (`P⁺` the
//! pseudo-inverse): `(K_u P⁺) P = K_u` exactly when `P` has full column rank (`width ≥ in`, the
//! usual case), in least squares otherwise.
//!
//! # What is copied, what is new
//! Copied exactly: the stem, the head (`final_bn`, `fc`), every unit of the non-CRU stages (their
//! new `bn_downsample` gets the source's `bn1`, which reads the same `x`: the same function), and in
//! CRU units `bn1 → bn_reduce` (units without projection), `bn1 → bn_proj_branch` and
//! `bn_proj_shortcut`, `downsample → conv_proj` (the shortcut is exact), `bn3 → bn_expand`,
//! `conv3 → conv_expand`.
//!
//! New BN-ReLUs with no source counterpart: every `bn_extra` (between the grouped conv and the
//! per-unit factor) and the `bn_reduce` of first units with a projection (between `conv_proj` and
//! the shared reduce). They should pass their input on linearly. With [`BnMode::Reestimate`]
//! (default) their statistics are measured and each is set to `z ↦ z − μ + k·σ` (γ = √(σ² + ε),
//! β = k·γ, k = [`SHIFT_SIGMAS`]): the identity plus a per-channel constant for every input above
//! `μ − k·σ`, where the ReLU is inactive. The constant after `bn_extra` passes a 1×1 conv and is
//! removed by the re-estimated mean of `bn_expand`; after a first unit's `bn_reduce` it passes the
//! 3×3 conv, where zero padding makes it non-constant on the border pixels (an approximation).
//! With [`BnMode::Carry`] no data are read: the new BNs keep γ = 1, β = 0 and running statistics
//! (0, 1), i.e. a plain ReLU of the raw values (a cruder start), and every other BN keeps the
//! source's statistics.
//!
//! [`BnMode::Reestimate`] then re-estimates every BN's running statistics on `N` training batches
//! (train-mode forward without gradients, cumulative average), which also absorbs the dropped
//! `bn2` shifts and the changed distributions (see [`bn`]).
//!
//! So the converted network is an approximation of the ResNeXt (the bn2 ReLUs are gone from the
//! factorized path, the factorization has an error for L > 1), meant as an initialisation to
//! fine-tune with `netgen train --resume`.
pub mod bn;
pub mod kernels;
pub mod run_dir;
pub mod spec;
pub mod weights;

use thiserror::Error;

pub use bn::{BnMode, SHIFT_SIGMAS};
pub use spec::{check_source, target_spec};
pub use weights::{ConvertOptions, Converted, GroupReport, convert_weights};

/// Errors of the conversion; each message says what to do.
#[derive(Debug, Error)]
pub enum ConvertError {
    /// The source network cannot be converted (not a pre-activation ResNeXt, share too large, …).
    #[error("{0}")]
    Source(String),
    /// A tensor of the source checkpoint is missing or has an unexpected shape.
    #[error("{0}")]
    Weights(String),
    /// The collective factorization failed.
    #[error("factorization: {0}")]
    Gbtd(#[from] gbtd::GbtdError),
    /// Network construction or loading failed.
    #[error(transparent)]
    Nn(#[from] crate::nn::NnError),
    /// Training-side failures (data, checkpoint files).
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
}

impl From<crate::arch::ArchError> for ConvertError {
    fn from(e: crate::arch::ArchError) -> Self {
        ConvertError::Source(e.to_string())
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ConvertError>;
