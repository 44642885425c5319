//! A netgen training run's `best.safetensors` is a torchvision state dict: after 3 steps of the
//! `resnet50` preset (10 classes, 3×32×32 synthetic images, so every BN has moved off its
//! initial statistics), torchvision's `resnet50(num_classes=10)` loads the file with nothing
//! unexpected and at most the BN `num_batches_tracked` counters missing, and its eval-mode logits on a fresh input equal netgen's.
use netgen::arch::presets::{PresetOptions, preset};
use netgen::nn::{Network, load_safetensors};
use netgen::train::trainer::{Outcome, RunOptions, train};
use netgen::train::{InMemoryData, Recipe, RecipeKind, TrainConfig};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

const CHECK: &str = r#"
import sys, torch, torchvision
from safetensors.numpy import load_file as load_np
def load_file(p):
    return {k: torch.from_numpy(v) for k, v in load_np(p).items()}
best, io = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
m = torchvision.models.resnet50(num_classes=10)
missing, unexpected = m.load_state_dict(load_file(best), strict=False)
assert not unexpected, unexpected
assert all(k.endswith("num_batches_tracked") for k in missing), missing
d = load_file(io)
m.eval()
with torch.no_grad():
    y = m(d["x"])
scale = d["logits"].abs().max().item()
print(len(missing), (y - d["logits"]).abs().max().item(), scale)
"#;

#[test]
fn torchvision_loads_best_safetensors_and_gives_netgens_logits() {
    if !peers::available("torchvision_loads_best_safetensors_and_gives_netgens_logits") {
        return;
    }
    tch::set_num_threads(2);
    let spec = preset(
        "resnet50",
        PresetOptions {
            classes: Some(10),
            input_size: Some(32),
            in_channels: Some(3),
        },
    )
    .unwrap();
    let data = InMemoryData::synthetic(12, 4, 10, 3, 32, 1.0, 5);
    let recipe = Recipe::defaults(RecipeKind::Modern, 50, 4);
    let cfg = TrainConfig {
        data: "synthetic".into(),
        augment: false,
        workers: 0,
        batch_size: 4,
        eval_batch_size: 4,
        recipe,
        epochs: None,
        max_steps: Some(3),
        budget_seconds: None,
        seed: 1,
        threads: 2,
        device: "cpu".into(),
        amp: false,
        channels_last: false,
        eval_samples: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let s = train(&spec, &cfg, &data, &RunOptions::new(dir.path(), Device::Cpu)).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    let best = dir.path().join("best.safetensors");
    // netgen's own logits from the file, on an input torchvision has not seen.
    let vs = VarStore::new(Device::Cpu);
    let net = Network::new(&vs.root(), &spec).unwrap();
    load_safetensors(&vs, &best).unwrap();
    tch::manual_seed(77);
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let logits = tch::no_grad(|| net.forward_t(&x, false));
    let io = dir.path().join("io.safetensors");
    Tensor::write_safetensors(&[("x", &x), ("logits", &logits)], &io).unwrap();
    let out =
        peers::run_python(CHECK, &[best.to_str().unwrap(), io.to_str().unwrap()]).expect("torchvision check");
    let f: Vec<f64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let (missing, diff, scale) = (f[0], f[1], f[2]);
    // Only BN step counters may be missing (the Python side asserts it); at most one per BN
    // layer (ResNet-50 has 53).
    assert!(missing <= 53.0);
    assert!(scale > 1e-3, "degenerate logits");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "torchvision logits differ by {diff} (scale {scale})"
    );
}
