//! Analytic parameter and FLOP counts of a [`NetSpec`].
//!
//! The network is expanded into the list of layer *uses* it executes ([`stem_layers`],
//! [`unit_layers`], [`head_layers`]); a unit's layers come from [`crate::arch::plan`], which the
//! tch builder follows too, so counts and networks cannot drift apart.
//!
//! - **Parameters**: conv weights `cout·(cin/groups)·k²` (no conv biases), BatchNorm γ and β
//!   (`2·c`; running mean/var are buffers, not parameters), fc weight and bias `cin·classes +
//!   classes`. A tensor shared by several uses (a CRU share group's 1×1 and grouped 3×3; the
//!   first CRU unit's 1×1 used for the branch input and for the projection) is counted once: only
//!   the use with `owns_params = true` contributes.
//! - **FLOPs** are multiply-adds (MACs), the unit of torchvision's "GFLOPS" and of the paper's
//!   Table 1: a conv costs `H_out·W_out·cout·(cin/groups)·k²`, the fc `cin·classes`. BN, ReLU,
//!   pooling, the residual addition and the fc bias are not counted. Every use of a shared tensor
//!   costs its FLOPs.
use crate::arch::plan::{self, Op};
use crate::arch::spec::{NetSpec, Result, Stem, UnitIo, conv_out_size};

/// What a layer use computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// k×k convolution without bias.
    Conv {
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
    },
    /// BatchNorm over `channels` (γ, β).
    Bn { channels: usize },
    /// k×k max pool (no parameters, not counted).
    MaxPool { k: usize, stride: usize },
    /// Fully connected layer with bias.
    Fc { cin: usize, cout: usize },
}

pub use crate::arch::plan::Role;

/// One use of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// Role in the unit.
    pub role: Role,
    /// What it computes.
    pub kind: LayerKind,
    /// Spatial size of its output.
    pub out_size: usize,
    /// Whether this use carries the parameters (false for a reuse of a shared tensor).
    pub owns_params: bool,
    /// Whether the tensor is shared across units of a CRU share group.
    pub shared: bool,
}

impl Layer {
    fn new(role: Role, kind: LayerKind, out_size: usize) -> Self {
        Layer {
            role,
            kind,
            out_size,
            owns_params: true,
            shared: false,
        }
    }

    /// Parameters this use contributes (0 for a reuse).
    pub fn params(&self) -> u64 {
        if !self.owns_params {
            return 0;
        }
        match self.kind {
            LayerKind::Conv {
                cin, cout, k, groups, ..
            } => (cout * (cin / groups) * k * k) as u64,
            LayerKind::Bn { channels } => 2 * channels as u64,
            LayerKind::MaxPool { .. } => 0,
            LayerKind::Fc { cin, cout } => (cin * cout + cout) as u64,
        }
    }

    /// Multiply-adds of this use.
    pub fn flops(&self) -> u64 {
        let hw = (self.out_size * self.out_size) as u64;
        match self.kind {
            LayerKind::Conv {
                cin, cout, k, groups, ..
            } => hw * (cout * (cin / groups) * k * k) as u64,
            LayerKind::Fc { cin, cout } => (cin * cout) as u64,
            LayerKind::Bn { .. } | LayerKind::MaxPool { .. } => 0,
        }
    }

    /// Whether this is a BatchNorm.
    pub fn is_bn(&self) -> bool {
        matches!(self.kind, LayerKind::Bn { .. })
    }
}

fn conv(role: Role, cin: usize, cout: usize, k: usize, stride: usize, groups: usize, out: usize) -> Layer {
    Layer::new(
        role,
        LayerKind::Conv {
            cin,
            cout,
            k,
            stride,
            groups,
        },
        out,
    )
}

fn bn(role: Role, channels: usize, out: usize) -> Layer {
    Layer::new(role, LayerKind::Bn { channels }, out)
}

