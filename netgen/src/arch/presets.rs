//! Named architectures: the torchvision ResNet / ResNeXt baselines, the Table 1 columns of the
//! paper, the released CRU-Nets, and small-image (28×28 / 32×32) variants of each family.
//!
//! | preset | layout | source |
//! |---|---|---|
//! | `resnet50` | post-act, `[3,4,6,3]`, mid 64·2^s, R = 1 | torchvision `resnet50` (v1.5) |
//! | `resnext50_32x4d` | post-act, `[3,4,6,3]`, mid 128·2^s, R = 32 | torchvision `resnext50_32x4d` |
//! | `resnet101` | post-act, `[3,4,23,3]`, mid 64·2^s, R = 1 | torchvision `resnet101` |
//! | `resnext50_nx1d` | post-act, `[3,4,6,3]`, mid 136·2^s, R = mid (d* = 1) | Table 1, "ResNeXt-50 (N×1d)" |
//! | `crunet56` | pre-act, `[3,4,6,3]`, CRU at conv4 (D = R = 640, share 6) | released CRU-Net-56 |
//! | `crunet116` | pre-act, `[3,6,18,3]`, CRU at conv3 (D = R = 352, share 6) and conv4 (D = R = 704, share 6) | released CRU-Net-116 |
//! | `resnet_small` | post-act CIFAR bottleneck ResNet-29: stem 3×3 16, widths 64/128/256, mid 16·2^s, R = 1 | He et al. CIFAR layout |
//! | `resnext29_small` | post-act ResNeXt-29 layout at reduced width: stem 3×3 32, widths 64/128/256, R = 8, d* = 4 | Xie et al. CIFAR layout |
//! | `crunet_small` | pre-act `resnext29_small` with CRU at the middle stage (D = R = 80, share 3) | CRU-Net "@" second-to-last stage, as CRU-Net-56 |
//!
//! The small presets default to 32×32 RGB input and 10 classes; use [`PresetOptions`] (the CLI's
//! `--input`, `--classes`, `--in-channels`) to adapt them, e.g. to 28×28 grayscale Fashion-MNIST.
use super::spec::{ArchError, NetSpec, Result, StageSpec, Stem, UnitSpec};

/// Overrides applied to a preset (`None` keeps the preset's value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresetOptions {
    /// Number of classes of the fc head.
    pub classes: Option<usize>,
    /// Input height = width.
    pub input_size: Option<usize>,
    /// Input channels.
    pub in_channels: Option<usize>,
}

/// One preset: its name, a one-line description, and its builder.
pub struct Preset {
    /// Name used by `--preset`.
    pub name: &'static str,
    /// One-line description.
    pub about: &'static str,
    build: fn() -> NetSpec,
}

impl Preset {
    /// The preset's spec with its default input size, channels and classes.
    pub fn spec(&self) -> NetSpec {
        (self.build)()
    }
}

/// All presets, in display order.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "resnet50",
        about: "ResNet-50, torchvision v1.5 (post-activation), R = 1",
        build: resnet50,
    },
    Preset {
        name: "resnext50_32x4d",
        about: "ResNeXt-50 32×4d, torchvision (post-activation), R = 32, d* = 4",
        build: resnext50_32x4d,
    },
    Preset {
        name: "resnet101",
        about: "ResNet-101, torchvision v1.5 (post-activation), R = 1",
        build: resnet101,
    },
    Preset {
        name: "resnext50_nx1d",
        about: "ResNeXt-50 N×1d of Table 1: R = bottleneck width (136/272/544/1088), d* = 1",
        build: resnext50_nx1d,
    },
    Preset {
        name: "crunet56",
        about: "CRU-Net-56 (32×4d @×14) as released: pre-act, CRU at conv4, D = R = 640, share 6",
        build: crunet56,
    },
    Preset {
        name: "crunet116",
        about: "CRU-Net-116 (32×4d @×28×14) as released: CRU at conv3 (D = 352) and conv4 (D = 704), share 6",
        build: crunet116,
    },
    Preset {
        name: "resnet_small",
        about: "CIFAR bottleneck ResNet-29 (stem 16, widths 64/128/256, R = 1), 32×32, 10 classes",
        build: resnet_small,
    },
    Preset {
        name: "resnext29_small",
        about: "ResNeXt-29 layout at reduced width (stem 32, widths 64/128/256, 8×4d), 32×32, 10 classes",
        build: resnext29_small,
    },
    Preset {
        name: "crunet_small",
        about: "pre-act resnext29_small with CRU at the middle stage (D = R = 80, share 3), 32×32, 10 classes",
        build: crunet_small,
    },
];

/// Names of all presets.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Builds preset `name` with the given overrides, and validates it.
pub fn preset(name: &str, opts: PresetOptions) -> Result<NetSpec> {
    let p = PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        ArchError::Invalid(format!(
            "unknown preset '{name}'; valid presets: {}",
            names().join(", ")
        ))
    })?;
    let mut spec = p.spec();
    if let Some(c) = opts.classes {
        spec.classes = c;
    }
    if let Some(n) = opts.input_size {
        spec.input_size = n;
    }
    if let Some(c) = opts.in_channels {
        spec.in_channels = c;
    }
    spec.validate()?;
    Ok(spec)
}

