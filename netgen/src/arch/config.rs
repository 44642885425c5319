//! From a GBTD configuration (paper §3.3, §4.2.2) to a [`NetSpec`].
//!
//! A residual function is R Tuckers of multilinear rank (·,·,d3*,d4*), d3* = d4* = `rank`,
//! realised as 1×1 (→ R·d*) → 3×3 with groups = R → 1×1. The mapping used here:
//!
//! - **R = groups** of every 3×3; **mid of stage s** (0-based) `= R·rank·2^s` (the ResNeXt
//!   convention: 32×4d gives 128, 256, 512, 1024, so the per-term rank d* = mid / R is `rank`
//!   in the first stage and doubles with every stage, like the widths). `R = 1` is the ResNet bottleneck with
//!   mid = rank·2^s, so `R = 1, rank = 64` is ResNet-50 and `R = 32, rank = 4` ResNeXt-50 32×4d.
//! - **Stage widths** (outputs) `256·2^s`, ImageNet and small-image alike (ResNet-50 and
//!   ResNeXt-29 both use 256, 512, …); override with `widths`.
//! - **Layout by input size**: inputs ≥ 64 px get the ImageNet layout (7×7/2 stem of 64 + max pool,
//!   4 stages, strides 1,2,2,2, default depth 50 = `[3,4,6,3]`, 1000 classes); inputs < 64 (28×28
//!   Fashion-MNIST, 32×32 CIFAR) get the small-image layout (3×3/1 stem of 64, 3 stages, strides
//!   1,2,2, default depth 29 = `[3,3,3]` as ResNeXt-29, 10 classes). 28×28 defaults to 1 input
//!   channel, other sizes to 3.
//! - **Depth**: ImageNet 50 and 56 → `[3,4,6,3]`, 101 → `[3,4,23,3]`, 116 → `[3,6,18,3]`, 152 →
//!   `[3,8,36,3]` (CRU-Net-56/116 count the extra 1×1 of their CRUs as layers: 50 + 6, 92 + 24);
//!   small-image `9k + 2` → `[k,k,k]`; or explicit stage depths. Small images with a share L ≥ 2
//!   and no depth get `9L + 2` = `[L,L,L]` (every stage one share group), so `--share 6 --input
//!   28` is depth 56.
//! - **Input and first stride**: the first stage's stride is 1 unless `first_stride` is given (2
//!   quarters the multiply-adds of a small-image net at the same parameters); the spec refuses
//!   inputs smaller than the product of all strides ([`NetSpec::validate`]).
//! - **Sharing**: `share = L` turns stages into CRU stages whose units share the reduce 1×1 and the
//!   grouped 3×3 within groups of L consecutive units. Which stages: `cru_stages` if given,
//!   otherwise every stage with depth ≥ L (the paper shares "within every six layers, and for
//!   those with less than six layers, we do not share"); with L = 6 this picks conv4 of depth
//!   56 and conv3 + conv4 of depth 116, exactly as released. `--depth 56` / `116` without `share`
//!   imply L = 6. No `share`, or `share = 1` (a CRU without sharing is ResNeXt), means no CRU
//!   (plain ResNet / ResNeXt). A share that does not divide a CRU stage's depth (share 7 in a
//!   stage of 18 gives groups 7 + 7 + 4) is refused unless `allow_uneven_share`.
//! - **CRU width** D: `R·rank·2^s` like the other stages unless `cru_width` is given; CRU groups
//!   are R, or D with `groups_eq_channels` (§4.2.2: "the number of groups is simply set to its
//!   maximum number, i.e. equal to the channels size"). The extra 1×1 (Fig. 3 right) is on
//!   unless `no_extra_conv`.
//! - **Activation order**: nets with a CRU stage are pre-activation with the released CRU-Nets'
//!   separate projection BN-ReLU; others are post-activation (torchvision) unless `preact`.
//!
//! So `R 32, rank 4, share 6, depth 56, cru_width 640, groups_eq_channels` is the released
//! CRU-Net-56.
use super::spec::{ArchError, MAX_STAGES, MAX_WIDTH, NetSpec, Result, StageSpec, Stem, UnitSpec};