/// Layers of the stem for the spec's input.
pub fn stem_layers(spec: &NetSpec) -> Vec<Layer> {
    let n = spec.input_size;
    match spec.stem {
        Stem::Imagenet { width } => {
            let m = conv_out_size(n, 7, 2, 3).unwrap_or(0);
            let p = conv_out_size(m, 3, 2, 1).unwrap_or(0);
            vec![
                conv(Role::Stem, spec.in_channels, width, 7, 2, 1, m),
                bn(Role::Stem, width, m),
                Layer::new(Role::Stem, LayerKind::MaxPool { k: 3, stride: 2 }, p),
            ]
        }
        Stem::Small { width } => {
            let m = conv_out_size(n, 3, 1, 1).unwrap_or(0);
            vec![
                conv(Role::Stem, spec.in_channels, width, 3, 1, 1, m),
                bn(Role::Stem, width, m),
            ]
        }
    }
}

/// Layers of the head: the final BN of pre-activation nets, then the fc (global average pooling
/// has no parameters and is not counted).
pub fn head_layers(spec: &NetSpec) -> Vec<Layer> {
    let c = spec.final_width();
    let mut v = Vec::new();
    if spec.preact {
        let n = spec.stage_out_sizes().last().copied().flatten().unwrap_or(0);
        v.push(bn(Role::Head, c, n));
    }
    v.push(Layer::new(
        Role::Head,
        LayerKind::Fc {
            cin: c,
            cout: spec.classes,
        },
        1,
    ));
    v
}

/// Layer uses of one unit, derived from its [`UnitPlan`](crate::arch::plan::UnitPlan) (the one
/// description of a unit's layers that the tch builder also follows). `u` comes from
/// [`NetSpec::units`].
pub fn unit_layers(spec: &NetSpec, u: &UnitIo) -> Vec<Layer> {
    plan::unit_plan(spec, u).layers().map(Layer::from).collect()
}

/// The counted form of one planned layer use (the parameter and multiply-add formulas live only
/// in [`Layer`]).
impl From<&plan::LayerPlan> for Layer {
    fn from(l: &plan::LayerPlan) -> Self {
        Layer {
            role: l.role,
            kind: match l.op {
                Op::Conv {
                    cin,
                    cout,
                    k,
                    stride,
                    groups,
                } => LayerKind::Conv {
                    cin,
                    cout,
                    k,
                    stride,
                    groups,
                },
                Op::Bn { channels, .. } => LayerKind::Bn { channels },
            },
            out_size: l.out_size,
            owns_params: l.owner,
            shared: l.shared,
        }
    }
}

/// Totals of a group of layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Parameters (shared tensors once).
    pub params: u64,
    /// Of which BatchNorm γ, β.
    pub bn_params: u64,
    /// Multiply-adds.
    pub flops: u64,
}

impl Tally {
    fn of(layers: &[Layer]) -> Self {
        let mut t = Tally::default();
        for l in layers {
            t.params += l.params();
            t.flops += l.flops();
            if l.is_bn() {
                t.bn_params += l.params();
            }
        }
        t
    }

    fn add(&mut self, o: Tally) {
        self.params += o.params;
        self.bn_params += o.bn_params;
        self.flops += o.flops;
    }
}

/// Counts of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageCount {
    /// Stage index (0 = conv2).
    pub index: usize,
    /// Output width.
    pub width: usize,
    /// Output spatial size.
    pub out_size: usize,
    /// Parameters, BN parameters and multiply-adds of the stage.
    pub tally: Tally,
}

/// Counts of a whole network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Total parameters (shared tensors once; BN γ, β included; running stats excluded).
    pub params: u64,
    /// Total multiply-adds for one input image.
    pub flops: u64,
    /// Of `params`, BatchNorm γ and β.
    pub bn_params: u64,
    /// Stem (conv, BN, pool).
    pub stem: Tally,
    /// Spatial size after the stem.
    pub stem_out_size: usize,
    /// Each stage.
    pub stages: Vec<StageCount>,
    /// Head (final BN of pre-activation nets, fc).
    pub head: Tally,
}

