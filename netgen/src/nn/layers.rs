//! Primitive layers the units are built from: a bias-free 2-D convolution whose weight tensor may
//! be shared, BatchNorm2d (PyTorch semantics), the classifier, and the activation σ.
//!
//! Every trainable tensor is created through a [`tch::nn::Path`], so it lives in the path's
//! `VarStore` under the path's name, on the store's device and with the store's default kind
//! (`VarStore::set_kind` before building gives f64 networks; running statistics follow that kind
//! too, unlike `tch::nn::batch_norm2d`, whose running statistics are always f32).
use tch::Tensor;
use tch::nn::{self, Init};

use super::{Mode, NnError, Result};

/// Kaiming-normal with fan-out and ReLU gain, torchvision's initialisation of every ResNet conv
/// (`nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`): N(0, 2 / (out·kh·kw)).
pub const CONV_INIT: Init = Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// Converts a size to libtorch's `i64`, refusing sizes that do not fit.
pub(crate) fn dim(n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| NnError::Spec(format!("size {n} does not fit in i64")))
}

/// Creates the trainable conv weight `p.name` of PyTorch shape `(out, in / groups, k, k)`.
pub fn conv_weight(
    p: &nn::Path,
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
    groups: usize,
) -> Result<Tensor> {
    if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
        return Err(NnError::Spec(format!(
            "{}: a conv {cin}→{cout} with groups = {groups} needs groups ≥ 1 dividing both channel counts",
            p.path(name)
        )));
    }
    if cin == 0 || cout == 0 || k == 0 {
        return Err(NnError::Spec(format!(
            "{}: empty conv {cin}→{cout}, kernel {k}",
            p.path(name)
        )));
    }
    Ok(p.f_var(
        name,
        &[dim(cout)?, dim(cin / groups)?, dim(k)?, dim(k)?],
        CONV_INIT,
    )?)
}

/// A bias-free 2-D convolution `y = W ⋆ x` with square kernel, "same" padding `k / 2`, a stride and
/// a group count. The weight is a `Tensor` handle: two `Conv2d` built with [`Conv2d::shared`] on
/// the same tensor use ONE parameter (autograd then accumulates both uses' gradients into it).
#[derive(Debug)]
pub struct Conv2d {
    /// Weight in PyTorch layout `(out, in / groups, kh, kw)`.
    pub weight: Tensor,
    /// Stride (both spatial directions).
    pub stride: i64,
    /// Zero padding (both spatial directions), `kh / 2`.
    pub padding: i64,
    /// Number of groups; input and output channels are split into `groups` equal blocks and block
    /// `g` of the output sees only block `g` of the input.
    pub groups: i64,
}

impl Conv2d {
    /// Creates a new conv with its own weight `p.weight` (`(cout, cin / groups, k, k)`).
    pub fn new(
        p: &nn::Path,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
    ) -> Result<Self> {
        let weight = conv_weight(p, "weight", cin, cout, k, groups)?;
        Self::shared(&weight, stride, groups)
    }

    /// A conv using an existing weight tensor (shared, not copied) with the given stride and groups.
    pub fn shared(weight: &Tensor, stride: usize, groups: usize) -> Result<Self> {
        let size = weight.size();
        if size.len() != 4 || size[2] != size[3] {
            return Err(NnError::Spec(format!(
                "conv weight must be (out, in, k, k), got {size:?}"
            )));
        }
        Ok(Self {
            weight: weight.shallow_clone(),
            stride: dim(stride)?,
            padding: size[2] / 2,
            groups: dim(groups)?,
        })
    }

    /// Applies the convolution to an `(N, in, H, W)` input.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            None::<&Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            self.groups,
        )
    }

    /// Number of output channels.
    pub fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }
}