/// Network depth: a named depth or explicit per-stage unit counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Depth {
    /// Layer count (50, 56, 101, 116, 152 for ImageNet; 9k + 2 for small images).
    Layers(usize),
    /// Units per stage.
    Stages(Vec<usize>),
}

impl Depth {
    /// From the values of `--depth`: one number is a layer count (50, 56, 101, …; 9k + 2), several
    /// are stage depths (3,4,6,3). `None` for an empty list.
    pub fn from_values(v: &[usize]) -> Option<Self> {
        match v {
            [] => None,
            [n] => Some(Depth::Layers(*n)),
            v => Some(Depth::Stages(v.to_vec())),
        }
    }
}

/// A GBTD configuration, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GbtdConfig {
    /// R: number of block terms = groups of the 3×3.
    pub r: usize,
    /// d3* = d4*: rank of each Tucker term in the first stage (doubles per stage).
    pub rank: usize,
    /// L: share-group size (None: no CRU, unless the depth is 56 or 116). `Some(1)` means no
    /// sharing, i.e. the same network as `None` (ResNeXt, or ResNet for R = 1).
    pub share: Option<usize>,
    /// Depth (None: 50 for ImageNet; for small images 9L + 2 = `[L, L, L]` with a share L ≥ 2,
    /// else 29).
    pub depth: Option<Depth>,
    /// CRU stages, 0-based (None: every stage with depth ≥ share).
    pub cru_stages: Option<Vec<usize>>,
    /// Stage output widths (None: 256·2^s).
    pub widths: Option<Vec<usize>>,
    /// Bottleneck widths of the non-CRU stages (None: R·rank·2^s).
    pub mids: Option<Vec<usize>>,
    /// CRU width D: one value for every CRU stage or one per CRU stage (None: R·rank·2^s).
    pub cru_width: Option<Vec<usize>>,
    /// CRU groups = D instead of R.
    pub groups_eq_channels: bool,
    /// Drop the extra 1×1 of the CRU (Fig. 3 left).
    pub no_extra_conv: bool,
    /// Force pre-activation units for nets without CRU stages.
    pub preact: bool,
    /// Stem width (None: 64).
    pub stem_width: Option<usize>,
    /// Classes (None: 1000 for ImageNet, 10 for small images).
    pub classes: Option<usize>,
    /// Input size (None: 224).
    pub input: Option<usize>,
    /// Input channels (None: 1 for 28×28, else 3).
    pub in_channels: Option<usize>,
    /// Stride of the first stage (None: 1). 2 quarters the cost of a small-image network at the
    /// same parameter count.
    pub first_stride: Option<usize>,
    /// Accept share groups of unequal size (e.g. 7 + 7 + 4 units for share 7 in a stage of 18);
    /// refused otherwise, with the shares that divide the stage depths.
    pub allow_uneven_share: bool,
}

impl Default for GbtdConfig {
    fn default() -> Self {
        GbtdConfig {
            r: 32,
            rank: 4,
            share: None,
            depth: None,
            cru_stages: None,
            widths: None,
            mids: None,
            cru_width: None,
            groups_eq_channels: false,
            no_extra_conv: false,
            preact: false,
            stem_width: None,
            classes: None,
            input: None,
            in_channels: None,
            first_stride: None,
            allow_uneven_share: false,
        }
    }
}

/// Smallest input size that gets the ImageNet layout.
pub const IMAGENET_MIN_INPUT: usize = 64;

fn invalid<T>(m: String) -> Result<T> {
    Err(ArchError::Invalid(m))
}

/// A stage in both numberings the CLI accepts: "conv4 (stage 2)".
fn stage_name(s: usize) -> String {
    format!("conv{} (stage {s})", s + 2)
}

