//! Table 1 of the paper, checked against independent sources:
//! - exact parameter and multiply-add counts of PyTorch rebuilds made at test time by the pinned
//!   Python peers: torchvision's own models, and models written in [`PEER`] from the
//!   architectures' descriptions (the released CRU-Nets, Table 1's ResNeXt-50 N×1d, a
//!   pre-activation ResNet-50, the small-image nets of the GBTD flags);
//! - the parameter counts 25,609,384 / 43,656,136 that the imgclsmob conversion of the released
//!   CRU-Net weights reports;
//! - the numbers printed in Table 1 (one decimal, ×10^6 / ×10^9, rounded to nearest: ResNet-50's
//!   4,089,184,256 multiply-adds print as 4.1 and CRU-Net-116's 43,656,136 parameters as 43.7,
//!   which truncation would print as 4.0 and 43.6);
//! - ResNeXt-29 on CIFAR (Xie et al. 2017, Table 7: 8×64d 34.4M, 16×64d 68.1M) for the
//!   small-image layout.
use std::collections::HashMap;
use std::sync::OnceLock;

use netgen::arch::config::{Depth, GbtdConfig};
use netgen::arch::presets::{self, PresetOptions};
use netgen::count::{Counts, count};

fn preset_counts(name: &str) -> Counts {
    let spec = presets::preset(name, PresetOptions::default()).expect("preset");
    count(&spec).expect("count")
}

/// Round to the nearest multiple of `unit` (how Table 1 prints 10^6 / 10^9 with one decimal).
fn round_to(n: u64, unit: u64) -> u64 {
    (n + unit / 2) / unit
}

/// Table 1's printed "x.y × 10^6" as tenths: 25.5 → 255.
fn printed_tenths_m(n: u64) -> u64 {
    round_to(n, 100_000)
}

/// Table 1's printed "x.y × 10^9" as tenths.
fn printed_tenths_g(n: u64) -> u64 {
    round_to(n, 100_000_000)
}

/// PyTorch rebuilds, written here from the architectures' descriptions (not from netgen's code):
/// torchvision's own models; the released CRU-Nets (pre-activation ResNeXt 32×4d units whose
/// projection has its own BN-ReLU; CRU units: BN-ReLU → 1×1 shared within a share group → 3×3
/// grouped, shared, carrying the stride → BN-ReLU → 1×1 (the extra layer) → BN-ReLU → 1×1; a first
/// unit uses one 1×1 weight twice, after two BN-ReLUs, at stride 1 for the branch input and at the
/// stage stride as the shortcut); and the small-image nets the GBTD flags describe. Shared tensors
/// are shared `nn.Parameter`s, so `model.parameters()` counts them once; multiply-adds come from
/// forward hooks on a meta tensor. Prints {name: [params, multiply-adds]}.
const PEER: &str = r#"
import json
import torch, torch.nn as nn, torch.nn.functional as F, torchvision

class SConv(nn.Module):
    # a bias-free conv over a (possibly shared) weight Parameter, with its own stride
    def __init__(self, weight, stride=1, groups=1):
        super().__init__()
        self.weight, self.stride, self.groups = weight, stride, groups
    def forward(self, x):
        return F.conv2d(x, self.weight, None, self.stride, self.weight.shape[-1] // 2, 1, self.groups)

def W(cout, cin_g, k):
    return nn.Parameter(torch.empty(cout, cin_g, k, k))

def bnrelu(c):
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())

