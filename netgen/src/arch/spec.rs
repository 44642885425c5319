//! The architecture spec: a serde data model (JSON, and TOML for hand-written specs) of a ResNet /
//! ResNeXt / CRU-Net, shared by the counter ([`crate::count`]), the table printer
//! ([`crate::table`]) and the tch network builder.
//!
//! A network is a stem, a list of stages of residual units, and a head (global average pool → fc
//! with bias; pre-activation nets put a final BN-ReLU before the pool). Every unit of a stage
//! outputs `width` channels (the shortcut width `bw`); only the first unit of a stage may change
//! the width or the spatial size (`stride`).
//!
//! ## GBTD view of a unit (paper §3.2–3.3)
//! The residual function 1×1 (d3 → R·d3*) → k×k grouped (groups = R) → 1×1 (R·d4* → d4) is a
//! partial block-term decomposition with R terms of multilinear rank (·,·,d3*,d4*):
//! `R = groups`, `d3* = d4* = mid / groups`. R = 1 is the ResNet bottleneck (Tucker-2).
//!
//! ## Conventions fixed here (written out layer by layer in [`crate::arch::plan`], which both the
//! counter and the tch builder follow)
//! - **Projection shortcut**: only the first unit of a stage has one, and only when
//!   `stride ≠ 1` or its input width differs from the stage width ([`StageSpec::has_projection`]).
//!   Post-activation: 1×1 stride s → BN. Pre-activation aggregated: the unit's first BN-ReLU output
//!   → 1×1 stride s (no BN after it), or, with [`NetSpec::separate_projection_bn`] (the released
//!   CRU-Nets), its own BN-ReLU of the unit input → 1×1 stride s.
//! - **CRU first unit with a projection**: one 1×1 weight (in → width) is applied twice, each time
//!   after its own BN-ReLU of the unit input: at stride 1 to produce the branch input (so the
//!   shared 1×1 of the branch always sees `width` channels), and at the stage stride as the
//!   projection shortcut. Without a projection the branch input is the unit input itself.
//! - **Stride placement**: in the 3×3 (torchvision v1.5, pre-act ResNeXt, and the shared grouped
//!   3×3 of a CRU).
//! - **Share groups**: units `[k·share, min((k+1)·share, depth))` of a CRU stage share one
//!   (width → mid) 1×1 tensor and one grouped 3×3 tensor ([`UnitSpec::share_groups`]).
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors of spec handling: invalid architectures and unreadable spec files.
#[derive(Debug, Error)]
pub enum ArchError {
    /// The architecture is inconsistent; the message says what is wrong and what would be valid.
    #[error("invalid architecture: {0}")]
    Invalid(String),
    /// A spec file could not be parsed.
    #[error("cannot parse spec: {0}")]
    Parse(String),
    /// A file could not be read or written.
    #[error("i/o error: {0}")]
    Io(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ArchError>;

/// A complete network description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// Free-form name (preset name or a description of the configuration).
    pub name: String,
    /// Input channels: 3 for ImageNet / CIFAR, 1 for Fashion-MNIST.
    pub in_channels: usize,
    /// Input height = width in pixels: 224, 32, 28.
    pub input_size: usize,
    /// Number of classes of the fc head.
    pub classes: usize,
    /// true: pre-activation (BN-ReLU-conv) units and a final BN-ReLU before pooling.
    pub preact: bool,
    /// The stem in front of the first stage.
    pub stem: Stem,
    /// The stages, in order.
    pub stages: Vec<StageSpec>,
    /// Pre-activation aggregated units only (ignored when `preact = false` and for CRU stages, whose
    /// projection always has its own BN-ReLU). `false` (default, He et al. 2016b pre-act ResNets):
    /// the projection shortcut of a stage's first unit reuses the unit's first BN-ReLU output.
    /// `true` (the released CRU-Nets, whose published parameter counts 25,609,384 / 43,656,136 need
    /// it): the projection applies its OWN BN-ReLU to the unit input, i.e. BN(in) → ReLU → 1×1
    /// stride s, adding 2·in parameters (γ, β) per projection.
    #[serde(default)]
    pub separate_projection_bn: bool,
}

/// The stem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stem {
    /// 7×7/2 conv (in→width, padding 3, no bias) → BN → ReLU → 3×3/2 max pool (padding 1). (In
    /// pre-activation nets the stem still has its BN-ReLU, as in the released CRU-Nets.)
    Imagenet { width: usize },
    /// 3×3/1 conv (in→width, padding 1, no bias) → BN → ReLU (CIFAR ResNets / ResNeXt-29 style; no
    /// pooling).
    Small { width: usize },
}

