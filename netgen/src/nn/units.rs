//! Residual units built from their [`UnitPlan`] (the one description of a unit's layers in
//! [`crate::arch::plan`]): post-activation aggregated (torchvision ResNet v1.5 / ResNeXt
//! `Bottleneck`), pre-activation aggregated, and the collective residual unit (CRU) whose first
//! two convs use the tensors of its share group.
//!
//! Every unit computes `y = F(a) + S` with `a = pre(x)`, then σ for post-activation units, where F
//! is the residual function ([`Unit::residual_t`]) and S the shortcut (identity, or a projection
//! of `x` or `a`). All shapes are PyTorch's: inputs `(N, C, H, W)`, conv weights
//! `(out, in / groups, kh, kw)`.
use std::collections::HashMap;

use tch::Tensor;
use tch::nn::{ModuleT, Path};

use super::layers::{Conv2d, Norm, conv_weight};
use super::{Mode, NnError, Result};
pub use crate::arch::plan::{BlockKind, UnitShape as UnitDims};
use crate::arch::plan::{LayerPlan, Op, ShortcutPlan, Source, UnitPlan, plan_unit};

/// Tensors shared between layer uses, by module name (a CRU share group's `conv_reduce` and
/// `conv_grouped`, the first CRU unit's `conv_proj`): the owning use creates the weight, later uses
/// of the same name convolve with that very tensor, so autograd accumulates their gradients into
/// it.
pub type SharedTensors = HashMap<String, Tensor>;

/// One built layer of a unit.
#[derive(Debug)]
pub enum Layer {
    /// A bias-free convolution (its weight possibly shared).
    Conv(Conv2d),
    /// BN (absent in [`Mode::Linear`]), then σ when the flag is set.
    Norm(Norm, bool),
}

impl Layer {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Layer::Conv(c) => c.forward(x),
            Layer::Norm(n, true) => n.bn_act(x, train),
            Layer::Norm(n, false) => n.forward_t(x, train),
        }
    }
}

/// A sequence of named layers.
#[derive(Debug, Default)]
pub struct Seq(pub Vec<(String, Layer)>);

impl Seq {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for (_, l) in &self.0 {
            y = l.forward_t(&y, train);
        }
        y
    }

    fn find(&self, name: &str) -> Option<&Layer> {
        let suffix = format!(".{name}");
        self.0
            .iter()
            .find(|(n, _)| n == name || n.ends_with(&suffix))
            .map(|(_, l)| l)
    }
}

/// The built shortcut.
#[derive(Debug)]
pub enum Shortcut {
    /// `S(x) = x`.
    Identity,
    /// A projection of `x` ([`Source::Input`]) or of `a` ([`Source::Pre`]).
    Projection(Source, Seq),
}

/// A residual unit of any kind.
#[derive(Debug)]
pub struct Unit {
    /// The plan it was built from.
    pub plan: UnitPlan,
    /// Layers producing the branch input `a` from `x` (empty: `a = x`).
    pub pre: Seq,
    /// The residual function F.
    pub branch: Seq,
    /// The shortcut S.
    pub shortcut: Shortcut,
    /// σ = ReLU after the addition (post-activation units in [`Mode::Standard`]).
    pub relu_after_add: bool,
}

/// Module path `root.a.b.c` for the dotted `name`.
fn sub<'a>(root: &Path<'a>, name: &str) -> Path<'a> {
    name.split('.').fold(root.clone(), |p, c| p.sub(c))
}

fn build_layer(root: &Path, l: &LayerPlan, shared: &mut SharedTensors, mode: Mode) -> Result<Layer> {
    let p = sub(root, &l.name);
    match l.op {
        Op::Bn { channels, relu } => Ok(Layer::Norm(Norm::new(&p, channels, mode)?, relu)),
        Op::Conv {
            cin,
            cout,
            k,
            stride,
            groups,
        } => {
            let weight = if l.owner {
                let w = conv_weight(&p, "weight", cin, cout, k, groups)?;
                if l.shared {
                    shared.insert(l.name.clone(), w.shallow_clone());
                }
                w
            } else {
                let w = shared.get(&l.name).ok_or_else(|| {
                    NnError::Spec(format!("{}: shared tensor used before it was created", l.name))
                })?;
                let want = [cout as i64, (cin / groups) as i64, k as i64, k as i64];
                if w.size() != want {
                    return Err(NnError::Spec(format!(
                        "{}: shared tensor {:?} does not fit this use (want {want:?})",
                        l.name,
                        w.size()
                    )));
                }
                w.shallow_clone()
            };
            Ok(Layer::Conv(Conv2d::shared(&weight, stride, groups)?))
        }
    }
}

fn build_seq(root: &Path, ls: &[LayerPlan], shared: &mut SharedTensors, mode: Mode) -> Result<Seq> {
    ls.iter()
        .map(|l| Ok((l.name.clone(), build_layer(root, l, shared, mode)?)))
        .collect::<Result<Vec<_>>>()
        .map(Seq)
}