/// Four ImageNet stages (conv2..conv5) of widths 256·2^s, strides 1,2,2,2, after a 7×7/2 stem of 64.
fn imagenet(name: &str, preact: bool, depths: [usize; 4], units: [UnitSpec; 4]) -> NetSpec {
    let stages = depths
        .into_iter()
        .zip(units)
        .enumerate()
        .map(|(s, (depth, unit))| StageSpec {
            depth,
            width: 256 << s,
            stride: if s == 0 { 1 } else { 2 },
            unit,
        })
        .collect();
    NetSpec {
        name: name.into(),
        in_channels: 3,
        input_size: 224,
        classes: 1000,
        preact,
        stem: Stem::Imagenet { width: 64 },
        stages,
        separate_projection_bn: preact,
    }
}

/// Three small-image stages of widths `widths`, strides 1,2,2, after a 3×3/1 stem.
fn small(name: &str, preact: bool, stem: usize, widths: [usize; 3], units: [UnitSpec; 3]) -> NetSpec {
    let stages = widths
        .into_iter()
        .zip(units)
        .enumerate()
        .map(|(s, (width, unit))| StageSpec {
            depth: 3,
            width,
            stride: if s == 0 { 1 } else { 2 },
            unit,
        })
        .collect();
    NetSpec {
        name: name.into(),
        in_channels: 3,
        input_size: 32,
        classes: 10,
        preact,
        stem: Stem::Small { width: stem },
        stages,
        separate_projection_bn: preact,
    }
}

fn agg(mid: usize, groups: usize) -> UnitSpec {
    UnitSpec::Aggregated { mid, groups }
}

fn cru(d: usize, share: usize) -> UnitSpec {
    UnitSpec::Cru {
        mid: d,
        groups: d,
        share,
        extra_conv: true,
    }
}

/// torchvision `resnet50`.
pub fn resnet50() -> NetSpec {
    imagenet(
        "resnet50",
        false,
        [3, 4, 6, 3],
        [agg(64, 1), agg(128, 1), agg(256, 1), agg(512, 1)],
    )
}

/// torchvision `resnext50_32x4d`.
pub fn resnext50_32x4d() -> NetSpec {
    imagenet(
        "resnext50_32x4d",
        false,
        [3, 4, 6, 3],
        [agg(128, 32), agg(256, 32), agg(512, 32), agg(1024, 32)],
    )
}

/// torchvision `resnet101`.
pub fn resnet101() -> NetSpec {
    imagenet(
        "resnet101",
        false,
        [3, 4, 23, 3],
        [agg(64, 1), agg(128, 1), agg(256, 1), agg(512, 1)],
    )
}

/// Table 1 "ResNeXt-50 (N×1d)": every 3×3 is depthwise (R = width, d* = 1).
pub fn resnext50_nx1d() -> NetSpec {
    imagenet(
        "resnext50_nx1d",
        false,
        [3, 4, 6, 3],
        [agg(136, 136), agg(272, 272), agg(544, 544), agg(1088, 1088)],
    )
}

/// Released CRU-Net-56: pre-activation ResNeXt 32×4d with CRU at conv4 (D = groups = 640, all 6
/// units share one set of factors).
pub fn crunet56() -> NetSpec {
    imagenet(
        "crunet56",
        true,
        [3, 4, 6, 3],
        [agg(128, 32), agg(256, 32), cru(640, 6), agg(1024, 32)],
    )
}

/// Released CRU-Net-116: CRU at conv3 (D = 352, one set for its 6 units) and conv4 (D = 704, a new
/// set every 6 units: 3 sets).
pub fn crunet116() -> NetSpec {
    imagenet(
        "crunet116",
        true,
        [3, 6, 18, 3],
        [agg(128, 32), cru(352, 6), cru(704, 6), agg(1024, 32)],
    )
}

/// CIFAR bottleneck ResNet-29 (9 units, He et al.'s CIFAR widths 16/64/128/256).
pub fn resnet_small() -> NetSpec {
    small(
        "resnet_small",
        false,
        16,
        [64, 128, 256],
        [agg(16, 1), agg(32, 1), agg(64, 1)],
    )
}

/// ResNeXt-29 layout (3 stages × 3 units) at reduced width, 8×4d.
pub fn resnext29_small() -> NetSpec {
    small(
        "resnext29_small",
        false,
        32,
        [64, 128, 256],
        [agg(32, 8), agg(64, 8), agg(128, 8)],
    )
}

/// Pre-activation `resnext29_small` with CRU at the middle stage: D = groups = 80 (1.25× the
/// aggregated width, as CRU-Net-56's 640 vs 512), all 3 units share.
pub fn crunet_small() -> NetSpec {
    small(
        "crunet_small",
        true,
        32,
        [64, 128, 256],
        [agg(32, 8), cru(80, 3), agg(128, 8)],
    )
}