/// The valid stages of an `n`-stage network in both numberings: "conv2..conv5 (stages 0..3)".
fn valid_stages(n: usize) -> String {
    format!("conv2..conv{} (stages 0..{})", n + 1, n.saturating_sub(1))
}

fn divisors(n: usize) -> String {
    let d: Vec<String> = (1..=n)
        .filter(|&k| n.is_multiple_of(k))
        .map(|k| k.to_string())
        .collect();
    if d.len() > 16 {
        format!("{}, …", d[..16].join(", "))
    } else {
        d.join(", ")
    }
}

impl GbtdConfig {
    /// Stage depths for this configuration and layout.
    /// `share`: the effective share-group size, which picks the small-image default depth.
    fn stage_depths(&self, imagenet: bool, share: Option<usize>) -> Result<Vec<usize>> {
        let default = match share {
            _ if imagenet => Depth::Layers(50),
            // A share group of L units needs stages of ≥ L units: [L, L, L] = 9L + 2 layers.
            Some(l) if l >= 2 => Depth::Stages(vec![l; 3]),
            _ => Depth::Layers(29),
        };
        let depth = self.depth.clone().unwrap_or(default);
        let v = match depth {
            Depth::Stages(v) => v,
            Depth::Layers(n) if imagenet => match n {
                50 | 56 => vec![3, 4, 6, 3],
                101 => vec![3, 4, 23, 3],
                116 => vec![3, 6, 18, 3],
                152 => vec![3, 8, 36, 3],
                _ => {
                    return invalid(format!(
                        "depth {n} is not a known ImageNet depth; valid: 50, 56, 101, 116, 152, or explicit stage \
                         depths like 3,4,6,3"
                    ));
                }
            },
            Depth::Layers(n) => {
                if n < 11 || !(n - 2).is_multiple_of(9) {
                    return invalid(format!(
                        "depth {n} does not fit the small-image layout (3 stages of k bottleneck units: 9k + 2 \
                         layers); valid: 11, 20, 29, 38, 47, 56, …, or explicit stage depths like 3,3,3"
                    ));
                }
                vec![(n - 2) / 9; 3]
            }
        };
        if v.is_empty() {
            return invalid("no stage depths given; use e.g. 3,4,6,3".into());
        }
        if let Some(s) = v.iter().position(|&d| d == 0) {
            return invalid(format!(
                "{} has depth 0; every stage needs ≥ 1 unit",
                stage_name(s)
            ));
        }
        Ok(v)
    }