impl Unit {
    /// Builds the unit of `plan` under `root` (module names in the plan are relative to it).
    /// Tensors used by several layers are created by their owning use and looked up in `shared`
    /// by the others.
    pub fn from_plan(root: &Path, plan: &UnitPlan, shared: &mut SharedTensors, mode: Mode) -> Result<Self> {
        let pre = build_seq(root, &plan.pre, shared, mode)?;
        let branch = build_seq(root, &plan.branch, shared, mode)?;
        let shortcut = match &plan.shortcut {
            ShortcutPlan::Identity => Shortcut::Identity,
            ShortcutPlan::Projection { from, layers } => {
                Shortcut::Projection(*from, build_seq(root, layers, shared, mode)?)
            }
        };
        Ok(Unit {
            plan: plan.clone(),
            pre,
            branch,
            shortcut,
            relu_after_add: plan.relu_after_add && mode == Mode::Standard,
        })
    }

    /// A unit of kind `kind` and dimensions `d` on its own, with module names relative to `p`
    /// (e.g. `conv1`, `bn1`, `downsample.0` for a post-activation unit). A CRU built this way owns
    /// its share group's tensors (`share.conv_reduce`, `share.conv_grouped`).
    pub fn new(p: &Path, kind: &BlockKind, d: &UnitDims, mode: Mode) -> Result<Self> {
        check(p, d)?;
        // Sizes only matter for counting; 1 is a placeholder that every stride accepts.
        let plan = plan_unit(kind, d, 1, "");
        Self::from_plan(p, &plan, &mut SharedTensors::new(), mode)
    }

    /// Post-activation aggregated unit (torchvision `Bottleneck`):
    /// `σ(BN3(conv3(σ(BN2(conv2(σ(BN1(conv1(x)))))))) + S(x))`.
    pub fn post_act(p: &Path, d: &UnitDims, mode: Mode) -> Result<Self> {
        Self::new(p, &BlockKind::PostAct, d, mode)
    }

    /// Pre-activation aggregated unit: `a = σ(BN1(x))`, `F = conv3(σ(BN3(conv2(σ(BN2(conv1(a)))))))`,
    /// `y = F + S`, S the identity or a 1×1 conv at the stride applied to `a`, or (with
    /// `separate_projection_bn`) to `σ(BN_ds(x))`.
    pub fn pre_act(p: &Path, d: &UnitDims, separate_projection_bn: bool, mode: Mode) -> Result<Self> {
        Self::new(
            p,
            &BlockKind::PreAct {
                separate_projection_bn,
            },
            d,
            mode,
        )
    }

    /// The convolution whose module name is `name` or ends with `.name` (the first use, for a
    /// tensor used twice), e.g. `conv1`, `downsample.0`, `conv_reduce`, `conv_proj`.
    pub fn conv(&self, name: &str) -> Option<&Conv2d> {
        let sc = match &self.shortcut {
            Shortcut::Projection(_, s) => s.find(name),
            Shortcut::Identity => None,
        };
        match self.pre.find(name).or_else(|| self.branch.find(name)).or(sc) {
            Some(Layer::Conv(c)) => Some(c),
            _ => None,
        }
    }

    /// The BN slot whose module name is `name` or ends with `.name`, e.g. `bn1`, `bn_expand`.
    pub fn norm(&self, name: &str) -> Option<&Norm> {
        let sc = match &self.shortcut {
            Shortcut::Projection(_, s) => s.find(name),
            Shortcut::Identity => None,
        };
        match self.pre.find(name).or_else(|| self.branch.find(name)).or(sc) {
            Some(Layer::Norm(n, _)) => Some(n),
            _ => None,
        }
    }

    /// `(F(x), S(x))`.
    fn branches(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let a = self.pre.forward_t(x, train);
        let shortcut = match &self.shortcut {
            Shortcut::Identity => x.shallow_clone(),
            Shortcut::Projection(Source::Input, s) => s.forward_t(x, train),
            Shortcut::Projection(Source::Pre, s) => s.forward_t(&a, train),
        };
        (self.branch.forward_t(&a, train), shortcut)
    }

    /// The residual function F(x) (for a CRU's first unit including the stride-1 projection that
    /// makes the branch input).
    pub fn residual_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.branch.forward_t(&self.pre.forward_t(x, train), train)
    }

    /// The shortcut S(x).
    pub fn shortcut_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.branches(x, train).1
    }
}

impl ModuleT for Unit {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (mut y, shortcut) = self.branches(x, train);
        y += shortcut;
        if self.relu_after_add { y.relu_() } else { y }
    }
}

/// Refuses unit dimensions that cannot be built.
fn check(p: &Path, d: &UnitDims) -> Result<()> {
    let ok = d.in_ch > 0
        && d.width > 0
        && d.mid > 0
        && d.groups > 0
        && d.stride > 0
        && d.mid.is_multiple_of(d.groups);
    if ok {
        Ok(())
    } else {
        Err(NnError::Spec(format!(
            "{}: unit dims {d:?} invalid; widths, groups and stride must be positive and groups must divide mid",
            p.path("*")
        )))
    }
}
