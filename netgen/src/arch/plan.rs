//! One description of a residual unit's layers, from which both the analytic counter
//! ([`crate::count`]) and the tch network builder ([`crate::nn`]) are derived, so a new block kind
//! is written once, here.
//!
//! A unit computes `y = F(a) + S(·)`, optionally followed by σ (post-activation units):
//! - `pre`: layers applied to the unit input `x`, whose output `a` feeds the residual branch
//!   (empty: `a = x`). Pre-activation units whose projection reuses the first BN-ReLU put that
//!   BN-ReLU here;
//! - `branch`: the residual function F, applied to `a`;
//! - `shortcut`: the identity (of `x`), or a projection applied to `x` or to `a`.
//!
//! Every layer names its module (`layer1.0.conv1`, the prefix of its state-dict entries
//! `….weight`, and for BN `….bias`, `….running_mean`, `….running_var`), and whether this use
//! creates (and counts) the tensor, or reuses the tensor created by an earlier use of the same
//! name: a CRU share group's 1×1 and grouped 3×3 (created by the group's first unit), and the
//! first CRU unit's 1×1 used for the branch input and again for the shortcut.
//!
//! The block kinds (conventions in [`crate::arch::spec`]):
//! - **post-activation aggregated** (torchvision `Bottleneck`): `conv1` 1×1 → `bn1`-σ → `conv2` 3×3
//!   (stride, groups R) → `bn2`-σ → `conv3` 1×1 → `bn3`; projection `downsample.0` 1×1 at the
//!   stride → `downsample.1` BN; σ after the addition.
//! - **pre-activation aggregated**: `bn1`-σ → `conv1` → `bn2`-σ → `conv2` (stride, groups) →
//!   `bn3`-σ → `conv3`; projection `downsample` 1×1 at the stride applied to `σ(bn1(x))`, or with a
//!   separate projection BN to `σ(bn_downsample(x))`; no σ after the addition.
//! - **collective residual unit** (CRU, as released): [first unit with a projection:
//!   `bn_proj_branch`-σ → `conv_proj` 1×1 in→width at stride 1] → `bn_reduce`-σ → shared
//!   `share{k}.conv_reduce` 1×1 width→D → shared `share{k}.conv_grouped` 3×3 (stride, groups, no
//!   BN-σ before it) → [`bn_extra`-σ → `conv_extra` 1×1 D→D] → `bn_expand`-σ → `conv_expand` 1×1
//!   D→width; shortcut `bn_proj_shortcut`-σ → the same `conv_proj` tensor at the stride; no σ
//!   after the addition.
use super::spec::{NetSpec, UnitIo, UnitSpec, conv_out_size};

/// What a layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// k×k convolution without bias, padding `k / 2`, PyTorch weight `(cout, cin / groups, k, k)`.
    Conv {
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
    },
    /// BatchNorm over `channels` (γ, β; running mean and variance), then σ = ReLU when `relu`.
    Bn { channels: usize, relu: bool },
}

/// Where a layer sits in a unit (for tables and for matching layers across units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Stem convolution / BN / pool.
    Stem,
    /// First 1×1 of the residual function (reduce, d3 → R·d3*).
    Reduce,
    /// k×k grouped conv (the R cores).
    Core,
    /// The extra 1×1 (mid → mid) of a CRU (the paper's Fig. 3 right).
    Extra,
    /// Last 1×1 (expand, R·d4* → d4).
    Expand,
    /// CRU first unit: the 1×1 (in → width) at stride 1 feeding the branch.
    Input,
    /// Projection shortcut.
    Shortcut,
    /// Final BN of pre-activation nets, and the fc.
    Head,
}

/// One use of a layer in a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// Role in the unit.
    pub role: Role,
    /// What it computes.
    pub op: Op,
    /// Module name relative to the network root (`layer3.share0.conv_reduce`); its tensors are
    /// `name.weight` (and for BN `name.bias`, `name.running_mean`, `name.running_var`).
    pub name: String,
    /// Whether this use creates and counts the tensor. `false`: the tensor is the one an earlier
    /// use of the same `name` created (shared).
    pub owner: bool,
    /// Whether the tensor is used more than once (a CRU share group's tensors, the first CRU
    /// unit's projection weight).
    pub shared: bool,
    /// Spatial size of the layer's input.
    pub in_size: usize,
    /// Spatial size of the layer's output.
    pub out_size: usize,
}

/// Which tensor a projection shortcut reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The unit input `x`.
    Input,
    /// The output `a` of the unit's `pre` layers.
    Pre,
}

/// The shortcut of a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShortcutPlan {
    /// `S(x) = x`.
    Identity,
    /// `S = layers(from)`.
    Projection {
        /// What the projection reads.
        from: Source,
        /// Its layers, in order.
        layers: Vec<LayerPlan>,
    },
}

