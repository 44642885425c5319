//! Residual units with explicit widths: post-activation aggregated (torchvision ResNet v1.5 /
//! ResNeXt `Bottleneck`), pre-activation aggregated, and the collective residual unit (CRU) whose
//! first two convs use the tensors of its share group ([`CruShared`]).
//!
//! Every unit computes `y = F(x) + S(x)` (post-activation units then apply σ), where F is the
//! residual function ([`PostActUnit::residual_t`], …) and S the shortcut (identity, or a 1×1
//! projection at the unit's stride). All shapes are PyTorch's: inputs `(N, C, H, W)`, conv weights
//! `(out, in / groups, kh, kw)`.
use tch::Tensor;
use tch::nn::{ModuleT, Path};

use super::layers::{Conv2d, Norm, act, conv_weight};
use super::{Mode, NnError, Result};

/// Channel widths and stride of one unit.
///
/// GBTD reading: `groups` = R block terms, `mid / groups` = d3* = d4*, `in_ch` = d3 (of the
/// 1×1 reduce), `width` = d4 = the shortcut width bw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitDims {
    /// Channels entering the unit.
    pub in_ch: usize,
    /// Output (shortcut) width bw.
    pub width: usize,
    /// Bottleneck width R·d* of the grouped 3×3.
    pub mid: usize,
    /// Groups R of the 3×3.
    pub groups: usize,
    /// Stride of the unit (sits in the 3×3, and in the projection shortcut).
    pub stride: usize,
}

impl UnitDims {
    /// Whether the unit needs a projection shortcut (`stride ≠ 1` or `in_ch ≠ width`).
    pub fn has_projection(&self) -> bool {
        self.stride != 1 || self.in_ch != self.width
    }

    fn check(&self, p: &Path) -> Result<()> {
        let ok = self.in_ch > 0
            && self.width > 0
            && self.mid > 0
            && self.groups > 0
            && self.stride > 0
            && self.mid.is_multiple_of(self.groups);
        if ok {
            Ok(())
        } else {
            Err(NnError::Spec(format!(
                "{}: unit dims {self:?} invalid; widths, groups and stride must be positive and groups must \
                 divide mid",
                p.path("*")
            )))
        }
    }
}

/// Post-activation aggregated unit, torchvision's `Bottleneck` (ResNet v1.5 / ResNeXt):
/// `σ(BN3(conv3(σ(BN2(conv2(σ(BN1(conv1(x)))))))) + S(x))`, conv1 1×1 in→mid, conv2 3×3 mid→mid
/// (stride, groups), conv3 1×1 mid→width, S = BN(1×1 stride s) projection or identity.
#[derive(Debug)]
pub struct PostActUnit {
    /// 1×1 reduce, `(mid, in, 1, 1)`.
    pub conv1: Conv2d,
    /// BN after conv1.
    pub bn1: Norm,
    /// Grouped 3×3, `(mid, mid / groups, 3, 3)`, carries the stride.
    pub conv2: Conv2d,
    /// BN after conv2.
    pub bn2: Norm,
    /// 1×1 expand, `(width, mid, 1, 1)`.
    pub conv3: Conv2d,
    /// BN after conv3.
    pub bn3: Norm,
    /// Projection shortcut: 1×1 conv at the stride (`downsample.0`) and its BN (`downsample.1`).
    pub downsample: Option<(Conv2d, Norm)>,
    /// σ = ReLU or identity.
    pub mode: Mode,
}

impl PostActUnit {
    /// Creates the unit's variables under `p` (torchvision names).
    pub fn new(p: &Path, d: &UnitDims, mode: Mode) -> Result<Self> {
        d.check(p)?;
        let downsample = if d.has_projection() {
            let ds = p / "downsample";
            Some((
                Conv2d::new(&(&ds / "0"), d.in_ch, d.width, 1, d.stride, 1)?,
                Norm::new(&(&ds / "1"), d.width, mode)?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv2d::new(&(p / "conv1"), d.in_ch, d.mid, 1, 1, 1)?,
            bn1: Norm::new(&(p / "bn1"), d.mid, mode)?,
            conv2: Conv2d::new(&(p / "conv2"), d.mid, d.mid, 3, d.stride, d.groups)?,
            bn2: Norm::new(&(p / "bn2"), d.mid, mode)?,
            conv3: Conv2d::new(&(p / "conv3"), d.mid, d.width, 1, 1, 1)?,
            bn3: Norm::new(&(p / "bn3"), d.width, mode)?,
            downsample,
            mode,
        })
    }

    /// The residual function F(x) = BN3(conv3(σ(BN2(conv2(σ(BN1(conv1(x)))))))).
    pub fn residual_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.bn1.bn_act(&self.conv1.forward(x), train);
        let y = self.bn2.bn_act(&self.conv2.forward(&y), train);
        self.bn3.forward_t(&self.conv3.forward(&y), train)
    }

    /// The shortcut S(x): identity or BN(1×1 conv at the stride).
    pub fn shortcut_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x), train),
            None => x.shallow_clone(),
        }
    }
}

