//! The converted weights: copies, collective factorizations of each share group, new BNs (see the
//! module documentation of [`crate::convert`] for what is exact and what is approximate).
use std::collections::{BTreeMap, HashMap};

use gbtd::collective::{ChannelRanks, CollectiveOptions, collective_btd};
use gbtd::layers::LayerChain;
use gbtd::linalg::leading_left_singular_vectors;
use gbtd::options::Init;
use ndarray::{Array2, Array4, ArrayD, s};
use serde::Serialize;
use tch::Tensor;
use tch::nn::VarStore;

use super::kernels::{composed_kernel, input_map, pinv_1x1, to_nd, to_tensor};
use super::spec::target_spec;
use super::{ConvertError, Result};
use crate::arch::plan::{share_prefix, unit_prefix};
use crate::arch::spec::{NetSpec, UnitSpec};
use crate::nn::Network;
use crate::nn::load::load_named;

/// ε of every BatchNorm of netgen's networks (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;

/// Options of [`convert_weights`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvertOptions {
    /// Share-group size L.
    pub share: usize,
    /// Number of block terms R of the CRU stages (default: the source's groups).
    pub terms: Option<usize>,
    /// Sweeps of the collective factorization.
    pub n_iter_max: usize,
    /// Its tolerance on the decrease of the relative error between sweeps.
    pub tol: f64,
    /// Its seed (the initialisation is the SVD; the seed only matters for degenerate cases).
    pub seed: u64,
}

impl ConvertOptions {
    /// Share groups of `share` units, the source's R, 500 sweeps, tolerance 1e-10.
    pub fn new(share: usize) -> Self {
        ConvertOptions {
            share,
            terms: None,
            n_iter_max: 500,
            tol: 1e-10,
            seed: 0,
        }
    }
}

/// The collective factorization of one share group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupReport {
    /// Stage index (0-based; the paper's conv{stage + 2}).
    pub stage: usize,
    /// Unit indices of the group within the stage.
    pub units: Vec<usize>,
    /// Block terms R.
    pub terms: usize,
    /// Rank d* = d3* = d4* of each term.
    pub rank: usize,
    /// `‖K_u − K̂_u‖ / ‖K_u‖` of each unit's kernel, as gbtd reports it.
    pub rel_errors: Vec<f64>,
    /// Sweeps run.
    pub sweeps: usize,
}

/// The result of [`convert_weights`].
#[derive(Debug)]
pub struct Converted {
    /// The target network.
    pub spec: NetSpec,
    /// Every variable of the target network (f32, CPU), by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// One report per share group, in network order.
    pub groups: Vec<GroupReport>,
    /// Module names of the BNs that have no source counterpart (`bn_extra`, the `bn_reduce` of
    /// first units with a projection), set up by [`crate::convert::bn`].
    pub new_bns: Vec<String>,
}

/// Reads the source's named tensors through a network built from `src` (so that a checkpoint that
/// does not belong to the spec is refused with the names that do not fit), as f32 CPU tensors.
fn source_tensors(
    src: &NetSpec,
    named: Vec<(String, Tensor)>,
    what: &str,
) -> Result<HashMap<String, Tensor>> {
    let vs = VarStore::new(tch::Device::Cpu);
    let _net = Network::new(&vs.root(), src)?;
    load_named(&vs, named, what)?;
    Ok(vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_kind(tch::Kind::Float)))
        .collect())
}

struct Builder<'a> {
    src: &'a HashMap<String, Tensor>,
    out: BTreeMap<String, Tensor>,
    new_bns: Vec<String>,
}

const BN_VARS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

impl Builder<'_> {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.src
            .get(name)
            .ok_or_else(|| ConvertError::Weights(format!("the source checkpoint has no tensor {name}")))
    }

    fn nd(&self, name: &str) -> Result<ArrayD<f64>> {
        to_nd(self.get(name)?)
    }

    fn copy(&mut self, to: &str, from: &str) -> Result<()> {
        let t = self.get(from)?.copy();
        self.out.insert(to.to_string(), t);
        Ok(())
    }

    fn copy_bn(&mut self, to: &str, from: &str) -> Result<()> {
        for v in BN_VARS {
            self.copy(&format!("{to}.{v}"), &format!("{from}.{v}"))?;
        }
        Ok(())
    }

    /// A BN with no source counterpart: γ = 1, β = 0, running statistics (0, 1).
    fn new_bn(&mut self, name: &str, channels: i64) {
        let opts = (tch::Kind::Float, tch::Device::Cpu);
        self.out
            .insert(format!("{name}.weight"), Tensor::ones([channels], opts));
        self.out
            .insert(format!("{name}.bias"), Tensor::zeros([channels], opts));
        self.out
            .insert(format!("{name}.running_mean"), Tensor::zeros([channels], opts));
        self.out
            .insert(format!("{name}.running_var"), Tensor::ones([channels], opts));
        self.new_bns.push(name.to_string());
    }

    fn put(&mut self, name: &str, a: &Array4<f64>) -> Result<()> {
        self.out
            .insert(name.to_string(), to_tensor(&a.clone().into_dyn())?);
        Ok(())
    }

    /// `s2 = γ / √(σ² + ε)` of the BN `name`.
    fn bn_scale(&self, name: &str) -> Result<Vec<f64>> {
        let g = self.nd(&format!("{name}.weight"))?;
        let v = self.nd(&format!("{name}.running_var"))?;
        Ok(g.iter()
            .zip(v.iter())
            .map(|(g, v)| g / (v + BN_EPS).sqrt())
            .collect())
    }
}