/// The layers of one unit and how they connect (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPlan {
    /// Layers applied to `x` whose output `a` feeds the branch (empty: `a = x`).
    pub pre: Vec<LayerPlan>,
    /// The residual function, applied to `a`.
    pub branch: Vec<LayerPlan>,
    /// The shortcut.
    pub shortcut: ShortcutPlan,
    /// σ after the addition (post-activation units).
    pub relu_after_add: bool,
}

impl UnitPlan {
    /// Every layer use: `pre`, the branch, then the shortcut.
    pub fn layers(&self) -> impl Iterator<Item = &LayerPlan> {
        let sc: &[LayerPlan] = match &self.shortcut {
            ShortcutPlan::Identity => &[],
            ShortcutPlan::Projection { layers, .. } => layers,
        };
        self.pre.iter().chain(self.branch.iter()).chain(sc.iter())
    }
}

/// Channel widths, stride and sizes of one unit, independent of its kind.
///
/// GBTD reading: `groups` = R block terms, `mid / groups` = d3* = d4*, `in_ch` = d3 (of the 1×1
/// reduce), `width` = d4 = the shortcut width bw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitShape {
    /// Channels entering the unit.
    pub in_ch: usize,
    /// Output (shortcut) width bw.
    pub width: usize,
    /// Bottleneck width R·d* (CRU: D) of the grouped 3×3.
    pub mid: usize,
    /// Groups R of the 3×3.
    pub groups: usize,
    /// Stride of the unit (in the 3×3 and in the projection shortcut).
    pub stride: usize,
}

impl UnitShape {
    /// Whether the unit needs a projection shortcut (`stride ≠ 1` or `in_ch ≠ width`).
    pub fn has_projection(&self) -> bool {
        self.stride != 1 || self.in_ch != self.width
    }
}

/// The kind of a unit, with what the shape does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    /// Post-activation aggregated unit (torchvision `Bottleneck`; R = 1 is ResNet's).
    PostAct,
    /// Pre-activation aggregated unit; `separate_projection_bn`: the projection applies its own
    /// BN-σ to the unit input instead of reusing the first BN-σ output.
    PreAct { separate_projection_bn: bool },
    /// Collective residual unit. The shared 1×1 and grouped 3×3 are the module `group` (e.g.
    /// `layer3.share0`); `owns_shared`: this unit is the first of its share group and creates them.
    Cru {
        extra_conv: bool,
        group: String,
        owns_shared: bool,
    },
}

/// Joins a module prefix and a name with a dot (no dot for an empty prefix).
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Builds layer plans of one unit: tracks the spatial size along the chain being written.
struct Chain<'a> {
    prefix: &'a str,
    size: usize,
    layers: Vec<LayerPlan>,
}

impl<'a> Chain<'a> {
    fn new(prefix: &'a str, size: usize) -> Self {
        Chain {
            prefix,
            size,
            layers: Vec::new(),
        }
    }

