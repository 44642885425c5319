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
//!   small-image `9k + 2` → `[k,k,k]`; or explicit stage depths.
//! - **Sharing**: `share = L` turns stages into CRU stages whose units share the reduce 1×1 and the
//!   grouped 3×3 within groups of L consecutive units. Which stages: `cru_stages` if given,
//!   otherwise every stage with depth ≥ L (the paper shares "within every six layers, and for
//!   those with less than six layers, we do not share"); with L = 6 this picks conv4 of depth
//!   56 and conv3 + conv4 of depth 116, exactly as released. `--depth 56` / `116` without `share`
//!   imply L = 6. No `share` means no CRU (plain ResNet / ResNeXt).
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

impl std::str::FromStr for Depth {
    type Err = String;

    /// "50" → layers; "3,4,6,3" (or a single "3," entry) → stage depths.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.contains(',') {
            let v = parse_list(s)?;
            Ok(Depth::Stages(v))
        } else {
            s.parse::<usize>().map(Depth::Layers).map_err(|_| {
                format!("'{s}' is not a depth; use e.g. 50, 56, 101, 116 or stage depths like 3,4,6,3")
            })
        }
    }
}

/// Parses "a,b,c" into numbers (empty entries are rejected).
pub fn parse_list(s: &str) -> std::result::Result<Vec<usize>, String> {
    s.split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| format!("'{t}' in '{s}' is not a non-negative integer"))
        })
        .collect()
}

/// A GBTD configuration, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GbtdConfig {
    /// R: number of block terms = groups of the 3×3.
    pub r: usize,
    /// d3* = d4*: rank of each Tucker term in the first stage (doubles per stage).
    pub rank: usize,
    /// L: share-group size (None: no CRU, unless the depth is 56 or 116).
    pub share: Option<usize>,
    /// Depth (None: 50 for ImageNet, 29 for small images).
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
        }
    }
}

/// Smallest input size that gets the ImageNet layout.
pub const IMAGENET_MIN_INPUT: usize = 64;

fn invalid<T>(m: String) -> Result<T> {
    Err(ArchError::Invalid(m))
}

fn stage_name(s: usize) -> String {
    format!("conv{} (stage {s})", s + 2)
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
    fn stage_depths(&self, imagenet: bool) -> Result<Vec<usize>> {
        let depth = self
            .depth
            .clone()
            .unwrap_or(Depth::Layers(if imagenet { 50 } else { 29 }));
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
        let depths = self.stage_depths(imagenet)?;
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

        let named_cru = matches!(self.depth, Some(Depth::Layers(56 | 116))) && imagenet;
        let share = self.share.or(if named_cru { Some(6) } else { None });
        if share == Some(0) {
            return invalid(format!(
                "share = 0; the share-group size L must be ≥ 1 (and ≤ the depth of the CRU stages: {depths:?})"
            ));
        }
        let cru_stages: Vec<usize> = match (&self.cru_stages, share) {
            (Some(_), None) => {
                return invalid("--cru-stages needs --share L (the share-group size, e.g. --share 6)".into());
            }
            (_, None) => Vec::new(),
            (Some(list), Some(l)) => {
                for &s in list {
                    if s >= n {
                        return invalid(format!(
                            "CRU stage {s} does not exist; valid stages are 0..{} (0 = conv2)",
                            n - 1
                        ));
                    }
                    if l > depths[s] {
                        let ok: Vec<usize> = (0..n).filter(|&i| depths[i] >= l).collect();
                        return invalid(format!(
                            "share {l} is larger than the depth {} of {}; valid: share ≤ {} for that stage, or CRU \
                             stages with depth ≥ {l}: {ok:?}",
                            depths[s],
                            stage_name(s),
                            depths[s]
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
                    return invalid(format!(
                        "share {l} is larger than every stage depth {depths:?}; valid: 1 ≤ share ≤ {} (or deeper \
                         stages)",
                        depths.iter().max().copied().unwrap_or(1)
                    ));
                }
                v
            }
        };
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
                stride: if s == 0 { 1 } else { 2 },
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
            e.contains("larger than every stage depth") && e.contains("1 ≤ share ≤ 6"),
            "{e}"
        );
        let e = err(GbtdConfig {
            share: Some(6),
            cru_stages: Some(vec![1]),
            ..d()
        });
        assert!(
            e.contains("share 6 is larger than the depth 4") && e.contains("[2]"),
            "{e}"
        );
        let e = err(GbtdConfig {
            share: Some(6),
            cru_stages: Some(vec![4]),
            ..d()
        });
        assert!(e.contains("valid stages are 0..3"), "{e}");
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
    fn depth_parsing() {
        assert_eq!("50".parse::<Depth>().unwrap(), Depth::Layers(50));
        assert_eq!(
            "3, 4,6,3".parse::<Depth>().unwrap(),
            Depth::Stages(vec![3, 4, 6, 3])
        );
        assert!("fifty".parse::<Depth>().is_err());
        assert!("3,x".parse::<Depth>().is_err());
    }
}