/// One stage of `depth` residual units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Number of units.
    pub depth: usize,
    /// Output (shortcut) width bw of every unit of the stage.
    pub width: usize,
    /// Stride of the stage's first unit.
    pub stride: usize,
    /// The unit kind used by every unit of the stage.
    pub unit: UnitSpec,
}

/// The residual function of a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum UnitSpec {
    /// 1×1 (in→mid) → 3×3 grouped (mid→mid, `groups`) → 1×1 (mid→width), + shortcut.
    /// groups = 1: ResNet bottleneck (Tucker-2, R = 1). groups = R > 1: ResNeXt (R Tuckers of rank
    /// d3* = d4* = mid/R). GBTD view: R = groups, d* = mid / groups.
    Aggregated { mid: usize, groups: usize },
    /// Collective residual unit (paper Fig. 3 right, as in the released CRU-Net models):
    /// BN-ReLU-1×1 (width→mid) (shared) → 3×3 grouped (mid→mid, `groups`) (shared, no BN-ReLU
    /// before it) → BN-ReLU-1×1 (mid→mid) (not shared; the extra layer; omitted when
    /// extra_conv = false (Fig. 3 left)) → BN-ReLU-1×1 (mid→width) (not shared) → + shortcut.
    /// Units are grouped into share groups of `share` consecutive units (the last group may be
    /// shorter) which use ONE tensor for each shared weight. BN is never shared.
    Cru {
        mid: usize,
        groups: usize,
        share: usize,
        extra_conv: bool,
    },
}

/// Input/output description of one unit, as produced by [`NetSpec::units`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitIo {
    /// Stage index (0-based).
    pub stage: usize,
    /// Unit index inside the stage (0-based).
    pub index: usize,
    /// Channels entering the unit.
    pub in_width: usize,
    /// Channels leaving the unit (= the stage width).
    pub out_width: usize,
    /// Stride of the unit (the stage stride for the first unit, else 1).
    pub stride: usize,
    /// Whether the unit has a projection shortcut.
    pub projection: bool,
    /// Spatial size of the unit's input.
    pub in_size: usize,
    /// Spatial size of the unit's output.
    pub out_size: usize,
    /// Share group index inside the stage (CRU units only).
    pub share_group: Option<usize>,
}

/// Largest channel count (and class count, stride) accepted by [`NetSpec::validate`]; keeps
/// every count far from integer overflow.
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest input size accepted by [`NetSpec::validate`].
pub const MAX_INPUT: usize = 1 << 13;
/// Largest stage depth accepted by [`NetSpec::validate`].
pub const MAX_DEPTH: usize = 1 << 12;
/// Largest number of stages accepted by [`NetSpec::validate`].
pub const MAX_STAGES: usize = 16;

/// Output size of a convolution / pooling window: `⌊(n + 2·pad − k) / stride⌋ + 1`
/// (`None` when the window does not fit).
pub fn conv_out_size(n: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    let padded = n + 2 * pad;
    if stride == 0 || padded < k {
        None
    } else {
        Some((padded - k) / stride + 1)
    }
}

impl Stem {
    /// Output width of the stem.
    pub fn width(&self) -> usize {
        match *self {
            Stem::Imagenet { width } | Stem::Small { width } => width,
        }
    }

    /// Total stride of the stem: 4 for the ImageNet stem (conv /2, pool /2), 1 for the small stem.
    pub fn stride(&self) -> usize {
        match self {
            Stem::Imagenet { .. } => 4,
            Stem::Small { .. } => 1,
        }
    }

    /// Spatial output size for an input of `n`×`n` (`None` if the input is too small).
    /// Imagenet: conv 7×7/2 pad 3, then max pool 3×3/2 pad 1 (224 → 112 → 56). Small: unchanged.
    pub fn out_size(&self, n: usize) -> Option<usize> {
        match self {
            Stem::Imagenet { .. } => conv_out_size(n, 7, 2, 3).and_then(|m| conv_out_size(m, 3, 2, 1)),
            Stem::Small { .. } => conv_out_size(n, 3, 1, 1),
        }
    }
}