impl ModuleT for PostActUnit {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.residual_t(x, train);
        y += self.shortcut_t(x, train);
        act(y, self.mode)
    }
}

/// Pre-activation aggregated unit (He et al. 2016b, with ResNeXt's grouped 3×3):
/// `a = σ(BN1(x))`, `F = conv3(σ(BN3(conv2(σ(BN2(conv1(a)))))))`, `y = F + S`, with S the identity
/// or a 1×1 conv at the stride applied to `a` — or, with a separate projection BN (the released
/// CRU-Nets, `NetSpec::separate_projection_bn`), to `σ(BN_ds(x))`. No activation after the addition.
#[derive(Debug)]
pub struct PreActUnit {
    /// BN before conv1 (its σ output also feeds the projection).
    pub bn1: Norm,
    /// 1×1 reduce, `(mid, in, 1, 1)`.
    pub conv1: Conv2d,
    /// BN before conv2.
    pub bn2: Norm,
    /// Grouped 3×3, `(mid, mid / groups, 3, 3)`, carries the stride.
    pub conv2: Conv2d,
    /// BN before conv3.
    pub bn3: Norm,
    /// 1×1 expand, `(width, mid, 1, 1)`.
    pub conv3: Conv2d,
    /// Projection: 1×1 conv in→width at the stride (`downsample`).
    pub downsample: Option<Conv2d>,
    /// The projection's own BN (`bn_downsample`), when it does not reuse `bn1`'s output.
    pub bn_downsample: Option<Norm>,
}

impl PreActUnit {
    /// Creates the unit's variables under `p`. `separate_projection_bn`: the projection (if any)
    /// gets its own BN-σ of the unit input instead of reusing `σ(BN1(x))`.
    pub fn new(p: &Path, d: &UnitDims, separate_projection_bn: bool, mode: Mode) -> Result<Self> {
        d.check(p)?;
        let (downsample, bn_downsample) = if d.has_projection() {
            let bn = if separate_projection_bn {
                Some(Norm::new(&(p / "bn_downsample"), d.in_ch, mode)?)
            } else {
                None
            };
            (
                Some(Conv2d::new(
                    &(p / "downsample"),
                    d.in_ch,
                    d.width,
                    1,
                    d.stride,
                    1,
                )?),
                bn,
            )
        } else {
            (None, None)
        };
        Ok(Self {
            bn1: Norm::new(&(p / "bn1"), d.in_ch, mode)?,
            conv1: Conv2d::new(&(p / "conv1"), d.in_ch, d.mid, 1, 1, 1)?,
            bn2: Norm::new(&(p / "bn2"), d.mid, mode)?,
            conv2: Conv2d::new(&(p / "conv2"), d.mid, d.mid, 3, d.stride, d.groups)?,
            bn3: Norm::new(&(p / "bn3"), d.mid, mode)?,
            conv3: Conv2d::new(&(p / "conv3"), d.mid, d.width, 1, 1, 1)?,
            downsample,
            bn_downsample,
        })
    }

    /// `(F(x), S(x))`, sharing the first BN-σ between branch and projection.
    fn branches(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let a = self.bn1.bn_act(x, train);
        let shortcut = match (&self.downsample, &self.bn_downsample) {
            (Some(conv), Some(bn)) => conv.forward(&bn.bn_act(x, train)),
            (Some(conv), None) => conv.forward(&a),
            (None, _) => x.shallow_clone(),
        };
        let y = self.conv1.forward(&a);
        let y = self.conv2.forward(&self.bn2.bn_act(&y, train));
        (self.conv3.forward(&self.bn3.bn_act(&y, train)), shortcut)
    }

    /// The residual function F(x).
    pub fn residual_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.branches(x, train).0
    }
}

impl ModuleT for PreActUnit {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (mut y, shortcut) = self.branches(x, train);
        y += shortcut;
        y
    }
}

/// The tensors one CRU share group owns (Eq. 12: `A3_r` and `G_r` shared by the group's L units).
#[derive(Debug)]
pub struct CruShared {
    /// Shared 1×1 reduce, `(mid, width, 1, 1)` (`share{k}.conv_reduce.weight`).
    pub reduce: Tensor,
    /// Shared grouped 3×3, `(mid, mid / groups, 3, 3)` (`share{k}.conv_grouped.weight`).
    pub grouped: Tensor,
    /// Groups R of the 3×3.
    pub groups: usize,
}

impl CruShared {
    /// Creates the group's two tensors under `p` (e.g. `layer3.share0`).
    pub fn new(p: &Path, width: usize, mid: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            reduce: conv_weight(&(p / "conv_reduce"), "weight", width, mid, 1, 1)?,
            grouped: conv_weight(&(p / "conv_grouped"), "weight", mid, mid, 3, groups)?,
            groups,
        })
    }
}

/// Projection of a CRU stage's first unit: ONE 1×1 weight (in→width) used twice, each time after its
/// own BN-σ of the unit input — at stride 1 for the branch input, at the stride for the shortcut.
#[derive(Debug)]
pub struct CruProjection {
    /// BN before the stride-1 use (`bn_proj_branch`).
    pub bn_branch: Norm,
    /// BN before the strided use (`bn_proj_shortcut`).
    pub bn_shortcut: Norm,
    /// The weight at stride 1 (`conv_proj.weight`).
    pub branch: Conv2d,
    /// The same weight at the stride.
    pub shortcut: Conv2d,
}