/// Converts the weights `named` of the pre-activation ResNeXt `src` (e.g. a run's
/// `best.safetensors`) into the CRU network [`target_spec`]`(src, opts.share, opts.terms)`.
/// `what` names the source in errors; `progress(done, total)` is called after each share group.
pub fn convert_weights(
    src: &NetSpec,
    named: Vec<(String, Tensor)>,
    what: &str,
    opts: &ConvertOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<Converted> {
    let tgt = target_spec(src, opts.share, opts.terms)?;
    let src_t = source_tensors(src, named, what)?;
    let mut b = Builder {
        src: &src_t,
        out: BTreeMap::new(),
        new_bns: Vec::new(),
    };
    b.copy("conv1.weight", "conv1.weight")?;
    b.copy_bn("bn1", "bn1")?;
    b.copy_bn("final_bn", "final_bn")?;
    b.copy("fc.weight", "fc.weight")?;
    b.copy("fc.bias", "fc.bias")?;
    let units = src.units();
    let total: usize = tgt
        .stages
        .iter()
        .filter(|s| s.unit.is_cru())
        .map(|s| s.unit.share_groups(s.depth).len())
        .sum();
    let mut groups = Vec::new();
    for (si, st) in tgt.stages.iter().enumerate() {
        let stage_units: Vec<_> = units.iter().filter(|u| u.stage == si).collect();
        let UnitSpec::Cru { mid, groups: r, .. } = st.unit else {
            // Aggregated units: the same tensors, plus the projection's own BN (= bn1, same input).
            for u in &stage_units {
                let p = unit_prefix(si, u.index);
                for n in ["bn1", "bn2", "bn3"] {
                    b.copy_bn(&format!("{p}.{n}"), &format!("{p}.{n}"))?;
                }
                for n in ["conv1", "conv2", "conv3"] {
                    b.copy(&format!("{p}.{n}.weight"), &format!("{p}.{n}.weight"))?;
                }
                if u.projection {
                    b.copy(
                        &format!("{p}.downsample.weight"),
                        &format!("{p}.downsample.weight"),
                    )?;
                    b.copy_bn(&format!("{p}.bn_downsample"), &format!("{p}.bn1"))?;
                }
            }
            continue;
        };
        let src_groups = src.stages[si].unit.groups();
        let d = mid / r;
        for (k, range) in st.unit.share_groups(st.depth).into_iter().enumerate() {
            let mut kernels = Vec::new();
            let mut inputs = Vec::new();
            for i in range.clone() {
                let u = stage_units[i];
                let p = unit_prefix(si, i);
                let s2 = b.bn_scale(&format!("{p}.bn2"))?;
                let conv1 = b.nd(&format!("{p}.conv1.weight"))?;
                let mut kern =
                    composed_kernel(&conv1, &s2, &b.nd(&format!("{p}.conv2.weight"))?, src_groups)?;
                // M_u = diag(s2)·conv1 (mid × in): the ResNeXt's own input factors.
                let mut m_u: Array2<f64> = conv1
                    .slice(s![.., .., 0, 0])
                    .to_owned()
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|e| ConvertError::Weights(format!("{p}.conv1: {e}")))?;
                for (mut row, &sc) in m_u.axis_iter_mut(ndarray::Axis(0)).zip(&s2) {
                    row *= sc;
                }
                if u.projection {
                    let proj = b.nd(&format!("{p}.downsample.weight"))?;
                    let pinv = pinv_1x1(&proj)?;
                    kern = input_map(&kern, &pinv)?;
                    m_u = m_u.dot(&pinv);
                    b.copy(
                        &format!("{p}.conv_proj.weight"),
                        &format!("{p}.downsample.weight"),
                    )?;
                    b.copy_bn(&format!("{p}.bn_proj_branch"), &format!("{p}.bn1"))?;
                    b.copy_bn(&format!("{p}.bn_proj_shortcut"), &format!("{p}.bn1"))?;
                    b.new_bn(&format!("{p}.bn_reduce"), u.out_width as i64);
                } else {
                    b.copy_bn(&format!("{p}.bn_reduce"), &format!("{p}.bn1"))?;
                }
                b.copy_bn(&format!("{p}.bn_expand"), &format!("{p}.bn3"))?;
                b.copy(&format!("{p}.conv_expand.weight"), &format!("{p}.conv3.weight"))?;
                b.new_bn(&format!("{p}.bn_extra"), mid as i64);
                kernels.push(kern.into_dyn());
                inputs.push(m_u);
            }
            let views: Vec<_> = kernels.iter().map(|k| k.view()).collect();
            let copts = CollectiveOptions::new(r, ChannelRanks::new(d, d))
                .with_n_iter_max(opts.n_iter_max)
                .with_tol(opts.tol)
                .with_seed(opts.seed);
            let mut coll = collective_btd(&views, &copts)?;
            // ALS from the SVD can stall short of the exact BTD that exists for L = 1; the
            // ResNeXt's own structure is a second start, and the better fit of X⁺ is kept.
            if r == src_groups
                && let Some(given) = structured_init(&inputs, r, d)?
            {
                let alt = collective_btd(&views, &copts.clone().with_init(Init::Given(given)))?;
                if alt.btd.convergence.rel_error() < coll.btd.convergence.rel_error() {
                    coll = alt;
                }
            }
            let chains = LayerChain::from_collective(&coll)?;
            let sp = share_prefix(si, k);
            b.put(&format!("{sp}.conv_reduce.weight"), &chains[0].reduce)?;
            b.put(&format!("{sp}.conv_grouped.weight"), &chains[0].grouped)?;
            for (l, i) in range.clone().enumerate() {
                b.put(
                    &format!("{}.conv_extra.weight", unit_prefix(si, i)),
                    &chains[l].expand,
                )?;
            }
            groups.push(GroupReport {
                stage: si,
                units: range.collect(),
                terms: r,
                rank: d,
                rel_errors: coll.rel_errors.clone(),
                sweeps: coll.btd.convergence.iterations,
            });
            progress(groups.len(), total);
        }
    }
    Ok(Converted {
        spec: tgt,
        tensors: b.out,
        groups,
        new_bns: b.new_bns,
    })
}