impl UnitSpec {
    /// Bottleneck (core) width `mid` = R·d*.
    pub fn mid(&self) -> usize {
        match *self {
            UnitSpec::Aggregated { mid, .. } | UnitSpec::Cru { mid, .. } => mid,
        }
    }

    /// Groups of the 3×3 conv = R, the number of block terms.
    pub fn groups(&self) -> usize {
        match *self {
            UnitSpec::Aggregated { groups, .. } | UnitSpec::Cru { groups, .. } => groups,
        }
    }

    /// Tucker rank d3* = d4* = mid / groups of each block term.
    pub fn rank(&self) -> usize {
        self.mid() / self.groups().max(1)
    }

    /// Whether this is a collective residual unit.
    pub fn is_cru(&self) -> bool {
        matches!(self, UnitSpec::Cru { .. })
    }

    /// Share-group size L (1 for non-CRU units: nothing is shared).
    pub fn share(&self) -> usize {
        match *self {
            UnitSpec::Aggregated { .. } => 1,
            UnitSpec::Cru { share, .. } => share,
        }
    }

    /// Unit index ranges of the share groups of a stage of `depth` units: `[k·L, min((k+1)·L,
    /// depth))`. Non-CRU units form singleton groups. Empty when `share` is 0.
    pub fn share_groups(&self, depth: usize) -> Vec<Range<usize>> {
        let l = self.share();
        if l == 0 {
            return Vec::new();
        }
        (0..depth.div_ceil(l))
            .map(|k| k * l..((k + 1) * l).min(depth))
            .collect()
    }

    /// Short human name: "bottleneck", "aggregated", or "cru".
    pub fn kind_name(&self) -> &'static str {
        match self {
            UnitSpec::Aggregated { groups: 1, .. } => "bottleneck",
            UnitSpec::Aggregated { .. } => "aggregated",
            UnitSpec::Cru { .. } => "cru",
        }
    }
}

impl StageSpec {
    /// Whether the first unit of this stage, fed with `in_width` channels, has a projection shortcut
    /// (`stride ≠ 1` or `in_width ≠ width`). Other units never do.
    pub fn has_projection(&self, in_width: usize) -> bool {
        self.stride != 1 || in_width != self.width
    }

    /// Input width of unit `index` when the stage is fed `stage_in` channels.
    pub fn unit_in_width(&self, stage_in: usize, index: usize) -> usize {
        if index == 0 { stage_in } else { self.width }
    }

    /// Stride of unit `index`.
    pub fn unit_stride(&self, index: usize) -> usize {
        if index == 0 { self.stride } else { 1 }
    }

    /// Spatial output size of the stage for an input of size `n` (3×3 conv, padding 1, at the
    /// stage stride; the 1×1 projection at the same stride gives the same size).
    pub fn out_size(&self, n: usize) -> Option<usize> {
        conv_out_size(n, 3, self.stride, 1)
    }
}

impl NetSpec {
    /// Input width of each stage (the stem width, then the previous stage's width).
    pub fn stage_in_widths(&self) -> Vec<usize> {
        let mut w = self.stem.width();
        self.stages
            .iter()
            .map(|s| {
                let i = w;
                w = s.width;
                i
            })
            .collect()
    }

    /// Width of the features entering the head (the last stage width, or the stem width).
    pub fn final_width(&self) -> usize {
        self.stages.last().map_or(self.stem.width(), |s| s.width)
    }

    /// Spatial output size after the stem and after each stage (`None` where the input vanishes).
    pub fn stage_out_sizes(&self) -> Vec<Option<usize>> {
        let mut n = self.stem.out_size(self.input_size);
        self.stages
            .iter()
            .map(|s| {
                n = n.and_then(|m| s.out_size(m));
                n
            })
            .collect()
    }

    /// Every unit of the network, in order, with its widths, stride, projection flag, sizes and
    /// share group. Sizes of 0 mean the spatial size vanished (rejected by [`NetSpec::validate`]).
    pub fn units(&self) -> Vec<UnitIo> {
        let mut out = Vec::new();
        let mut n = self.stem.out_size(self.input_size).unwrap_or(0);
        for ((si, s), stage_in) in self.stages.iter().enumerate().zip(self.stage_in_widths()) {
            let groups = s.unit.share_groups(s.depth);
            for i in 0..s.depth {
                let stride = s.unit_stride(i);
                let m = conv_out_size(n, 3, stride, 1).unwrap_or(0);
                out.push(UnitIo {
                    stage: si,
                    index: i,
                    in_width: s.unit_in_width(stage_in, i),
                    out_width: s.width,
                    stride,
                    projection: i == 0 && s.has_projection(stage_in),
                    in_size: n,
                    out_size: m,
                    share_group: if s.unit.is_cru() {
                        groups.iter().position(|r| r.contains(&i))
                    } else {
                        None
                    },
                });
                n = m;
            }
        }
        out
    }

