//! Table 1 of the paper, checked against independent sources:
//! - the numbers PRINTED in Table 1 (later version, `shared/paper/table1-later-version.png`), to
//!   their printed rounding (round to nearest 0.1 × 10^6 / 10^9: see `paper_rounding_rule`);
//! - torchvision's own parameter counts and a forward-hook multiply-add count of torchvision's
//!   models, computed at test time by the pinned Python peers;
//! - the released CRU-Nets, rebuilt in PyTorch at test time by a script written here from
//!   design.md's description of the released models (shared tensors are shared `nn.Parameter`s,
//!   so `model.parameters()` counts them once; multiply-adds come from forward hooks on a meta
//!   tensor), and the parameter counts 25,609,384 / 43,656,136 that the imgclsmob conversion of
//!   the released weights reports;
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

fn within(value: u64, target: f64, rel: f64) -> bool {
    ((value as f64 - target) / target).abs() <= rel
}

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

class PreAgg(nn.Module):
    # pre-activation ResNeXt unit of the released CRU-Nets; the projection has its own BN-ReLU
    def __init__(self, cin, w, mid, groups, stride):
        super().__init__()
        self.body = nn.Sequential(bnrelu(cin), SConv(W(mid, cin, 1)), bnrelu(mid),
                                  SConv(W(mid, mid // groups, 3), stride, groups), bnrelu(mid), SConv(W(w, mid, 1)))
        self.proj = nn.Sequential(bnrelu(cin), SConv(W(w, cin, 1), stride)) if (stride != 1 or cin != w) else None
    def forward(self, x):
        return self.body(x) + (self.proj(x) if self.proj is not None else x)

class Cru(nn.Module):
    # CRU unit as released (design.md): shared 1x1 + depthwise 3x3 (stride here), then BN-ReLU-1x1 (extra),
    # BN-ReLU-1x1; a first unit uses one 1x1 weight twice (branch input at stride 1, shortcut at the stride)
    def __init__(self, cin, w, d, stride, reduce_w, core_w):
        super().__init__()
        self.has_proj = stride != 1 or cin != w
        if self.has_proj:
            wi = W(w, cin, 1)
            self.inp = nn.Sequential(bnrelu(cin), SConv(wi, 1))
            self.sc = nn.Sequential(bnrelu(cin), SConv(wi, stride))
        self.body = nn.Sequential(bnrelu(w), SConv(reduce_w), SConv(core_w, stride, d),
                                  bnrelu(d), SConv(W(d, d, 1)), bnrelu(d), SConv(W(w, d, 1)))
    def forward(self, x):
        if self.has_proj:
            return self.body(self.inp(x)) + self.sc(x)
        return self.body(x) + x

def crunet(depths, cru_d):
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for s, (n, d) in enumerate(zip(depths, cru_d)):
        w = 256 << s
        for j in range(n):
            stride = 2 if (j == 0 and s > 0) else 1
            if d:
                if j % 6 == 0:  # a new shared set every 6 units
                    reduce_w, core_w = W(d, w, 1), W(d, 1, 3)
                layers.append(Cru(cin, w, d, stride, reduce_w, core_w))
            else:
                layers.append(PreAgg(cin, w, 128 << s, 32, stride))
            cin = w
    layers += [bnrelu(cin), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)

def count(model):
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
        model(torch.empty(1, 3, 224, 224))
    return [sum(p.numel() for p in model.parameters()), macs[0]]

out = {}
with torch.device("meta"):
    for name in ["resnet50", "resnext50_32x4d", "resnet101"]:
        out[name] = count(getattr(torchvision.models, name)().eval())
    out["crunet56"] = count(crunet([3, 4, 6, 3], [0, 0, 640, 0]).eval())
    out["crunet116"] = count(crunet([3, 6, 18, 3], [0, 352, 704, 0]).eval())
print(json.dumps(out))
"#;

/// (params, multiply-adds) of the peer models, computed once per test binary.
fn peer(name: &str) -> (u64, u64) {
    static PEERS: OnceLock<HashMap<String, (u64, u64)>> = OnceLock::new();
    let map = PEERS.get_or_init(|| {
        let out = peers::run_python(PEER, &[]).expect("python peer (torch, torchvision) failed");
        let v: HashMap<String, Vec<u64>> = serde_json::from_str(out.trim()).expect("peer JSON");
        v.into_iter().map(|(k, x)| (k, (x[0], x[1]))).collect()
    });
    map[name]
}

#[test]
fn paper_rounding_rule_is_round_to_nearest() {
    // Table 1 prints ResNet-50's FLOPs as 4.1 × 10^9 and CRU-Net-116's parameters as 43.7 × 10^6.
    // torchvision's ResNet-50 has 4,089,184,256 multiply-adds (peer) and the released CRU-Net-116
    // 43,656,136 parameters: truncation would print 4.0 and 43.6, so the rule is rounding.
    let (_, r50_macs) = peer("resnet50");
    let (cru116_params, _) = peer("crunet116");
    assert_eq!(printed_tenths_g(r50_macs), 41);
    assert_eq!(
        r50_macs / 100_000_000,
        40,
        "truncation would not give the printed 4.1"
    );
    assert_eq!(printed_tenths_m(cru116_params), 437);
    assert_eq!(
        cru116_params / 100_000,
        436,
        "truncation would not give the printed 43.7"
    );
}

#[test]
fn torchvision_parameter_counts_exact() {
    for name in ["resnet50", "resnext50_32x4d", "resnet101"] {
        assert_eq!(
            preset_counts(name).params,
            peer(name).0,
            "{name} params vs torchvision"
        );
    }
    // The counts quoted in design.md.
    assert_eq!(preset_counts("resnet50").params, 25_557_032);
    assert_eq!(preset_counts("resnext50_32x4d").params, 25_028_904);
}

#[test]
fn torchvision_multiply_adds_exact() {
    for name in ["resnet50", "resnext50_32x4d", "resnet101"] {
        assert_eq!(
            preset_counts(name).flops,
            peer(name).1,
            "{name} multiply-adds vs forward hooks"
        );
    }
}

#[test]
fn resnet50_table1() {
    let c = preset_counts("resnet50");
    // FLOPs: 4.1 × 10^9, within 5% and to the printed rounding.
    assert!(within(c.flops, 4.1e9, 0.05), "{}", c.flops);
    assert_eq!(printed_tenths_g(c.flops), 41);
    // Params: torchvision's post-activation ResNet-50 has 25,557,032 → 25.6 under the paper's rule,
    // one printed unit above Table 1's 25.5 (documented in the README).
    assert_eq!(printed_tenths_m(c.params), 256);
    assert!(c.params.abs_diff(25_500_000) < 100_000);
    // A pre-activation ResNet-50 (He et al. 2016b, projection from the unit's first BN-ReLU) has
    // 25,549,480 and prints as 25.5 under the same rule; FLOPs are unchanged (BN is not counted).
    let pre = GbtdConfig {
        r: 1,
        rank: 64,
        preact: true,
        ..Default::default()
    }
    .to_spec()
    .unwrap();
    let p = count(&pre).unwrap();
    assert_eq!(printed_tenths_m(p.params), 255);
    assert_eq!(p.flops, c.flops);
}

#[test]
fn resnext50_32x4d_table1() {
    let c = preset_counts("resnext50_32x4d");
    assert_eq!(printed_tenths_m(c.params), 250, "25.0 × 10^6: {}", c.params);
    assert!(within(c.flops, 4.2e9, 0.05), "{}", c.flops);
    assert_eq!(printed_tenths_g(c.flops), 42);
}

#[test]
fn resnext50_nx1d_table1() {
    let c = preset_counts("resnext50_nx1d");
    assert_eq!(printed_tenths_m(c.params), 249, "24.9 × 10^6: {}", c.params);
    // 4.3 × 10^9 within 5% (ours: 4.25 × 10^9, 1.3% below; documented in the README).
    assert!(within(c.flops, 4.3e9, 0.05), "{}", c.flops);
}

#[test]
fn crunet56_released_structure() {
    let c = preset_counts("crunet56");
    let (params, macs) = peer("crunet56");
    assert_eq!(
        c.params, params,
        "params vs the PyTorch rebuild of the released model"
    );
    assert_eq!(
        c.flops, macs,
        "multiply-adds vs forward hooks on the PyTorch rebuild"
    );
    // The imgclsmob conversion of the released weights reports 25,609,384 parameters.
    assert_eq!(c.params, 25_609_384);
    // Table 1 prints 25.5 × 10^6 at width 640; the released structure rounds to 25.6 — one printed
    // unit off (documented in the README; no structural variant we know reproduces 25.5).
    assert!(c.params.abs_diff(25_500_000) < 110_000);
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
    assert_eq!(printed_tenths_m(c.params), 437, "43.7 × 10^6: {}", c.params);
    let (params, macs) = peer("crunet116");
    assert_eq!(
        c.params, params,
        "params vs the PyTorch rebuild of the released model"
    );
    assert_eq!(
        c.flops, macs,
        "multiply-adds vs forward hooks on the PyTorch rebuild"
    );
    assert_eq!(c.params, 43_656_136, "imgclsmob's count of the released model");
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
    assert_eq!(count(&cfg56.to_spec().unwrap()).unwrap().params, 25_609_384);
    let cfg116 = GbtdConfig {
        depth: Some(Depth::Layers(116)),
        cru_width: Some(vec![352, 704]),
        ..cfg56.clone()
    };
    assert_eq!(count(&cfg116.to_spec().unwrap()).unwrap().params, 43_656_136);
    // R = 1, rank 64 is ResNet-50; R = 32, rank 4 is ResNeXt-50 32×4d (torchvision counts).
    let r50 = GbtdConfig {
        r: 1,
        rank: 64,
        ..Default::default()
    }
    .to_spec()
    .unwrap();
    assert_eq!(count(&r50).unwrap().params, 25_557_032);
    let rx50 = GbtdConfig::default().to_spec().unwrap();
    assert_eq!(count(&rx50).unwrap().params, 25_028_904);
}

#[test]
fn small_image_layout_matches_resnext29_on_cifar() {
    // Xie et al. 2017, Table 7: ResNeXt-29 8×64d 34.4M, 16×64d 68.1M parameters (CIFAR-10).
    for (r, printed) in [(8usize, 34.4e6), (16, 68.1e6)] {
        let cfg = GbtdConfig {
            r,
            rank: 64,
            input: Some(32),
            ..Default::default()
        };
        let spec = cfg.to_spec().unwrap();
        assert_eq!(spec.stages.len(), 3);
        let p = count(&spec).unwrap().params;
        assert!(
            (p as f64 - printed).abs() < 0.1e6,
            "ResNeXt-29 {r}×64d: {p} vs {printed}"
        );
    }
}