    fn bn(mut self, role: Role, name: &str, channels: usize, relu: bool) -> Self {
        self.layers.push(LayerPlan {
            role,
            op: Op::Bn { channels, relu },
            name: join(self.prefix, name),
            owner: true,
            shared: false,
            in_size: self.size,
            out_size: self.size,
        });
        self
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_full(
        mut self,
        role: Role,
        name: String,
        (cin, cout, k, stride, groups): (usize, usize, usize, usize, usize),
        owner: bool,
        shared: bool,
    ) -> Self {
        let out = conv_out_size(self.size, k, stride, k / 2).unwrap_or(0);
        self.layers.push(LayerPlan {
            role,
            op: Op::Conv {
                cin,
                cout,
                k,
                stride,
                groups,
            },
            name,
            owner,
            shared,
            in_size: self.size,
            out_size: out,
        });
        self.size = out;
        self
    }

    fn conv(self, role: Role, name: &str, dims: (usize, usize, usize, usize, usize)) -> Self {
        let name = join(self.prefix, name);
        self.conv_full(role, name, dims, true, false)
    }

    fn done(self) -> Vec<LayerPlan> {
        self.layers
    }
}

/// The layers of a unit of kind `kind` and shape `d`, fed an `in_size`×`in_size` input, whose
/// modules live under `prefix` (e.g. `layer1.0`; empty for a unit built on its own).
pub fn plan_unit(kind: &BlockKind, d: &UnitShape, in_size: usize, prefix: &str) -> UnitPlan {
    let (cin, w, mid, g, s, n) = (d.in_ch, d.width, d.mid, d.groups, d.stride, in_size);
    let proj = d.has_projection();
    match kind {
        BlockKind::PostAct => {
            let branch = Chain::new(prefix, n)
                .conv(Role::Reduce, "conv1", (cin, mid, 1, 1, 1))
                .bn(Role::Reduce, "bn1", mid, true)
                .conv(Role::Core, "conv2", (mid, mid, 3, s, g))
                .bn(Role::Core, "bn2", mid, true)
                .conv(Role::Expand, "conv3", (mid, w, 1, 1, 1))
                .bn(Role::Expand, "bn3", w, false)
                .done();
            let shortcut = if proj {
                ShortcutPlan::Projection {
                    from: Source::Input,
                    layers: Chain::new(prefix, n)
                        .conv(Role::Shortcut, "downsample.0", (cin, w, 1, s, 1))
                        .bn(Role::Shortcut, "downsample.1", w, false)
                        .done(),
                }
            } else {
                ShortcutPlan::Identity
            };
            UnitPlan {
                pre: Vec::new(),
                branch,
                shortcut,
                relu_after_add: true,
            }
        }
        BlockKind::PreAct {
            separate_projection_bn,
        } => {
            let first_bn = Chain::new(prefix, n).bn(Role::Reduce, "bn1", cin, true).done();
            let body = Chain::new(prefix, n)
                .conv(Role::Reduce, "conv1", (cin, mid, 1, 1, 1))
                .bn(Role::Core, "bn2", mid, true)
                .conv(Role::Core, "conv2", (mid, mid, 3, s, g))
                .bn(Role::Expand, "bn3", mid, true)
                .conv(Role::Expand, "conv3", (mid, w, 1, 1, 1))
                .done();
            match (proj, separate_projection_bn) {
                // The projection reads σ(bn1(x)): bn1 is shared by branch and shortcut.
                (true, false) => UnitPlan {
                    pre: first_bn,
                    branch: body,
                    shortcut: ShortcutPlan::Projection {
                        from: Source::Pre,
                        layers: Chain::new(prefix, n)
                            .conv(Role::Shortcut, "downsample", (cin, w, 1, s, 1))
                            .done(),
                    },
                    relu_after_add: false,
                },
                (true, true) => UnitPlan {
                    pre: Vec::new(),
                    branch: first_bn.into_iter().chain(body).collect(),
                    shortcut: ShortcutPlan::Projection {
                        from: Source::Input,
                        layers: Chain::new(prefix, n)
                            .bn(Role::Shortcut, "bn_downsample", cin, true)
                            .conv(Role::Shortcut, "downsample", (cin, w, 1, s, 1))
                            .done(),
                    },
                    relu_after_add: false,
                },
                (false, _) => UnitPlan {
                    pre: Vec::new(),
                    branch: first_bn.into_iter().chain(body).collect(),
                    shortcut: ShortcutPlan::Identity,
                    relu_after_add: false,
                },
            }
        }
        BlockKind::Cru {
            extra_conv,
            group,
            owns_shared,
        } => {
            let mut c = Chain::new(prefix, n);
            let proj_name = join(prefix, "conv_proj");
            let shortcut = if proj {
                // One 1×1 weight (in → width), used at stride 1 for the branch input ...
                c = c.bn(Role::Input, "bn_proj_branch", cin, true).conv_full(
                    Role::Input,
                    proj_name.clone(),
                    (cin, w, 1, 1, 1),
                    true,
                    true,
                );
                // ... and at the stride for the shortcut, after its own BN-σ.
                ShortcutPlan::Projection {
                    from: Source::Input,
                    layers: Chain::new(prefix, n)
                        .bn(Role::Shortcut, "bn_proj_shortcut", cin, true)
                        .conv_full(Role::Shortcut, proj_name, (cin, w, 1, s, 1), false, true)
                        .done(),
                }
            } else {
                ShortcutPlan::Identity
            };
            c = c
                .bn(Role::Reduce, "bn_reduce", w, true)
                .conv_full(
                    Role::Reduce,
                    join(group, "conv_reduce"),
                    (w, mid, 1, 1, 1),
                    *owns_shared,
                    true,
                )
                .conv_full(
                    Role::Core,
                    join(group, "conv_grouped"),
                    (mid, mid, 3, s, g),
                    *owns_shared,
                    true,
                );
            if *extra_conv {
                c = c.bn(Role::Extra, "bn_extra", mid, true).conv(
                    Role::Extra,
                    "conv_extra",
                    (mid, mid, 1, 1, 1),
                );
            }
            let branch = c
                .bn(Role::Expand, "bn_expand", mid, true)
                .conv(Role::Expand, "conv_expand", (mid, w, 1, 1, 1))
                .done();
            UnitPlan {
                pre: Vec::new(),
                branch,
                shortcut,
                relu_after_add: false,
            }
        }
    }
}

/// Module prefix of unit `index` of stage `stage` (0-based): `layer{stage+1}.{index}`.
pub fn unit_prefix(stage: usize, index: usize) -> String {
    format!("layer{}.{index}", stage + 1)
}

/// Module prefix of share group `k` of CRU stage `stage` (0-based): `layer{stage+1}.share{k}`.
pub fn share_prefix(stage: usize, k: usize) -> String {
    format!("layer{}.share{k}", stage + 1)
}

/// The kind and shape of unit `u` (from [`NetSpec::units`]) of `spec`.
pub fn unit_kind_and_shape(spec: &NetSpec, u: &UnitIo) -> (BlockKind, UnitShape) {
    let unit = &spec.stages[u.stage].unit;
    let shape = UnitShape {
        in_ch: u.in_width,
        width: u.out_width,
        mid: unit.mid(),
        groups: unit.groups(),
        stride: u.stride,
    };
    let kind = match *unit {
        UnitSpec::Aggregated { .. } if !spec.preact => BlockKind::PostAct,
        UnitSpec::Aggregated { .. } => BlockKind::PreAct {
            separate_projection_bn: spec.separate_projection_bn,
        },
        UnitSpec::Cru {
            share, extra_conv, ..
        } => {
            let k = u.index / share.max(1);
            BlockKind::Cru {
                extra_conv,
                group: share_prefix(u.stage, k),
                owns_shared: u.index.is_multiple_of(share.max(1)),
            }
        }
    };
    (kind, shape)
}

/// The layers of unit `u` (from [`NetSpec::units`]) of `spec`, with network-wide module names.
pub fn unit_plan(spec: &NetSpec, u: &UnitIo) -> UnitPlan {
    let (kind, shape) = unit_kind_and_shape(spec, u);
    plan_unit(&kind, &shape, u.in_size, &unit_prefix(u.stage, u.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(in_ch: usize, stride: usize) -> UnitShape {
        UnitShape {
            in_ch,
            width: 8,
            mid: 4,
            groups: 2,
            stride,
        }
    }

    #[test]
    fn cru_first_unit_uses_one_projection_weight_twice() {
        let kind = BlockKind::Cru {
            extra_conv: true,
            group: "layer2.share0".into(),
            owns_shared: true,
        };
        let p = plan_unit(&kind, &shape(4, 2), 6, "layer2.0");
        let proj: Vec<&LayerPlan> = p.layers().filter(|l| l.name == "layer2.0.conv_proj").collect();
        assert_eq!(proj.len(), 2);
        assert_eq!(proj.iter().filter(|l| l.owner).count(), 1);
        assert!(matches!(proj[0].op, Op::Conv { stride: 1, .. }));
        assert!(matches!(proj[1].op, Op::Conv { stride: 2, .. }));
        // The stride sits in the shared grouped 3×3; the branch's output size is halved.
        let core = p.branch.iter().find(|l| l.role == Role::Core).unwrap();
        assert_eq!(
            (core.name.as_str(), core.in_size, core.out_size),
            ("layer2.share0.conv_grouped", 6, 3)
        );
        assert_eq!(p.branch.last().unwrap().out_size, 3);
        // No BN-σ between the shared 1×1 and the grouped 3×3.
        let i = p.branch.iter().position(|l| l.role == Role::Core).unwrap();
        assert!(matches!(p.branch[i - 1].op, Op::Conv { k: 1, .. }));
        assert!(!p.relu_after_add);
    }

    #[test]
    fn parameter_sums_by_hand() {
        // Post-activation, projection: 1×1 4→4 (16) + BN 8 + 3×3 g2 (4·2·9 = 72) + BN 8 + 1×1 4→8
        // (32) + BN 16 + 1×1 4→8 (32) + BN 16.
        let p = plan_unit(&BlockKind::PostAct, &shape(4, 1), 6, "");
        assert_eq!(
            p.layers()
                .map(|l| crate::count::Layer::from(l).params())
                .sum::<u64>(),
            16 + 8 + 72 + 8 + 32 + 16 + 32 + 16
        );
        assert_eq!(p.branch[0].name, "conv1");
        // Pre-activation reusing bn1: bn1 sits in `pre` and is counted once.
        let p = plan_unit(
            &BlockKind::PreAct {
                separate_projection_bn: false,
            },
            &shape(4, 1),
            6,
            "u",
        );
        assert_eq!(p.pre.len(), 1);
        assert_eq!(
            p.layers()
                .map(|l| crate::count::Layer::from(l).params())
                .sum::<u64>(),
            8 + 16 + 8 + 72 + 8 + 32 + 32
        );
    }
}
