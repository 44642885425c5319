//! SGD with momentum, Nesterov momentum and L2 weight decay, with PyTorch's update rule
//! (`torch.optim.SGD`, dampening 0), applied in place under `no_grad`:
//!
//! ```text
//! g ← ∇p + λ·p            (λ = weight decay; 0 for BN parameters and biases)
//! b ← μ·b + g             (momentum buffer, starts at 0, so the first step gives b = g as in PyTorch)
//! d ← g + μ·b  (Nesterov)  or  d ← b
//! p ← p − η·d
//! ```
//!
//! Written here rather than using `tch::nn::Optimizer` because tch's optimizer does not expose its
//! momentum buffers, and an exact `--resume` needs to save and restore them.
//!
//! Which parameters decay: tensors with at least 2 dimensions (conv and fc weights). One-dimensional
//! tensors are BN γ/β and biases, which are not decayed (as in timm and torchvision's reference
//! scripts with `--norm-weight-decay 0`).
use tch::Tensor;

/// The optimiser: parameters (sorted by name), their momentum buffers and hyper-parameters.
#[derive(Debug)]
pub struct Sgd {
    /// `(name, parameter, momentum buffer, decays)`.
    params: Vec<(String, Tensor, Tensor, bool)>,
    /// Momentum μ.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay λ.
    pub weight_decay: f64,
}

impl Sgd {
    /// An optimiser over the named trainable parameters (any order; kept sorted by name) with
    /// zero momentum buffers.
    pub fn new(mut named: Vec<(String, Tensor)>, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(n, p)| {
                let buf = tch::no_grad(|| p.zeros_like());
                let decays = p.dim() >= 2;
                (n, p, buf, decays)
            })
            .collect();
        Self {
            params,
            momentum,
            nesterov,
            weight_decay,
        }
    }

    /// Names of the parameters, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, ..)| n.as_str())
    }

    /// Whether the parameter `name` gets weight decay.
    pub fn decays(&self, name: &str) -> Option<bool> {
        self.params.iter().find(|(n, ..)| n == name).map(|p| p.3)
    }

    /// Sets every gradient to zero (in place; undefined gradients stay undefined).
    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// The parameters' gradients (undefined ones skipped).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p, _, _)| p.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
    /// before clipping. (`torch.nn.utils.clip_grad_norm_` with factor `max_norm / (norm + 1e-6)`.)
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let grads = self.grads();
            if grads.is_empty() {
                return 0.0;
            }
            let sq: Vec<Tensor> = grads.iter().map(|g| g.square().sum(tch::Kind::Float)).collect();
            let norm = Tensor::stack(&sq, 0)
                .sum(tch::Kind::Float)
                .sqrt()
                .double_value(&[]);
            let coef = max_norm / (norm + 1e-6);
            if coef < 1.0 {
                for g in &grads {
                    let mut g = g.shallow_clone();
                    let _ = g.g_mul_scalar_(coef);
                }
            }
            norm
        })
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let (mu, nesterov, wd) = (self.momentum, self.nesterov, self.weight_decay);
        tch::no_grad(|| {
            for (_, p, buf, decays) in self.params.iter_mut() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let g = if *decays && wd != 0.0 {
                    grad + &*p * wd
                } else {
                    grad
                };
                let d = if mu != 0.0 {
                    let _ = buf.g_mul_scalar_(mu);
                    let _ = buf.g_add_(&g);
                    if nesterov {
                        g + &*buf * mu
                    } else {
                        buf.shallow_clone()
                    }
                } else {
                    g
                };
                let _ = p.g_add_(&(d * (-lr)));
            }
        });
    }

    /// The momentum buffers as `("momentum.<name>", buffer)` (shallow handles).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, _, b, _)| (format!("momentum.{n}"), b.shallow_clone()))
            .collect()
    }

    /// Restores the buffers from `state` (names as written by [`Sgd::state`]); every parameter
    /// must have its buffer with the right shape.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String> {
        for (n, _, b, _) in self.params.iter_mut() {
            let key = format!("momentum.{n}");
            let Some((_, t)) = state.iter().find(|(k, _)| *k == key) else {
                return Err(format!("no momentum buffer for {n}"));
            };
            if t.size() != b.size() {
                return Err(format!(
                    "momentum buffer {n}: shape {:?}, parameter {:?}",
                    t.size(),
                    b.size()
                ));
            }
            tch::no_grad(|| b.copy_(&t.to_device(b.device()).to_kind(b.kind())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The update rule written out with plain f64 arithmetic, against the tensor implementation.
    #[test]
    fn nesterov_with_decay_matches_scalar_formula() {
        let w = Tensor::from_slice(&[0.5f64, -1.0, 2.0, 0.25])
            .reshape([2, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[0.3f64, -0.7]).set_requires_grad(true);
        let mut opt = Sgd::new(
            vec![("w".into(), w.shallow_clone()), ("b".into(), b.shallow_clone())],
            0.9,
            true,
            0.1,
        );
        assert_eq!(opt.decays("w"), Some(true));
        assert_eq!(opt.decays("b"), Some(false));
        let gw = [0.1f64, 0.2, -0.3, 0.4];
        let gb = [1.0f64, -2.0];
        let mut pw = [0.5f64, -1.0, 2.0, 0.25];
        let mut pb = [0.3f64, -0.7];
        let mut bw = [0.0f64; 4];
        let mut bb = [0.0f64; 2];
        for step in 0..3 {
            opt.zero_grad();
            let loss = (&w * Tensor::from_slice(&gw).reshape([2, 2])).sum(Kind::Double)
                + (&b * Tensor::from_slice(&gb)).sum(Kind::Double);
            loss.backward();
            let lr = 0.1 / (step + 1) as f64;
            opt.step(lr);
            for i in 0..4 {
                let g = gw[i] + 0.1 * pw[i];
                bw[i] = 0.9 * bw[i] + g;
                pw[i] -= lr * (g + 0.9 * bw[i]);
            }
            for i in 0..2 {
                let g = gb[i];
                bb[i] = 0.9 * bb[i] + g;
                pb[i] -= lr * (g + 0.9 * bb[i]);
            }
        }
        let got_w: Vec<f64> = (&w.flatten(0, -1)).try_into().unwrap();
        let got_b: Vec<f64> = (&b).try_into().unwrap();
        for (a, e) in got_w.iter().zip(pw.iter()).chain(got_b.iter().zip(pb.iter())) {
            assert!((a - e).abs() < 1e-12, "{a} vs {e}");
        }
        // The state round-trips into a fresh optimiser.
        let st = opt.state();
        let w2 = w.detach().copy().set_requires_grad(true);
        let b2 = b.detach().copy().set_requires_grad(true);
        let mut opt2 = Sgd::new(vec![("w".into(), w2), ("b".into(), b2)], 0.9, true, 0.1);
        opt2.load_state(&st).unwrap();
        let st2 = opt2.state();
        for ((n1, t1), (n2, t2)) in st.iter().zip(st2.iter()) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2));
        }
        assert!(opt2.load_state(&st[..1]).is_err());
        let _ = Device::Cpu;
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let w = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut opt = Sgd::new(vec![("w".into(), w.shallow_clone())], 0.0, false, 0.0);
        (&w * Tensor::from_slice(&[3.0f32, 4.0, 0.0]))
            .sum(Kind::Float)
            .backward();
        let n = opt.clip_grad_norm(1.0);
        assert!((n - 5.0).abs() < 1e-5);
        let g: Vec<f32> = (&w.grad()).try_into().unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
    }
}