/// Validates `spec` and counts its parameters and multiply-adds, in total and per stage.
pub fn count(spec: &NetSpec) -> Result<Counts> {
    spec.validate()?;
    let stem = Tally::of(&stem_layers(spec));
    let head = Tally::of(&head_layers(spec));
    let sizes = spec.stage_out_sizes();
    let mut stages: Vec<StageCount> = spec
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| StageCount {
            index: i,
            width: s.width,
            out_size: sizes[i].unwrap_or(0),
            tally: Tally::default(),
        })
        .collect();
    for u in spec.units() {
        stages[u.stage].tally.add(Tally::of(&unit_layers(spec, &u)));
    }
    let mut total = stem;
    for s in &stages {
        total.add(s.tally);
    }
    total.add(head);
    Ok(Counts {
        params: total.params,
        flops: total.flops,
        bn_params: total.bn_params,
        stem,
        stem_out_size: spec.stem.out_size(spec.input_size).unwrap_or(0),
        stages,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::spec::{StageSpec, UnitSpec};

    /// A one-stage post-activation bottleneck on a 4×4 input with a small stem, counted by hand.
    #[test]
    fn tiny_post_activation_by_hand() {
        let spec = NetSpec {
            name: "t".into(),
            in_channels: 1,
            input_size: 4,
            classes: 2,
            preact: false,
            stem: Stem::Small { width: 2 },
            stages: vec![StageSpec {
                depth: 2,
                width: 4,
                stride: 2,
                unit: UnitSpec::Aggregated { mid: 2, groups: 2 },
            }],
            separate_projection_bn: false,
        };
        let c = count(&spec).unwrap();
        // stem: conv 1→2 3×3 (18) + BN 4; FLOPs 16·18.
        // unit 0 (in 2, stride 2, 4×4 → 2×2): 1×1 2→2 (4) BN 4, 3×3 grouped 2 (2·1·9 = 18) BN 4,
        //   1×1 2→4 (8) BN 8, projection 1×1 2→4 (8) BN 8 → 62 params;
        //   FLOPs 16·4 + 4·18 + 4·8 + 4·8 = 200.
        // unit 1 (in 4): 1×1 4→2 (8) BN 4, 18 + 4, 8 + 8 → 50 params; FLOPs 4·8 + 4·18 + 4·8 = 136.
        // fc 4→2: 10 params, 8 FLOPs.
        assert_eq!(c.params, 22 + 62 + 50 + 10);
        assert_eq!(c.flops, 16 * 18 + 200 + 136 + 8);
        assert_eq!(c.bn_params, 4 + 24 + 16);
        assert_eq!(c.stages[0].out_size, 2);
    }

    /// CRU sharing: doubling the depth inside one share group only adds the unshared layers.
    #[test]
    fn cru_share_group_counts_shared_tensors_once() {
        let mk = |depth, share| NetSpec {
            name: "c".into(),
            in_channels: 3,
            input_size: 8,
            classes: 10,
            preact: true,
            stem: Stem::Small { width: 8 },
            stages: vec![StageSpec {
                depth,
                width: 8,
                stride: 1,
                unit: UnitSpec::Cru {
                    mid: 4,
                    groups: 4,
                    share,
                    extra_conv: true,
                },
            }],
            separate_projection_bn: true,
        };
        let one = count(&mk(1, 1)).unwrap().params;
        let two = count(&mk(2, 2)).unwrap().params;
        let two_unshared = count(&mk(2, 1)).unwrap().params;
        // unshared part of a unit: BN(8) + BN(4) + 1×1 4→4 + BN(4) + 1×1 4→8 = 16 + 8 + 16 + 8 + 32.
        assert_eq!(two - one, 80);
        // shared part: 1×1 8→4 (32) + depthwise 3×3 (36).
        assert_eq!(two_unshared - two, 32 + 36);
    }
}