/// The ResNeXt's own factors as a start for the collective factorization of a share group with the
/// source's `r` terms of rank `d`: `Â_4` stacks, for each unit, the identity blocks `A4_r^u = E_r`
/// (term `r` writes output channels `r·d .. (r+1)·d`, as the grouped conv2 does); block `r` of
/// `Â_3` spans the leading `d` left singular vectors of the units' input factors
/// `[M_1,rᵀ … M_L,rᵀ]` (`M_u = diag(s2)·conv1`, rows of term `r`), which is `span(M_rᵀ)` itself for
/// `L = 1`, so that the exact BTD is the starting point. `None` when a block cannot be formed
/// (`d` larger than the input channels).
fn structured_init(inputs: &[Array2<f64>], r: usize, d: usize) -> Result<Option<Vec<Array2<f64>>>> {
    let Some(first) = inputs.first() else {
        return Ok(None);
    };
    let (mid, d3) = first.dim();
    if d > d3 || mid != r * d {
        return Ok(None);
    }
    let mut a4 = Array2::<f64>::zeros((inputs.len() * mid, r * d));
    for l in 0..inputs.len() {
        for c in 0..mid {
            a4[[l * mid + c, c]] = 1.0;
        }
    }
    let mut a3 = Array2::<f64>::zeros((d3, r * d));
    for t in 0..r {
        let blocks: Vec<_> = inputs
            .iter()
            .map(|m| m.slice(s![t * d..(t + 1) * d, ..]).t().to_owned())
            .collect();
        let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
        let cat = ndarray::concatenate(ndarray::Axis(1), &views)
            .map_err(|e| ConvertError::Weights(e.to_string()))?;
        let (u, _) = leading_left_singular_vectors(&cat.view(), d)?;
        a3.slice_mut(s![.., t * d..(t + 1) * d]).assign(&u);
    }
    Ok(Some(vec![a4, a3]))
}

impl Converted {
    /// Builds the target network in a fresh CPU `VarStore` and loads the converted tensors into
    /// it (every variable must be present with its shape).
    pub fn network(&self) -> Result<(VarStore, Network)> {
        let vs = VarStore::new(tch::Device::Cpu);
        let net = Network::new(&vs.root(), &self.spec)?;
        let named: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        load_named(&vs, named, "the converted weights")?;
        Ok((vs, net))
    }
}
