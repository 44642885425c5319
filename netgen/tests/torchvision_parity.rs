//! torchvision parity: the pinned torchvision (`.venv`) builds `resnet50` and `resnext50_32x4d`
//! with seeded random weights and random BN parameters and statistics, and exports its state dict,
//! a fixed input and its eval-mode logits as `.safetensors` (`safetensors.numpy.save_file`).
//! netgen builds the same presets, loads the state dict by name, and must reproduce the logits
//! (max abs difference < 1e-4) with exactly torchvision's number of parameters. Batch 2 at 128×128
//! (every stride and the 4×4 global pool still act; 224² triples the run time for no extra check).
use std::path::Path;

use netgen::arch::NetSpec;
use netgen::nn::{Network, load_safetensors, trainable_param_count};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Tensor};

/// Builds both torchvision models with random weights and random BN affine parameters, then makes
/// the BN running statistics realistic and input-dependent logits likely: one training-mode pass
/// with momentum 1 on a random batch sets every BN's running mean/variance to the statistics of its
/// actual input (so eval mode neither blows up nor washes the input out), and the fc weight is
/// scaled to logits of unit spread. Writes `{name}.safetensors` (state dict),
/// `{name}_io.safetensors` (a fresh input `x` and its eval-mode `logits`), and prints
/// `name param_count` lines.
const EXPORT: &str = r#"
import sys, torch, torchvision
from safetensors.numpy import save_file
out = sys.argv[1]
torch.set_num_threads(2)
for seed, name in enumerate(["resnet50", "resnext50_32x4d"]):
    torch.manual_seed(1234 + seed)
    m = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(99 + seed)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            c = bn.num_features
            bn.weight.copy_(torch.rand(c, generator=g) * 0.6 + 0.2)
            bn.bias.copy_(torch.randn(c, generator=g) * 0.2)
            bn.momentum = 1.0
        m.train()
        z = m(torch.randn(2, 3, 128, 128, generator=g)) - m.fc.bias
        m.fc.weight.div_(z.std())
        m.eval()
        m.fc.bias.copy_(torch.randn(m.fc.bias.shape, generator=g) * 0.1)
        x = torch.randn(2, 3, 128, 128, generator=g)
        y = m(x)
    save_file({k: v.contiguous().numpy() for k, v in m.state_dict().items()}, f"{out}/{name}.safetensors")
    save_file({"x": x.numpy(), "logits": y.numpy()}, f"{out}/{name}_io.safetensors")
    print(name, sum(p.numel() for p in m.parameters()))
"#;

fn preset(name: &str) -> NetSpec {
    netgen::arch::presets::preset(name, Default::default()).unwrap_or_else(|e| panic!("preset {name}: {e}"))
}

fn read_io(path: &Path) -> (Tensor, Tensor) {
    let named = Tensor::read_safetensors(path).expect("read io safetensors");
    let get = |k: &str| {
        named
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, t)| t.shallow_clone())
            .expect(k)
    };
    (get("x"), get("logits"))
}

#[test]
fn resnet50_and_resnext50_match_torchvision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_s = dir.path().to_str().expect("utf-8 tempdir");
    let report = peers::run_python(EXPORT, &[dir_s]).expect("torchvision export");
    tch::set_num_threads(2);
    let mut checked = 0;
    for line in report.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, count] = fields[..] else {
            panic!("unexpected python output {line:?}")
        };
        let tv_count: usize = count.parse().expect("parameter count");
        let vs = VarStore::new(Device::Cpu);
        let net = Network::new(&vs.root(), &preset(name)).expect("build network");
        assert_eq!(
            trainable_param_count(&vs),
            tv_count,
            "{name}: parameter count vs torchvision"
        );
        let rep = load_safetensors(&vs, &dir.path().join(format!("{name}.safetensors"))).expect("load");
        assert_eq!(rep.loaded, vs.variables().len());
        assert!(rep.skipped.iter().all(|s| s.ends_with("num_batches_tracked")));

        let (x, want) = read_io(&dir.path().join(format!("{name}_io.safetensors")));
        let got = tch::no_grad(|| net.forward_t(&x, false));
        assert_eq!(got.size(), want.size());
        let diff = (&got - &want).abs().max().double_value(&[]);
        // The logits must depend on the input for the comparison to mean anything.
        let spread = (want.get(0) - want.get(1)).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(
            spread > 0.1,
            "{name}: logits barely depend on the input (spread {spread})"
        );
        eprintln!("{name}: {tv_count} params, max |logit| {scale:.3}, max |netgen - torchvision| {diff:.3e}");
        assert!(diff < 1e-4, "{name}: max |netgen - torchvision| = {diff:e}");
        checked += 1;
    }
    assert_eq!(checked, 2, "python output:\n{report}");
}

#[test]
fn loading_reports_missing_and_mismatched_names() {
    // A state dict with a renamed and a re-shaped tensor must be refused with both names listed.
    let vs = VarStore::new(Device::Cpu);
    let _net = Network::new(&vs.root(), &preset("resnet_small")).expect("build");
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    for (n, t) in named.iter_mut() {
        if n == "layer1.0.conv1.weight" {
            *n = "layer1.0.conv_one.weight".into();
        } else if n == "fc.weight" {
            *t = Tensor::zeros([10, 128], (tch::Kind::Float, Device::Cpu));
        }
    }
    let err = netgen::nn::load::load_named(&vs, named, "test")
        .expect_err("must refuse")
        .to_string();
    assert!(
        err.contains("missing in the file: layer1.0.conv1.weight"),
        "{err}"
    );
    assert!(
        err.contains("not in the network: layer1.0.conv_one.weight"),
        "{err}"
    );
    assert!(
        err.contains("fc.weight: file [10, 128], network [10, 256]"),
        "{err}"
    );
}