/// Collective residual unit as released (design.md, paper Fig. 3):
/// `u` = branch input (x, or the stride-1 projection of the first unit),
/// `F = conv_expand(σ(BN_expand([conv_extra(σ(BN_extra(·)))] grouped(reduce(σ(BN_reduce(u)))))))`,
/// `y = F + S` with S = identity or the strided projection. `reduce` and `grouped` are the share
/// group's tensors; the stride sits in `grouped`. No activation after the addition.
#[derive(Debug)]
pub struct CruUnit {
    /// Projection (first unit of a stage whose width or size changes).
    pub proj: Option<CruProjection>,
    /// BN before the shared 1×1.
    pub bn_reduce: Norm,
    /// Shared 1×1 (the group's `reduce` tensor, stride 1).
    pub reduce: Conv2d,
    /// Shared grouped 3×3 (the group's `grouped` tensor, at this unit's stride).
    pub grouped: Conv2d,
    /// The extra BN-σ-1×1 (mid→mid) of Fig. 3 right, not shared.
    pub extra: Option<(Norm, Conv2d)>,
    /// BN before the last 1×1.
    pub bn_expand: Norm,
    /// Last 1×1 (mid→width), not shared.
    pub conv_expand: Conv2d,
}

impl CruUnit {
    /// Creates the unit's own variables under `p` and binds the group's shared tensors.
    pub fn new(p: &Path, d: &UnitDims, shared: &CruShared, extra_conv: bool, mode: Mode) -> Result<Self> {
        d.check(p)?;
        let want_reduce = [d.mid as i64, d.width as i64, 1, 1];
        let want_grouped = [d.mid as i64, (d.mid / d.groups) as i64, 3, 3];
        if shared.reduce.size() != want_reduce
            || shared.grouped.size() != want_grouped
            || shared.groups != d.groups
        {
            return Err(NnError::Spec(format!(
                "{}: share group tensors {:?} / {:?} (groups {}) do not fit the unit (want {want_reduce:?} / \
                 {want_grouped:?}, groups {})",
                p.path("*"),
                shared.reduce.size(),
                shared.grouped.size(),
                shared.groups,
                d.groups
            )));
        }
        let proj = if d.has_projection() {
            let w = conv_weight(&(p / "conv_proj"), "weight", d.in_ch, d.width, 1, 1)?;
            Some(CruProjection {
                bn_branch: Norm::new(&(p / "bn_proj_branch"), d.in_ch, mode)?,
                bn_shortcut: Norm::new(&(p / "bn_proj_shortcut"), d.in_ch, mode)?,
                branch: Conv2d::shared(&w, 1, 1)?,
                shortcut: Conv2d::shared(&w, d.stride, 1)?,
            })
        } else {
            None
        };
        let extra = if extra_conv {
            Some((
                Norm::new(&(p / "bn_extra"), d.mid, mode)?,
                Conv2d::new(&(p / "conv_extra"), d.mid, d.mid, 1, 1, 1)?,
            ))
        } else {
            None
        };
        Ok(Self {
            proj,
            bn_reduce: Norm::new(&(p / "bn_reduce"), d.width, mode)?,
            reduce: Conv2d::shared(&shared.reduce, 1, 1)?,
            grouped: Conv2d::shared(&shared.grouped, d.stride, d.groups)?,
            extra,
            bn_expand: Norm::new(&(p / "bn_expand"), d.mid, mode)?,
            conv_expand: Conv2d::new(&(p / "conv_expand"), d.mid, d.width, 1, 1, 1)?,
        })
    }

    /// The chain applied to the branch input `u` (width channels): BN-σ → shared 1×1 → shared
    /// grouped 3×3 → [BN-σ → extra 1×1] → BN-σ → last 1×1.
    pub fn chain_t(&self, u: &Tensor, train: bool) -> Tensor {
        let y = self.reduce.forward(&self.bn_reduce.bn_act(u, train));
        let mut y = self.grouped.forward(&y);
        if let Some((bn, conv)) = &self.extra {
            y = conv.forward(&bn.bn_act(&y, train));
        }
        self.conv_expand.forward(&self.bn_expand.bn_act(&y, train))
    }

    /// `(F(x), S(x))`.
    fn branches(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        match &self.proj {
            Some(p) => {
                let shortcut = p.shortcut.forward(&p.bn_shortcut.bn_act(x, train));
                let u = p.branch.forward(&p.bn_branch.bn_act(x, train));
                (self.chain_t(&u, train), shortcut)
            }
            None => (self.chain_t(x, train), x.shallow_clone()),
        }
    }

    /// The residual function F(x) (including the first unit's stride-1 projection).
    pub fn residual_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.branches(x, train).0
    }
}

impl ModuleT for CruUnit {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (mut y, shortcut) = self.branches(x, train);
        y += shortcut;
        y
    }
}