/// Batch normalisation over the channels of an `(N, C, H, W)` input, exactly `torch.nn.BatchNorm2d`:
/// `y = γ · (x − μ) / √(σ² + ε) + β`, with batch statistics and running-average updates
/// (momentum 0.1) in training, running statistics in evaluation. ε = 1e-5. γ starts at 1, β at 0.
/// Variables: `weight` (γ) and `bias` (β) trainable, `running_mean` and `running_var` buffers.
#[derive(Debug)]
pub struct BatchNorm2d {
    /// γ, shape `(C)`.
    pub weight: Tensor,
    /// β, shape `(C)`.
    pub bias: Tensor,
    /// Running mean μ, shape `(C)` (buffer, not trainable).
    pub running_mean: Tensor,
    /// Running variance σ², shape `(C)` (buffer, not trainable).
    pub running_var: Tensor,
    /// ε added to the variance.
    pub eps: f64,
    /// Running-average momentum.
    pub momentum: f64,
}

impl BatchNorm2d {
    /// Creates the BN variables under `p` for `c` channels.
    pub fn new(p: &nn::Path, c: usize) -> Result<Self> {
        let c = dim(c)?;
        let opts = (p.kind(), p.device());
        Ok(Self {
            weight: p.f_var("weight", &[c], Init::Const(1.0))?,
            bias: p.f_var("bias", &[c], Init::Const(0.0))?,
            running_mean: p.add("running_mean", Tensor::f_zeros([c], opts)?, false),
            running_var: p.add("running_var", Tensor::f_ones([c], opts)?, false),
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Applies BN in training (`train = true`, batch statistics) or evaluation mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            true,
        )
    }

    /// The eval-mode affine map as per-channel `(scale, shift)`: `y = scale · x + shift`, with
    /// `scale = γ / √(σ² + ε)` and `shift = β − μ · scale` (used to fold BN into a conv).
    pub fn eval_affine(&self) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let scale = &self.weight / (&self.running_var + self.eps).sqrt();
            let shift = &self.bias - &self.running_mean * &scale;
            (scale, shift)
        })
    }
}

/// A BN slot of a unit: a real [`BatchNorm2d`] in [`Mode::Standard`], nothing in [`Mode::Linear`].
#[derive(Debug)]
pub struct Norm(pub Option<BatchNorm2d>);

impl Norm {
    /// Creates the BN under `p` unless `mode` is linear (then no variables are created).
    pub fn new(p: &nn::Path, c: usize, mode: Mode) -> Result<Self> {
        Ok(Norm(match mode {
            Mode::Standard => Some(BatchNorm2d::new(p, c)?),
            Mode::Linear => None,
        }))
    }

    /// BN, or the identity when absent.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.0 {
            Some(bn) => bn.forward_t(x, train),
            None => x.shallow_clone(),
        }
    }

    /// `σ(BN(x))`: BN then ReLU (in place on BN's fresh output, as torchvision's `ReLU(inplace=True)`)
    /// in standard mode; the identity in linear mode.
    pub fn bn_act(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.0 {
            Some(bn) => bn.forward_t(x, train).relu_(),
            None => x.shallow_clone(),
        }
    }
}

/// The classifier `y = x Wᵀ + b`, `torch.nn.Linear` with PyTorch's default initialisation
/// (W and b uniform in ±1/√in). Variables `weight` `(classes, in)` and `bias` `(classes)`.
#[derive(Debug)]
pub struct Linear {
    /// Weight `(out, in)`.
    pub weight: Tensor,
    /// Bias `(out)`.
    pub bias: Tensor,
}

impl Linear {
    /// Creates the classifier under `p`.
    pub fn new(p: &nn::Path, cin: usize, cout: usize) -> Result<Self> {
        if cin == 0 || cout == 0 {
            return Err(NnError::Spec(format!(
                "{}: empty linear layer {cin}→{cout}",
                p.path("weight")
            )));
        }
        let bound = 1.0 / (cin as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Self {
            weight: p.f_var("weight", &[dim(cout)?, dim(cin)?], init)?,
            bias: p.f_var("bias", &[dim(cout)?], init)?,
        })
    }

    /// Applies the layer to an `(N, in)` input.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// Number of elements of a tensor.
pub(crate) fn numel(t: &Tensor) -> usize {
    t.size().iter().map(|&d| d.max(0) as usize).product()
}