    /// Checks the spec for consistency. The error says what is wrong and what would be valid.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ArchError::Invalid(m));
        if self.in_channels == 0 {
            return bad("in_channels is 0; use 3 for RGB images or 1 for grayscale".into());
        }
        if self.classes == 0 {
            return bad("classes is 0; the fc head needs at least 1 class (e.g. 10 or 1000)".into());
        }
        if self.stem.width() == 0 {
            return bad(
                "stem width is 0; use a positive width such as 64 (ImageNet) or 16/64 (small)".into(),
            );
        }
        if self.stages.is_empty() {
            return bad("the network has no stages; give at least one stage".into());
        }
        if self.stages.len() > MAX_STAGES {
            return bad(format!(
                "{} stages; at most {MAX_STAGES} are supported",
                self.stages.len()
            ));
        }
        if self.input_size > MAX_INPUT {
            return bad(format!(
                "input size {} is too large; valid: 1..={MAX_INPUT}",
                self.input_size
            ));
        }
        let widths = [
            ("in_channels", self.in_channels),
            ("classes", self.classes),
            ("stem width", self.stem.width()),
        ];
        for (what, v) in widths {
            if v > MAX_WIDTH {
                return bad(format!("{what} = {v} is too large; valid: 1..={MAX_WIDTH}"));
            }
        }
        let Some(mut n) = self.stem.out_size(self.input_size).filter(|&n| n > 0) else {
            return bad(format!(
                "input size {} is too small for the {} stem",
                self.input_size,
                match self.stem {
                    Stem::Imagenet { .. } => "ImageNet (7×7/2 conv + 3×3/2 pool)",
                    Stem::Small { .. } => "small-image",
                }
            ));
        };
        // The network downsamples by the product of its strides; a smaller input would only reach
        // the deeper stages through the zero padding.
        let strides: Vec<usize> = std::iter::once(self.stem.stride())
            .chain(self.stages.iter().map(|s| s.stride.clamp(1, MAX_WIDTH)))
            .collect();
        let total = strides
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .unwrap_or(usize::MAX);
        if self.input_size < total {
            let list: Vec<String> = strides.iter().map(|s| s.to_string()).collect();
            return bad(format!(
                "input size {} is too small: the stem and stage strides ({}) reduce the input {total}-fold, so \
                 the smallest input is {total} (e.g. 28 or 32 for small images, 224 for ImageNet)",
                self.input_size,
                list.join(" · ")
            ));
        }
        for (si, s) in self.stages.iter().enumerate() {
            let name = format!("conv{} (stage {si})", si + 2);
            if s.depth == 0 {
                return bad(format!("{name}: depth is 0; every stage needs at least 1 unit"));
            }
            if s.width == 0 {
                return bad(format!("{name}: width is 0; use a positive output width"));
            }
            if s.stride == 0 {
                return bad(format!("{name}: stride is 0; use 1 (keep size) or 2 (halve)"));
            }
            if s.depth > MAX_DEPTH {
                return bad(format!(
                    "{name}: depth {} is too large; valid: 1..={MAX_DEPTH}",
                    s.depth
                ));
            }
            let (mid, groups) = (s.unit.mid(), s.unit.groups());
            for (what, v) in [
                ("width", s.width),
                ("bottleneck width (mid)", mid),
                ("stride", s.stride),
            ] {
                if v > MAX_WIDTH {
                    return bad(format!(
                        "{name}: {what} = {v} is too large; valid: 1..={MAX_WIDTH}"
                    ));
                }
            }
            if mid == 0 {
                return bad(format!(
                    "{name}: bottleneck width (mid) is 0; it must be R·d* ≥ 1"
                ));
            }
            if groups == 0 {
                return bad(format!(
                    "{name}: groups (R) is 0; use R ≥ 1 (1 = ResNet bottleneck)"
                ));
            }
            if !mid.is_multiple_of(groups) {
                return bad(format!(
                    "{name}: groups R = {groups} does not divide the bottleneck width {mid}; valid R are the \
                     divisors of {mid}: {}; or choose a width that is a multiple of {groups} (e.g. {})",
                    divisors_summary(mid),
                    mid.div_ceil(groups) * groups
                ));
            }
            if let UnitSpec::Cru { share, .. } = s.unit {
                if !self.preact {
                    return bad(format!(
                        "{name}: CRU units are pre-activation (BN-ReLU-conv) as released; set preact = true"
                    ));
                }
                if share == 0 {
                    return bad(format!(
                        "{name}: share group size is 0; use 1 ≤ share ≤ {} (the stage depth)",
                        s.depth
                    ));
                }
                if share > s.depth {
                    return bad(format!(
                        "{name}: share group size {share} is larger than the stage depth {}; use 1 ≤ share ≤ {}, \
                         or make the stage at least {share} units deep, or use a plain aggregated stage",
                        s.depth, s.depth
                    ));
                }
            }
            match s.out_size(n) {
                Some(m) if m > 0 => n = m,
                _ => {
                    return bad(format!(
                        "{name}: the feature map vanishes (input {n}×{n}, stride {}); use a larger input or \
                         stride 1",
                        s.stride
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses a JSON spec. Also accepts the document printed by `netgen emit --json`
    /// (`{"spec": {...}, "params": ..., ...}`).
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ArchError::Parse(e.to_string()))?;
        let v = match v {
            serde_json::Value::Object(mut m) if m.contains_key("spec") => {
                m.remove("spec").unwrap_or_default()
            }
            v => v,
        };
        serde_json::from_value(v).map_err(|e| ArchError::Parse(e.to_string()))
    }

    /// Parses a TOML spec (top-level keys are the fields of [`NetSpec`]; stages are `[[stages]]`
    /// tables with a `[stages.unit]` sub-table).
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| ArchError::Parse(e.to_string()))
    }

    /// Pretty JSON text of the spec.
    pub fn to_json_pretty(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| ArchError::Parse(e.to_string()))
    }