class PostAgg(nn.Module):
    # torchvision's Bottleneck: conv-BN-ReLU ×2, conv-BN, + (BN(1x1 at the stride) or x), ReLU
    def __init__(self, cin, w, mid, groups, stride):
        super().__init__()
        self.body = nn.Sequential(SConv(W(mid, cin, 1)), bnrelu(mid), SConv(W(mid, mid // groups, 3), stride, groups),
                                  bnrelu(mid), SConv(W(w, mid, 1)), nn.BatchNorm2d(w))
        self.proj = nn.Sequential(SConv(W(w, cin, 1), stride), nn.BatchNorm2d(w)) if (stride != 1 or cin != w) else None
    def forward(self, x):
        return F.relu(self.body(x) + (self.proj(x) if self.proj is not None else x))

class PreAgg(nn.Module):
    # pre-activation unit; the projection has its own BN-ReLU (sep, the released CRU-Nets) or reads
    # the unit's first BN-ReLU output (He et al. 2016b)
    def __init__(self, cin, w, mid, groups, stride, sep):
        super().__init__()
        self.pre, self.sep = bnrelu(cin), sep
        self.body = nn.Sequential(SConv(W(mid, cin, 1)), bnrelu(mid), SConv(W(mid, mid // groups, 3), stride, groups),
                                  bnrelu(mid), SConv(W(w, mid, 1)))
        self.proj = None
        if stride != 1 or cin != w:
            conv = SConv(W(w, cin, 1), stride)
            self.proj = nn.Sequential(bnrelu(cin), conv) if sep else conv
    def forward(self, x):
        a = self.pre(x)
        if self.proj is None:
            s = x
        else:
            s = self.proj(x) if self.sep else self.proj(a)
        return self.body(a) + s

class Cru(nn.Module):
    def __init__(self, cin, w, d, groups, stride, reduce_w, core_w):
        super().__init__()
        self.has_proj = stride != 1 or cin != w
        if self.has_proj:
            wi = W(w, cin, 1)
            self.inp = nn.Sequential(bnrelu(cin), SConv(wi, 1))
            self.sc = nn.Sequential(bnrelu(cin), SConv(wi, stride))
        self.body = nn.Sequential(bnrelu(w), SConv(reduce_w), SConv(core_w, stride, groups),
                                  bnrelu(d), SConv(W(d, d, 1)), bnrelu(d), SConv(W(w, d, 1)))
    def forward(self, x):
        if self.has_proj:
            return self.body(self.inp(x)) + self.sc(x)
        return self.body(x) + x

def net(stem, in_ch, stem_w, stages, preact, classes):
    # stages: (depth, width, stride, kind, mid, groups, share); kind post | pre | pre_bn1 | cru
    if stem == "imagenet":
        layers = [nn.Conv2d(in_ch, stem_w, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_w), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    else:
        layers = [nn.Conv2d(in_ch, stem_w, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_w), nn.ReLU()]
    cin = stem_w
    for depth, w, stride, kind, mid, groups, share in stages:
        for j in range(depth):
            s = stride if j == 0 else 1
            if kind == "cru":
                if j % share == 0:  # a new shared set every `share` units
                    reduce_w, core_w = W(mid, w, 1), W(mid, mid // groups, 3)
                layers.append(Cru(cin, w, mid, groups, s, reduce_w, core_w))
            elif kind == "post":
                layers.append(PostAgg(cin, w, mid, groups, s))
            else:
                layers.append(PreAgg(cin, w, mid, groups, s, kind == "pre"))
            cin = w
    layers += ([bnrelu(cin)] if preact else []) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)

def imagenet_stages(depths, kinds, strides=(1, 2, 2, 2)):
    return [(n, 256 << s, strides[s]) + k for s, (n, k) in enumerate(zip(depths, kinds))]

def count(model, shape):
    macs = [0]
    def hook(m, inp, out):
        if isinstance(m, (nn.Conv2d, SConv)):
            k = m.weight.shape
            macs[0] += out.numel() // out.shape[0] * k[1] * k[2] * k[3]
        elif isinstance(m, nn.Linear):
            macs[0] += m.in_features * m.out_features
    for m in model.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.empty(*shape))
    return [sum(p.numel() for p in model.parameters()), macs[0]]

IMG = (1, 3, 224, 224)
x32 = lambda s: ("pre", 128 << s, 32, 0)
out = {}
with torch.device("meta"):
    for name in ["resnet50", "resnext50_32x4d", "resnet101"]:
        out[name] = count(getattr(torchvision.models, name)().eval(), IMG)
    # Table 1's ResNeXt-50 (N x 1d): torchvision's layout with bottleneck widths 136 * 2^s and every 3x3
    # depthwise (R = width, d* = 1).
    out["resnext50_nx1d"] = count(net("imagenet", 3, 64, imagenet_stages(
        [3, 4, 6, 3], [("post", 136 << s, 136 << s, 0) for s in range(4)]), False, 1000), IMG)
    # Pre-activation ResNet-50, projection from the unit's first BN-ReLU.
    out["preact_resnet50"] = count(net("imagenet", 3, 64, imagenet_stages(
        [3, 4, 6, 3], [("pre_bn1", 64 << s, 1, 0) for s in range(4)]), True, 1000), IMG)
    out["crunet56"] = count(net("imagenet", 3, 64, imagenet_stages(
        [3, 4, 6, 3], [x32(0), x32(1), ("cru", 640, 640, 6), x32(3)]), True, 1000), IMG)
    out["crunet116"] = count(net("imagenet", 3, 64, imagenet_stages(
        [3, 6, 18, 3], [x32(0), ("cru", 352, 352, 6), ("cru", 704, 704, 6), x32(3)]), True, 1000), IMG)
    # netgen --R 32 --rank 4 --share 6 --input 28: Fashion-MNIST (28x28x1, 10 classes), small-image stem
    # of 64, three CRU stages of one share group of 6 units each, widths 256 * 2^s, D = 32 * 4 * 2^s,
    # 32 groups, strides 1, 2, 2.
    out["fmnist_r32_rank4_share6"] = count(net("small", 1, 64, [
        (6, 256 << s, 1 if s == 0 else 2, "cru", 128 << s, 32, 6) for s in range(3)], True, 10), (1, 1, 28, 28))
    # crunet_small at 28x28x1 with first-stage stride 1 and 2: stem 32, widths 64/128/256,
    # pre-activation 8x4d units, CRU (D = groups = 80, share 3) in the middle stage.
    for st in (1, 2):
        out[f"crunet_small_28_s{st}"] = count(net("small", 1, 32, [
            (3, 64, st, "pre", 32, 8, 0), (3, 128, 2, "cru", 80, 80, 3), (3, 256, 2, "pre", 128, 8, 0)], True, 10),
            (1, 1, 28, 28))
    # ResNeXt-29 R x 64d on CIFAR (Xie et al. 2017): stem 64, widths 256 * 2^s, bottleneck R * 64 * 2^s.
    for r in (8, 16):
        out[f"resnext29_{r}x64d"] = count(net("small", 3, 64, [
            (3, 256 << s, 1 if s == 0 else 2, "post", r * 64 << s, r, 0) for s in range(3)], False, 10),
            (1, 3, 32, 32))
print(json.dumps(out))
"#;

/// (params, multiply-adds) of the peer models, computed once per test binary; `None` (the test
/// is then skipped, see `peers::run`) without the Python set-up.
fn peer(name: &str) -> Option<(u64, u64)> {
    static PEERS: OnceLock<Option<HashMap<String, (u64, u64)>>> = OnceLock::new();
    let map = PEERS.get_or_init(|| {
        let out = peers::run("table1 (PyTorch rebuilds)", PEER, &[])?;
        let v: HashMap<String, Vec<u64>> = serde_json::from_str(out.trim()).expect("peer JSON");
        Some(v.into_iter().map(|(k, x)| (k, (x[0], x[1]))).collect())
    });
    map.as_ref().map(|m| m[name])
}

/// netgen's (params, multiply-adds) equal the PyTorch rebuild's exactly; `false` when skipped.
fn matches_peer(name: &str, c: &Counts) -> bool {
    let Some((params, macs)) = peer(name) else {
        return false;
    };
    assert_eq!(c.params, params, "{name}: params vs the PyTorch rebuild");
    assert_eq!(
        c.flops, macs,
        "{name}: multiply-adds vs forward hooks on the PyTorch rebuild"
    );
    true
}

fn gbtd(cfg: GbtdConfig) -> Counts {
    count(&cfg.to_spec().expect("spec")).expect("count")
}

#[test]
fn torchvision_counts_exact() {
    for name in ["resnet50", "resnext50_32x4d", "resnet101"] {
        matches_peer(name, &preset_counts(name));
    }
}

#[test]
fn resnet50_table1() {
    let c = preset_counts("resnet50");
    // Table 1 prints 4.1 × 10^9 multiply-adds and 25.5 × 10^6 parameters (rounded to one decimal).
    assert_eq!(c.flops, 4_089_184_256, "torchvision's ResNet-50 (forward hooks)");
    assert_eq!(printed_tenths_g(c.flops), 41);
    // torchvision's post-activation ResNet-50 has 25,557,032 parameters, 25.6 × 10^6, one printed
    // unit above Table 1 (documented in the README) ...
    assert_eq!(c.params, 25_557_032, "torchvision's ResNet-50");
    assert_eq!(printed_tenths_m(c.params), 256);
    // ... while a pre-activation ResNet-50 (He et al. 2016b, projection from the unit's first
    // BN-ReLU) prints as 25.5; its multiply-adds are the same (BN is not counted).
    let pre = gbtd(GbtdConfig {
        r: 1,
        rank: 64,
        preact: true,
        ..Default::default()
    });
    matches_peer("preact_resnet50", &pre);
    assert_eq!(printed_tenths_m(pre.params), 255);
    assert_eq!(pre.flops, c.flops);
}

#[test]
fn resnext50_32x4d_table1() {
    let c = preset_counts("resnext50_32x4d");
    assert_eq!(
        (c.params, c.flops),
        (25_028_904, 4_230_479_872),
        "torchvision's ResNeXt-50 32×4d"
    );
    assert_eq!(printed_tenths_m(c.params), 250, "Table 1: 25.0 × 10^6");
    assert_eq!(printed_tenths_g(c.flops), 42, "Table 1: 4.2 × 10^9");
}

#[test]
fn resnext50_nx1d_table1() {
    let c = preset_counts("resnext50_nx1d");
    matches_peer("resnext50_nx1d", &c);
    assert_eq!(printed_tenths_m(c.params), 249, "Table 1: 24.9 × 10^6");
    // Table 1 prints 4.3 × 10^9; the depthwise layout has 4,245,629,888 (4.2 printed; documented
    // in the README).
    assert_eq!(c.flops, 4_245_629_888);
}

#[test]
fn crunet56_released_structure() {
    let c = preset_counts("crunet56");
    matches_peer("crunet56", &c);
    // The imgclsmob conversion of the released weights reports 25,609,384 parameters.
    assert_eq!(c.params, 25_609_384);
    // Table 1 prints 25.5 × 10^6 at width 640; the released structure prints as 25.6 — one printed
    // unit off (documented in the README; no structural variant we know reproduces 25.5).
    assert_eq!(printed_tenths_m(c.params), 256);
    // Shared tensors counted once: the 6 conv4 units would have 5 more copies of the shared 1×1
    // (1024·640) and depthwise 3×3 (640·9) if nothing were shared.
    let unshared = {
        let mut s = presets::crunet56();
        if let netgen::arch::UnitSpec::Cru { share, .. } = &mut s.stages[2].unit {
            *share = 1;
        }
        count(&s).unwrap().params
    };
    assert_eq!(unshared - c.params, 5 * (1024 * 640 + 640 * 9));
}

#[test]
fn crunet116_table1_and_released_structure() {
    let c = preset_counts("crunet116");
    matches_peer("crunet116", &c);
    assert_eq!(c.params, 43_656_136, "imgclsmob's count of the released model");
    assert_eq!(printed_tenths_m(c.params), 437, "Table 1: 43.7 × 10^6");
    // Slightly fewer parameters than ResNet-101 (Table 1 caption).
    assert!(c.params < preset_counts("resnet101").params);
}

#[test]
fn gbtd_flags_reproduce_the_released_crunets() {
    // netgen --R 32 --rank 4 --share 6 --depth 56 --cru-width 640 --groups-eq-channels
    let cfg56 = GbtdConfig {
        r: 32,
        rank: 4,
        share: Some(6),
        depth: Some(Depth::Layers(56)),
        cru_width: Some(vec![640]),
        groups_eq_channels: true,
        ..Default::default()
    };
    assert_eq!(gbtd(cfg56.clone()).params, 25_609_384);
    let cfg116 = GbtdConfig {
        depth: Some(Depth::Layers(116)),
        cru_width: Some(vec![352, 704]),
        ..cfg56
    };
    assert_eq!(gbtd(cfg116).params, 43_656_136);
    // R = 1, rank 64 is ResNet-50; R = 32, rank 4 is ResNeXt-50 32×4d (torchvision counts).
    let r50 = gbtd(GbtdConfig {
        r: 1,
        rank: 64,
        ..Default::default()
    });
    assert_eq!(r50.params, 25_557_032);
    assert_eq!(gbtd(GbtdConfig::default()).params, 25_028_904);
}

#[test]
fn the_main_fashion_mnist_configuration_matches_its_rebuild() {
    // netgen --R 32 --rank 4 --share 6 --input 28: no depth given, so 9·6 + 2 = 56 ([6, 6, 6]).
    let c = gbtd(GbtdConfig {
        share: Some(6),
        input: Some(28),
        ..Default::default()
    });
    matches_peer("fmnist_r32_rank4_share6", &c);
    assert_eq!(
        printed_tenths_m(c.params),
        77,
        "7.7 × 10^6 parameters: {}",
        c.params
    );
    assert_eq!(
        round_to(c.flops, 10_000_000),
        166,
        "1.66 × 10^9 multiply-adds: {}",
        c.flops
    );
}

#[test]
fn first_stride_2_quarters_the_cost_at_the_same_parameters() {
    let fmnist = |first_stride: usize| {
        let mut s = presets::preset(
            "crunet_small",
            PresetOptions {
                input_size: Some(28),
                in_channels: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        s.stages[0].stride = first_stride;
        count(&s).unwrap()
    };
    let (s1, s2) = (fmnist(1), fmnist(2));
    matches_peer("crunet_small_28_s1", &s1);
    matches_peer("crunet_small_28_s2", &s2);
    assert_eq!(s1.params, s2.params);
    // 59.2M → 16.5M multiply-adds per 28×28 image.
    assert_eq!(
        (printed_tenths_m(s1.flops), printed_tenths_m(s2.flops)),
        (592, 165)
    );
}

#[test]
fn small_image_layout_matches_resnext29_on_cifar() {
    // Xie et al. 2017, Table 7: ResNeXt-29 8×64d 34.4M, 16×64d 68.1M parameters (CIFAR-10). Their
    // table truncates: 34,426,698 and 68,155,210 (the PyTorch rebuilds) print as 34.4 and 68.1.
    for (r, printed) in [(8usize, 344), (16, 681)] {
        let cfg = GbtdConfig {
            r,
            rank: 64,
            input: Some(32),
            ..Default::default()
        };
        let spec = cfg.to_spec().unwrap();
        assert_eq!(spec.stages.len(), 3);
        let c = count(&spec).unwrap();
        assert_eq!(c.params / 100_000, printed, "ResNeXt-29 {r}×64d: {}", c.params);
        matches_peer(&format!("resnext29_{r}x64d"), &c);
    }
}