    /// Builds and validates the spec. Errors say what is wrong and what would be valid.
    pub fn to_spec(&self) -> Result<NetSpec> {
        if self.r == 0 {
            return invalid("R = 0; R is the number of block terms (groups), use R ≥ 1 (1 = ResNet)".into());
        }
        if self.rank == 0 {
            return invalid(
                "rank = 0; the Tucker rank d3* = d4* must be ≥ 1 (e.g. 4 for 32×4d, 64 for ResNet with R = 1)"
                    .into(),
            );
        }
        let input = self.input.unwrap_or(224);
        if input == 0 {
            return invalid("input size 0; use 224 (ImageNet), 32 (CIFAR) or 28 (Fashion-MNIST)".into());
        }
        let imagenet = input >= IMAGENET_MIN_INPUT;
        let named_cru = matches!(self.depth, Some(Depth::Layers(56 | 116))) && imagenet;
        if self.share == Some(0) {
            return invalid(
                "share = 0; the share-group size L must be ≥ 1 (1 = no sharing, 6 as in the paper)".into(),
            );
        }
        if self.share == Some(1) && self.cru_stages.is_some() {
            return invalid(
                "--cru-stages with --share 1: share 1 means no sharing (plain ResNeXt / ResNet units); give \
                 --share L ≥ 2 for CRU stages, or drop --cru-stages"
                    .into(),
            );
        }
        // share 1 = no sharing: the same network as no --share (a CRU without sharing is ResNeXt).
        let share = match self.share {
            Some(1) => None,
            Some(l) => Some(l),
            None if named_cru => Some(6),
            None => None,
        };
        let depths = self.stage_depths(imagenet, share)?;
        let n = depths.len();
        if n > MAX_STAGES {
            return invalid(format!("{n} stages; at most {MAX_STAGES} are supported"));
        }
        let list_len_check = |what: &str, v: &Option<Vec<usize>>| -> Result<()> {
            match v {
                Some(v) if v.len() != n => invalid(format!(
                    "{what} has {} entries but the network has {n} stages; give exactly {n} comma-separated values",
                    v.len()
                )),
                _ => Ok(()),
            }
        };
        list_len_check("--widths", &self.widths)?;
        list_len_check("--mids", &self.mids)?;

        let cru_stages: Vec<usize> = match (&self.cru_stages, share) {
            (Some(_), None) => {
                return invalid("--cru-stages needs --share L (the share-group size, e.g. --share 6)".into());
            }
            (_, None) => Vec::new(),
            (Some(list), Some(l)) => {
                for &s in list {
                    if s >= n {
                        return invalid(format!(
                            "CRU stage {} does not exist; this network has {n} stages: {}",
                            stage_name(s),
                            valid_stages(n)
                        ));
                    }
                    if l > depths[s] {
                        let ok: Vec<String> = (0..n).filter(|&i| depths[i] >= l).map(stage_name).collect();
                        return invalid(format!(
                            "share {l} is larger than the depth {} of {}; valid: share ≤ {} for that stage, or CRU \
                             stages with depth ≥ {l}: [{}]",
                            depths[s],
                            stage_name(s),
                            depths[s],
                            ok.join(", ")
                        ));
                    }
                }
                let mut v = list.clone();
                v.sort_unstable();
                v.dedup();
                v
            }
            (None, Some(l)) => {
                let v: Vec<usize> = (0..n).filter(|&i| depths[i] >= l).collect();
                if v.is_empty() {
                    let deeper = if imagenet {
                        match l {
                            ..=23 => "--depth 101 ([3, 4, 23, 3])".to_string(),
                            _ => format!("stage depths such as --depth 3,4,{l},3"),
                        }
                    } else {
                        format!("--depth {} ([{l}, {l}, {l}]), or leave --depth out", 9 * l + 2)
                    };
                    return invalid(format!(
                        "share {l} is larger than every stage depth {depths:?}; valid: 1 ≤ share ≤ {}, or a deeper \
                         network: {deeper}",
                        depths.iter().max().copied().unwrap_or(1)
                    ));
                }
                v
            }
        };
        if let (Some(l), false) = (share, self.allow_uneven_share) {
            for &c in &cru_stages {
                let d = depths[c];
                if !d.is_multiple_of(l) {
                    let groups: Vec<String> = (0..d.div_ceil(l))
                        .map(|k| (((k + 1) * l).min(d) - k * l).to_string())
                        .collect();
                    let divisors: Vec<String> = (2..=d)
                        .filter(|k| d.is_multiple_of(*k))
                        .map(|k| k.to_string())
                        .collect();
                    return invalid(format!(
                        "share {l} splits the {d} units of {} into uneven share groups {}; use a share that divides \
                         {d} ({}), or --allow-uneven-share to accept them",
                        stage_name(c),
                        groups.join(" + "),
                        divisors.join(", ")
                    ));
                }
            }
        }
        let first_stride = self.first_stride.unwrap_or(1);
        if first_stride == 0 {
            return invalid("first stride 0; use 1 (keep the input size) or 2 (halve it)".into());
        }
        if let Some(d) = &self.cru_width {
            if cru_stages.is_empty() {
                return invalid("--cru-width needs CRU stages: give --share L".into());
            }
            if d.len() != 1 && d.len() != cru_stages.len() {
                return invalid(format!(
                    "--cru-width has {} values but there are {} CRU stages {:?}; give one value or one per CRU stage",
                    d.len(),
                    cru_stages.len(),
                    cru_stages
                ));
            }
        }

        let widths: Vec<usize> = self
            .widths
            .clone()
            .unwrap_or_else(|| (0..n).map(|s| 256 << s).collect());
        let r = self.r;
        let mut stages = Vec::with_capacity(n);
        for s in 0..n {
            let default_mid = r
                .checked_mul(self.rank)
                .and_then(|m| m.checked_mul(1 << s))
                .filter(|&m| m <= MAX_WIDTH)
                .ok_or_else(|| {
                    ArchError::Invalid(format!(
                        "{}: R·rank·2^s = {r}·{}·2^{s} exceeds {MAX_WIDTH}; use a smaller R or rank",
                        stage_name(s),
                        self.rank
                    ))
                })?;
            let cru_pos = cru_stages.iter().position(|&c| c == s);
            let unit = if let Some(k) = cru_pos {
                let d = match &self.cru_width {
                    Some(v) if v.len() == 1 => v[0],
                    Some(v) => v[k],
                    None => default_mid,
                };
                let groups = if self.groups_eq_channels { d } else { r };
                if d == 0 {
                    return invalid(format!("{}: CRU width D = 0; use D ≥ 1", stage_name(s)));
                }
                if !d.is_multiple_of(groups) {
                    return invalid(format!(
                        "{}: R = {r} does not divide the CRU width D = {d}; valid: a D that is a multiple of {r} \
                         (e.g. {}), R among the divisors of {d} ({}), or --groups-eq-channels",
                        stage_name(s),
                        d.div_ceil(r) * r,
                        divisors(d)
                    ));
                }
                UnitSpec::Cru {
                    mid: d,
                    groups,
                    share: share.unwrap_or(1),
                    extra_conv: !self.no_extra_conv,
                }
            } else {
                let mid = self.mids.as_ref().map_or(default_mid, |m| m[s]);
                if mid == 0 {
                    return invalid(format!("{}: bottleneck width 0; use ≥ 1", stage_name(s)));
                }
                if !mid.is_multiple_of(r) {
                    return invalid(format!(
                        "{}: R = {r} does not divide the bottleneck width {mid}; valid: a width that is a multiple \
                         of {r} (e.g. {}), or R among the divisors of {mid} ({})",
                        stage_name(s),
                        mid.div_ceil(r) * r,
                        divisors(mid)
                    ));
                }
                UnitSpec::Aggregated { mid, groups: r }
            };
            stages.push(StageSpec {
                depth: depths[s],
                width: widths[s],
                stride: if s == 0 { first_stride } else { 2 },
                unit,
            });
        }
        let has_cru = !cru_stages.is_empty();
        let preact = has_cru || self.preact;
        let stem_width = self.stem_width.unwrap_or(64);
        let spec = NetSpec {
            name: self.name(&depths, &cru_stages, share, imagenet),
            in_channels: self.in_channels.unwrap_or(if input == 28 { 1 } else { 3 }),
            input_size: input,
            classes: self.classes.unwrap_or(if imagenet { 1000 } else { 10 }),
            preact,
            stem: if imagenet {
                Stem::Imagenet { width: stem_width }
            } else {
                Stem::Small { width: stem_width }
            },
            stages,
            separate_projection_bn: has_cru,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Paper-style name, e.g. "gbtd 32×4d @×14 (L = 6), depths `[3, 4, 6, 3]`, 224×224".
    fn name(&self, depths: &[usize], cru: &[usize], share: Option<usize>, imagenet: bool) -> String {
        let mut s = format!("gbtd {}×{}d", self.r, self.rank);
        if !cru.is_empty() {
            s.push_str(" @");
            // The "@" notation names the CRU stages by their output size at 224 (conv3 = 28, conv4 = 14).
            for &c in cru {
                if imagenet {
                    s.push_str(&format!("×{}", 56 >> c));
                } else {
                    s.push_str(&format!("×conv{}", c + 2));
                }
            }
            if let Some(l) = share {
                s.push_str(&format!(" (L = {l})"));
            }
        }
        let input = self.input.unwrap_or(224);
        s.push_str(&format!(", depths {depths:?}, {input}×{input}"));
        if let Some(st) = self.first_stride.filter(|&st| st != 1) {
            s.push_str(&format!(", first stride {st}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(cfg: GbtdConfig) -> String {
        match cfg.to_spec() {
            Ok(s) => panic!("expected an error, got {}", s.name),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn resnext_convention_for_mids_widths_and_strides() {
        let s = GbtdConfig::default().to_spec().unwrap();
        let mids: Vec<usize> = s.stages.iter().map(|st| st.unit.mid()).collect();
        let widths: Vec<usize> = s.stages.iter().map(|st| st.width).collect();
        let strides: Vec<usize> = s.stages.iter().map(|st| st.stride).collect();
        assert_eq!(mids, [128, 256, 512, 1024]);
        assert_eq!(widths, [256, 512, 1024, 2048]);
        assert_eq!(strides, [1, 2, 2, 2]);
        // d* = mid / R doubles per stage with the widths (ResNeXt 32×4d: 4, 8, 16, 32).
        let ranks: Vec<usize> = s.stages.iter().map(|st| st.unit.rank()).collect();
        assert_eq!(ranks, [4, 8, 16, 32]);
        assert!(s.stages.iter().all(|st| st.unit.groups() == 32));
        let r1 = GbtdConfig {
            r: 1,
            rank: 64,
            ..Default::default()
        }
        .to_spec()
        .unwrap();
        assert!(r1.stages.iter().enumerate().all(|(i, st)| st.unit
            == UnitSpec::Aggregated {
                mid: 64 << i,
                groups: 1
            }));
        assert!(!r1.preact);
    }

    #[test]
    fn default_cru_stages_follow_the_share_rule() {
        let cru = |cfg: GbtdConfig| -> Vec<usize> {
            let s = cfg.to_spec().unwrap();
            (0..s.stages.len())
                .filter(|&i| s.stages[i].unit.is_cru())
                .collect()
        };
        let base = GbtdConfig {
            share: Some(6),
            ..Default::default()
        };
        assert_eq!(cru(base.clone()), [2]);
        assert_eq!(
            cru(GbtdConfig {
                depth: Some(Depth::Layers(116)),
                ..base.clone()
            }),
            [1, 2]
        );
        assert_eq!(
            cru(GbtdConfig {
                share: Some(3),
                allow_uneven_share: true,
                ..base.clone()
            }),
            [0, 1, 2, 3]
        );
        // 56 and 116 imply share 6.
        assert_eq!(
            cru(GbtdConfig {
                depth: Some(Depth::Layers(56)),
                ..Default::default()
            }),
            [2]
        );
        assert!(cru(GbtdConfig::default()).is_empty());
        let s = GbtdConfig {
            depth: Some(Depth::Stages(vec![2, 8])),
            cru_stages: Some(vec![1]),
            allow_uneven_share: true,
            ..base
        }
        .to_spec()
        .unwrap();
        assert_eq!(s.stages[1].unit.share_groups(8), [0..6, 6..8]);
        assert!(s.preact && s.separate_projection_bn);
    }

    #[test]
    fn groups_eq_channels_and_cru_width() {
        let s = GbtdConfig {
            share: Some(6),
            cru_width: Some(vec![640]),
            groups_eq_channels: true,
            ..Default::default()
        }
        .to_spec()
        .unwrap();
        assert_eq!(
            s.stages[2].unit,
            UnitSpec::Cru {
                mid: 640,
                groups: 640,
                share: 6,
                extra_conv: true
            }
        );
        assert_eq!(s.stages[1].unit, UnitSpec::Aggregated { mid: 256, groups: 32 });
        let s = GbtdConfig {
            share: Some(6),
            no_extra_conv: true,
            ..Default::default()
        }
        .to_spec()
        .unwrap();
        assert_eq!(
            s.stages[2].unit,
            UnitSpec::Cru {
                mid: 512,
                groups: 32,
                share: 6,
                extra_conv: false
            }
        );
    }

    #[test]
    fn small_image_layout() {
        let s = GbtdConfig {
            r: 8,
            rank: 4,
            input: Some(28),
            ..Default::default()
        }
        .to_spec()
        .unwrap();
        assert_eq!(s.stages.len(), 3);
        assert_eq!((s.in_channels, s.classes), (1, 10));
        assert!(matches!(s.stem, Stem::Small { width: 64 }));
        assert_eq!(s.stage_out_sizes(), [Some(28), Some(14), Some(7)]);
        let s = GbtdConfig {
            input: Some(32),
            depth: Some(Depth::Layers(56)),
            ..Default::default()
        }
        .to_spec()
        .unwrap();
        assert_eq!(s.stages.iter().map(|st| st.depth).collect::<Vec<_>>(), [6, 6, 6]);
        assert_eq!(s.in_channels, 3);
    }

    #[test]
    fn invalid_configurations_explain_what_would_be_valid() {
        let d = GbtdConfig::default;
        let e = err(GbtdConfig { r: 0, ..d() });
        assert!(e.contains("R = 0") && e.contains("R ≥ 1"), "{e}");
        let e = err(GbtdConfig { rank: 0, ..d() });
        assert!(e.contains("rank = 0") && e.contains("≥ 1"), "{e}");
        let e = err(GbtdConfig {
            share: Some(0),
            ..d()
        });
        assert!(e.contains("share = 0"), "{e}");
        let e = err(GbtdConfig {
            share: Some(7),
            ..d()
        });
        assert!(
            e.contains("larger than every stage depth")
                && e.contains("1 ≤ share ≤ 6")
                && e.contains("--depth 101"),
            "{e}"
        );
        let e = err(GbtdConfig {
            share: Some(6),
            cru_stages: Some(vec![1]),
            ..d()
        });
        assert!(
            e.contains("share 6 is larger than the depth 4") && e.contains("[conv4 (stage 2)]"),
            "{e}"
        );
        let e = err(GbtdConfig {
            share: Some(6),
            cru_stages: Some(vec![4]),
            ..d()
        });
        assert!(
            e.contains("CRU stage conv6 (stage 4) does not exist")
                && e.contains("conv2..conv5 (stages 0..3)"),
            "{e}"
        );
        let e = err(GbtdConfig {
            cru_stages: Some(vec![2]),
            ..d()
        });
        assert!(e.contains("needs --share"), "{e}");
        let e = err(GbtdConfig {
            r: 7,
            share: Some(6),
            cru_width: Some(vec![640]),
            ..d()
        });
        assert!(
            e.contains("R = 7 does not divide the CRU width D = 640") && e.contains("644"),
            "{e}"
        );
        let e = err(GbtdConfig {
            mids: Some(vec![100, 256, 512, 1024]),
            ..d()
        });
        assert!(
            e.contains("does not divide the bottleneck width 100") && e.contains("1, 2, 4, 5"),
            "{e}"
        );
        let e = err(GbtdConfig {
            widths: Some(vec![256, 512]),
            ..d()
        });
        assert!(e.contains("exactly 4"), "{e}");
        let e = err(GbtdConfig {
            depth: Some(Depth::Layers(51)),
            ..d()
        });
        assert!(e.contains("50, 56, 101, 116"), "{e}");
        let e = err(GbtdConfig {
            input: Some(32),
            depth: Some(Depth::Layers(30)),
            ..d()
        });
        assert!(e.contains("9k + 2") && e.contains("29"), "{e}");
        let e = err(GbtdConfig {
            cru_width: Some(vec![640, 640]),
            share: Some(6),
            ..d()
        });
        assert!(e.contains("one value or one per CRU stage"), "{e}");
        let e = err(GbtdConfig {
            r: usize::MAX,
            rank: 2,
            ..d()
        });
        assert!(e.contains("exceeds"), "{e}");
        let e = err(GbtdConfig {
            input: Some(0),
            ..d()
        });
        assert!(e.contains("input size 0") && e.contains("224"), "{e}");
        let e = err(GbtdConfig {
            depth: Some(Depth::Stages(vec![1; MAX_STAGES + 1])),
            ..d()
        });
        assert!(e.contains("at most 16"), "{e}");
    }

    #[test]
    fn depth_values() {
        assert_eq!(Depth::from_values(&[50]), Some(Depth::Layers(50)));
        assert_eq!(
            Depth::from_values(&[3, 4, 6, 3]),
            Some(Depth::Stages(vec![3, 4, 6, 3]))
        );
        assert_eq!(Depth::from_values(&[]), None);
    }

    #[test]
    fn share_1_is_no_sharing() {
        for r in [32, 1] {
            let rank = if r == 1 { 64 } else { 4 };
            for input in [None, Some(28)] {
                let plain = GbtdConfig {
                    r,
                    rank,
                    input,
                    ..Default::default()
                };
                let one = GbtdConfig {
                    share: Some(1),
                    ..plain.clone()
                };
                assert_eq!(one.to_spec().unwrap(), plain.to_spec().unwrap());
            }
        }
        let e = err(GbtdConfig {
            share: Some(1),
            cru_stages: Some(vec![2]),
            ..Default::default()
        });
        assert!(e.contains("share 1 means no sharing"), "{e}");
    }

    #[test]
    fn small_image_default_depth_follows_the_share() {
        let s = GbtdConfig {
            share: Some(6),
            input: Some(28),
            ..Default::default()
        }
        .to_spec()
        .unwrap();
        assert_eq!(s.stages.iter().map(|st| st.depth).collect::<Vec<_>>(), [6, 6, 6]);
        assert!(s.stages.iter().all(|st| st.unit.is_cru() && st.unit.share() == 6));
        // With an explicit depth that cannot hold the share, the error names one that can.
        let e = err(GbtdConfig {
            share: Some(6),
            input: Some(28),
            depth: Some(Depth::Layers(29)),
            ..Default::default()
        });
        assert!(e.contains("--depth 56 ([6, 6, 6])"), "{e}");
    }

    #[test]
    fn uneven_share_groups_are_refused_unless_allowed() {
        let cfg = GbtdConfig {
            share: Some(7),
            depth: Some(Depth::Layers(116)),
            ..Default::default()
        };
        let e = err(cfg.clone());
        assert!(
            e.contains("the 18 units of conv4 (stage 2) into uneven share groups 7 + 7 + 4")
                && e.contains("2, 3, 6, 9, 18")
                && e.contains("--allow-uneven-share"),
            "{e}"
        );
        let s = GbtdConfig {
            allow_uneven_share: true,
            ..cfg
        }
        .to_spec()
        .unwrap();
        assert_eq!(s.stages[2].unit.share_groups(18), [0..7, 7..14, 14..18]);
    }

    #[test]
    fn first_stride_sets_the_first_stage_stride() {
        let s = GbtdConfig {
            r: 8,
            rank: 4,
            input: Some(28),
            first_stride: Some(2),
            ..Default::default()
        }
        .to_spec()
        .unwrap();
        assert_eq!(s.stages[0].stride, 2);
        assert_eq!(s.stage_out_sizes(), [Some(14), Some(7), Some(4)]);
        assert!(s.name.contains("first stride 2"), "{}", s.name);
        let e = err(GbtdConfig {
            first_stride: Some(0),
            ..Default::default()
        });
        assert!(e.contains("first stride 0"), "{e}");
    }
}