    /// TOML text of the spec.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| ArchError::Parse(e.to_string()))
    }

    /// Reads a spec file: `.toml` as TOML, anything else as JSON. Does not validate.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ArchError::Io(format!("cannot read {}: {e}", path.display())))?;
        let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        let parsed = if is_toml {
            Self::from_toml(&text)
        } else {
            Self::from_json(&text)
        };
        parsed.map_err(|e| ArchError::Parse(format!("{}: {e}", path.display())))
    }
}

/// "1, 2, 4, …" list of the divisors of `n` (at most 12 shown).
fn divisors_summary(n: usize) -> String {
    let d: Vec<usize> = (1..=n).filter(|&k| n.is_multiple_of(k)).collect();
    let shown: Vec<String> = d.iter().take(12).map(|k| k.to_string()).collect();
    if d.len() > 12 {
        format!("{}, … ({} divisors)", shown.join(", "), d.len())
    } else {
        shown.join(", ")
    }
}

impl fmt::Display for UnitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UnitSpec::Aggregated { mid, groups } => write!(f, "aggregated(mid {mid}, R {groups})"),
            UnitSpec::Cru {
                mid,
                groups,
                share,
                extra_conv,
            } => write!(
                f,
                "cru(mid {mid}, R {groups}, share {share}{})",
                if extra_conv { ", extra 1×1" } else { "" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> NetSpec {
        NetSpec {
            name: "tiny".into(),
            in_channels: 1,
            input_size: 28,
            classes: 10,
            preact: true,
            stem: Stem::Small { width: 8 },
            stages: vec![
                StageSpec {
                    depth: 2,
                    width: 16,
                    stride: 1,
                    unit: UnitSpec::Aggregated { mid: 8, groups: 2 },
                },
                StageSpec {
                    depth: 5,
                    width: 32,
                    stride: 2,
                    unit: UnitSpec::Cru {
                        mid: 12,
                        groups: 12,
                        share: 2,
                        extra_conv: true,
                    },
                },
            ],
            separate_projection_bn: true,
        }
    }

    #[test]
    fn hand_written_toml_parses() {
        let text = r#"
            name = "tiny"
            in_channels = 1
            input_size = 28
            classes = 10
            preact = true
            separate_projection_bn = true
            stem = { kind = "small", width = 8 }
            [[stages]]
            depth = 2
            width = 16
            stride = 1
            unit = { kind = "aggregated", mid = 8, groups = 2 }
            [[stages]]
            depth = 5
            width = 32
            stride = 2
            [stages.unit]
            kind = "cru"
            mid = 12
            groups = 12
            share = 2
            extra_conv = true
        "#;
        assert_eq!(NetSpec::from_toml(text).unwrap(), tiny());
        // separate_projection_bn defaults to false.
        let without = text.replace("separate_projection_bn = true", "");
        assert!(!NetSpec::from_toml(&without).unwrap().separate_projection_bn);
    }

    #[test]
    fn json_and_toml_round_trip() {
        let s = tiny();
        assert_eq!(NetSpec::from_json(&s.to_json_pretty().unwrap()).unwrap(), s);
        assert_eq!(NetSpec::from_toml(&s.to_toml().unwrap()).unwrap(), s);
        let doc = format!("{{\"spec\": {}, \"params\": 1}}", s.to_json_pretty().unwrap());
        assert_eq!(NetSpec::from_json(&doc).unwrap(), s);
        let json = s.to_json_pretty().unwrap();
        assert!(json.contains("\"kind\": \"cru\"") && json.contains("\"kind\": \"small\""));
    }

    #[test]
    fn units_widths_strides_projections_and_share_groups() {
        let s = tiny();
        let u = s.units();
        assert_eq!(u.len(), 7);
        assert_eq!((u[0].in_width, u[0].out_width, u[0].projection), (8, 16, true));
        assert_eq!((u[1].in_width, u[1].projection), (16, false));
        assert_eq!(
            (
                u[2].in_width,
                u[2].stride,
                u[2].in_size,
                u[2].out_size,
                u[2].projection
            ),
            (16, 2, 28, 14, true)
        );
        assert_eq!(
            (u[3].in_width, u[3].stride, u[3].in_size, u[3].out_size),
            (32, 1, 14, 14)
        );
        let groups: Vec<Option<usize>> = u.iter().map(|x| x.share_group).collect();
        assert_eq!(groups, [None, None, Some(0), Some(0), Some(1), Some(1), Some(2)]);
        assert_eq!(s.stages[1].unit.share_groups(5), [0..2, 2..4, 4..5]);
        assert_eq!(s.stage_in_widths(), [8, 16]);
        assert_eq!(s.stage_out_sizes(), [Some(28), Some(14)]);
        assert_eq!(Stem::Imagenet { width: 64 }.out_size(224), Some(56));
        s.validate().unwrap();
    }

    #[test]
    fn validate_rejects_with_explanations() {
        let check = |f: &dyn Fn(&mut NetSpec), needle: &str| {
            let mut s = tiny();
            f(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "expected '{needle}' in: {e}");
        };
        check(
            &|s| s.stages[0].unit = UnitSpec::Aggregated { mid: 9, groups: 2 },
            "divisors of 9: 1, 3, 9",
        );
        check(
            &|s| {
                s.stages[1].unit = UnitSpec::Cru {
                    mid: 12,
                    groups: 12,
                    share: 6,
                    extra_conv: true,
                }
            },
            "1 ≤ share ≤ 5",
        );
        check(
            &|s| {
                s.stages[1].unit = UnitSpec::Cru {
                    mid: 12,
                    groups: 12,
                    share: 0,
                    extra_conv: true,
                }
            },
            "share group size is 0",
        );
        check(&|s| s.preact = false, "preact = true");
        check(&|s| s.stages[0].width = 0, "width is 0");
        check(&|s| s.stages[0].depth = 0, "depth is 0");
        check(&|s| s.stages[0].stride = 0, "stride is 0");
        check(
            &|s| s.stages[0].unit = UnitSpec::Aggregated { mid: 0, groups: 1 },
            "mid) is 0",
        );
        check(
            &|s| s.stages[0].unit = UnitSpec::Aggregated { mid: 8, groups: 0 },
            "groups (R) is 0",
        );
        check(&|s| s.classes = 0, "classes is 0");
        check(&|s| s.in_channels = 0, "in_channels is 0");
        check(&|s| s.stem = Stem::Small { width: 0 }, "stem width is 0");
        check(&|s| s.stages.clear(), "no stages");
        check(&|s| s.input_size = 0, "too small");
        check(&|s| s.input_size = 1, "the smallest input is 2");
        check(&|s| s.stages[1].width = MAX_WIDTH + 1, "too large");
        check(&|s| s.input_size = MAX_INPUT + 1, "too large");
    }
}
