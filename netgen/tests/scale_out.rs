//! Scale-out training: `netgen_torch.train` under `torchrun` (PyTorch DDP, gloo on the CPU) against
//! one process and against a training loop written out in the test, and the run directory shared
//! with `netgen train` / `netgen eval` in both directions.
//!
//! * DDP equivalence: two gloo processes at global batch B take the same steps as one process at
//!   batch B (same seed and data order; BatchNorm frozen, since PyTorch's SyncBatchNorm has no CPU
//!   version): weights and momentum within 1e-5. The one-process run in turn matches a plain
//!   PyTorch loop (hand-written learning-rate formula, two SGD parameter groups) within 1e-5, and
//!   per-process BN statistics (no `--frozen-bn`) do differ, so the comparison can fail.
//! * A run stopped and resumed ends with the uninterrupted run's weights (bit for bit).
//! * Round trip: `netgen train` stops after a few steps → `torchrun … --resume` continues it (and
//!   matches the plain loop started from netgen's weights and momentum buffers) →
//!   `netgen eval --run` and `python -m netgen_torch.eval --run` give the same test loss; and the
//!   other way: a torchrun run stopped early is resumed by `netgen train --resume`.
//!
//! Tiny networks, a few steps, one thread per process: the suite runs in CI on two cores.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../python")
}

/// The venv's Python with the repository's `python/` on the path, one thread per process.
fn python(args: &[&str]) -> Output {
    let py = peers::python().expect("python");
    Command::new(py)
        .args(args)
        .env("PYTHONPATH", python_dir())
        .env("OMP_NUM_THREADS", "1")
        .env("TORCHELASTIC_ERROR_FILE", "/dev/null")
        .output()
        .expect("start python")
}

fn netgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netgen"))
        .args(args)
        .output()
        .expect("start netgen")
}

fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `torchrun --standalone --nproc_per_node=N -m netgen_torch.train ARGS`.
fn torchrun(n: usize, args: &[&str]) -> Output {
    let nproc = format!("--nproc_per_node={n}");
    let mut v = vec![
        "-m",
        "torch.distributed.run",
        "--standalone",
        nproc.as_str(),
        "-m",
        "netgen_torch.train",
    ];
    v.extend_from_slice(args);
    python(&v)
}

/// A tiny CRU-Net for 28×28 Fashion-MNIST (share groups of 2 in every stage), as `spec.json`.
fn tiny_spec(dir: &Path) -> PathBuf {
    let out = ok(
        "netgen emit",
        &netgen(&[
            "emit",
            "--R",
            "2",
            "--rank",
            "2",
            "--share",
            "2",
            "--depth",
            "2,2,2",
            "--widths",
            "16,32,64",
            "--stem-width",
            "8",
            "--input",
            "28",
            "--in-channels",
            "1",
            "--first-stride",
            "2",
            "--json",
        ]),
    );
    let p = dir.join("spec.json");
    std::fs::write(&p, out).expect("write spec");
    p
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn have_fashion_mnist() -> bool {
    let ok = Path::new(netgen::data::FASHION_MNIST_DIR).is_dir();
    if !ok {
        eprintln!(
            "SKIPPED: {} is missing (scripts/setup.sh installs it)",
            netgen::data::FASHION_MNIST_DIR
        );
    }
    ok
}

/// Max |a − b| over the tensors of two safetensors files (same names required), except the `meta.*`
/// loop scalars (wall-clock seconds among them); written with the `safetensors` package only.
const MAX_DIFF: &str = r#"
import sys
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
a = {k: v for k, v in a.items() if not k.startswith("meta.")}
print(max((a[k].double() - b[k].double()).abs().max().item() for k in a))
"#;

fn max_diff(a: &Path, b: &Path) -> f64 {
    let out = peers::run_python(MAX_DIFF, &[a.to_str().unwrap(), b.to_str().unwrap()]).expect("compare");
    out.trim().parse().expect("a number")
}

/// The reference loop: `from_spec` with the same seed, or the weights and momentum buffers of a
/// checkpoint (`momentum.<name>`, as netgen writes them) when `start > 0`; the same batches (the
/// data order is the data module's); then SGD written out here: base rate 0.1 · B / 128, warm-up
/// over ⌈3% · T⌉ steps then half-cosine, Nesterov momentum 0.9, weight decay 5e-4 on ≥ 2-D tensors
/// only, BN frozen. Arguments: spec out total batch seed start [weights state [zero-momentum]].
const REFERENCE: &str = r#"
import json, math, sys, torch, torch.nn.functional as F
from safetensors.torch import load_file, save_file
from netgen_torch import from_spec
from netgen_torch.data import open_data, EpochBatches
spec_path, out = sys.argv[1], sys.argv[2]
total, batch, seed, start = map(int, sys.argv[3:7])
torch.set_num_threads(1)
spec = json.load(open(spec_path))["spec"]
torch.manual_seed(seed)
m = from_spec(spec)
named = {n: p for n, p in m.state_dict(keep_vars=True).items() if isinstance(p, torch.nn.Parameter)}
bufs = {n: None for n in named}
if start > 0:
    m.load_state_dict(load_file(sys.argv[7]))
    state = load_file(sys.argv[8])
    assert int(state["meta.step"][0]) == start
    bufs = {n: state["momentum." + n].clone() for n in named}
    if len(sys.argv) > 9:
        bufs = {n: torch.zeros_like(b) for n, b in bufs.items()}
data = open_data("fashion-mnist", input_size=28, augment=True)
lr0, w = 0.1 * batch / 128, math.ceil(0.03 * total)
m.train()
for mod in m.modules():
    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
        mod.eval()
assert total <= data.info.train_len // batch
it = iter(EpochBatches(data, 0, seed, batch, 1, 0, start))
for t in range(start, total):
    lr = lr0 * (t + 1) / w if t < w else lr0 * 0.5 * (1 + math.cos(math.pi * (t - w) / max(total - w, 1)))
    x, y = next(it)
    for p in named.values():
        p.grad = None
    F.cross_entropy(m(x), y).backward()
    with torch.no_grad():
        for n, p in named.items():
            g = p.grad + (5e-4 * p if p.dim() >= 2 else 0)
            b = g.clone() if bufs[n] is None else 0.9 * bufs[n] + g
            bufs[n] = b
            p -= lr * (g + 0.9 * b)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, out)
"#;

#[test]
fn torchrun_two_gloo_processes_equal_one_process_and_a_plain_loop() {
    if !peers::available("torchrun_two_gloo_processes_equal_one_process_and_a_plain_loop")
        || !have_fashion_mnist()
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = tiny_spec(dir.path());
    let spec_s = spec.to_str().unwrap();
    let run = |name: &str| dir.path().join(name);
    let (one, two, two_bn, reference) = (
        run("one"),
        run("two"),
        run("two_bn"),
        run("reference.safetensors"),
    );
    let common = |out: &Path| -> Vec<String> {
        [
            "--spec",
            spec_s,
            "--max-steps",
            "4",
            "--batch-size",
            "32",
            "--eval-samples",
            "64",
            "--threads",
            "1",
            "--workers",
            "0",
            "--seed",
            "3",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = |out: &Path, frozen: bool| {
        let mut v = common(out);
        if frozen {
            v.push("--frozen-bn".into());
        }
        v
    };
    let a2 = args(&two, true);
    ok("torchrun 2 processes", &torchrun(2, &refs(&a2)));
    let a1 = args(&one, true);
    let mut v = vec!["-m", "netgen_torch.train"];
    v.extend(refs(&a1));
    ok("one process", &python(&v));
    let d = max_diff(&one.join("last.safetensors"), &two.join("last.safetensors"));
    assert!(d < 1e-5, "2 processes vs 1: weights differ by {d}");
    let d = max_diff(&one.join("state.safetensors"), &two.join("state.safetensors"));
    assert!(d < 1e-5, "2 processes vs 1: momentum/state differ by {d}");
    // The comparison sees BN: per-process batch statistics make the two runs differ.
    let a3 = args(&two_bn, false);
    ok("torchrun 2 processes, per-process BN", &torchrun(2, &refs(&a3)));
    let d = max_diff(&one.join("last.safetensors"), &two_bn.join("last.safetensors"));
    assert!(
        d > 1e-3,
        "per-process BN statistics should change the weights, got {d}"
    );
    // The one-process run is the plain loop.
    ok(
        "reference loop",
        &python(&[
            "-c",
            REFERENCE,
            spec_s,
            reference.to_str().unwrap(),
            "4",
            "32",
            "3",
            "0",
        ]),
    );
    let d = max_diff(&one.join("last.safetensors"), &reference);
    assert!(d < 1e-5, "trainer vs the plain loop: {d}");
    // Stopped after 2 steps and resumed: the uninterrupted run's weights, exactly.
    let half = run("half");
    let mut a = args(&half, true);
    a.extend(["--stop-after-steps".to_string(), "2".to_string()]);
    let mut v = vec!["-m", "netgen_torch.train"];
    v.extend(refs(&a));
    ok("one process, stopped", &python(&v));
    let half_s = half.to_str().unwrap();
    ok(
        "one process, resumed",
        &python(&[
            "-m",
            "netgen_torch.train",
            "--resume",
            half_s,
            "--threads",
            "1",
            "--workers",
            "0",
            "--frozen-bn",
            "--quiet",
        ]),
    );
    assert_eq!(
        max_diff(&one.join("last.safetensors"), &half.join("last.safetensors")),
        0.0
    );
}

/// `netgen eval --run DIR --json` and `python -m netgen_torch.eval --run DIR --json`: (loss, top-1, samples).
fn evals(dir: &Path) -> [(f64, f64, u64); 2] {
    let d = dir.to_str().unwrap();
    let parse = |s: String| {
        let v: serde_json::Value = serde_json::from_str(&s).expect("eval json");
        (
            v["loss"].as_f64().expect("loss"),
            v["top1"].as_f64().expect("top1"),
            v["samples"].as_u64().expect("samples"),
        )
    };
    let n = parse(ok(
        "netgen eval",
        &netgen(&["eval", "--run", d, "--json", "--threads", "1", "--device", "cpu"]),
    ));
    let p = parse(ok(
        "python eval",
        &python(&["-m", "netgen_torch.eval", "--run", d, "--json", "--threads", "1"]),
    ));
    [n, p]
}

fn state_step(dir: &Path) -> u64 {
    let out = peers::run_python(
        "import sys; from safetensors.torch import load_file; print(int(load_file(sys.argv[1])['meta.step'][0]))",
        &[dir.join("state.safetensors").to_str().unwrap()],
    )
    .expect("read state");
    out.trim().parse().unwrap()
}

#[test]
fn netgen_and_torchrun_resume_each_other_and_evaluate_each_others_runs() {
    if !peers::available("netgen_and_torchrun_resume_each_other_and_evaluate_each_others_runs")
        || !have_fashion_mnist()
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = tiny_spec(dir.path());
    let spec_s = spec.to_str().unwrap();
    // netgen → torchrun → netgen eval.
    let a = dir.path().join("a");
    let a_s = a.to_str().unwrap();
    ok(
        "netgen train",
        &netgen(&[
            "train",
            "--spec",
            spec_s,
            "--max-steps",
            "6",
            "--stop-after-steps",
            "3",
            "--batch-size",
            "16",
            "--eval-samples",
            "64",
            "--threads",
            "1",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            a_s,
        ]),
    );
    assert_eq!(state_step(&a), 3);
    let (w3, s3) = (
        dir.path().join("w3.safetensors"),
        dir.path().join("s3.safetensors"),
    );
    std::fs::copy(a.join("last.safetensors"), &w3).expect("copy");
    std::fs::copy(a.join("state.safetensors"), &s3).expect("copy");
    ok(
        "torchrun --resume (netgen's run)",
        &torchrun(
            2,
            &[
                "--resume",
                a_s,
                "--threads",
                "1",
                "--workers",
                "0",
                "--frozen-bn",
                "--quiet",
            ],
        ),
    );
    // Steps 4–6 from netgen's weights and momentum buffers, by the plain loop: the same weights; with
    // the buffers zeroed instead, other weights (so netgen's momentum was read and used).
    let (r, r0) = (
        dir.path().join("r.safetensors"),
        dir.path().join("r0.safetensors"),
    );
    let (w3s, s3s) = (w3.to_str().unwrap(), s3.to_str().unwrap());
    ok(
        "reference from netgen's step 3",
        &python(&[
            "-c",
            REFERENCE,
            spec_s,
            r.to_str().unwrap(),
            "6",
            "16",
            "0",
            "3",
            w3s,
            s3s,
        ]),
    );
    ok(
        "reference from netgen's step 3 without momentum",
        &python(&[
            "-c",
            REFERENCE,
            spec_s,
            r0.to_str().unwrap(),
            "6",
            "16",
            "0",
            "3",
            w3s,
            s3s,
            "zero",
        ]),
    );
    let d = max_diff(&a.join("last.safetensors"), &r);
    assert!(d < 1e-5, "torchrun resuming netgen's run vs the plain loop: {d}");
    let d0 = max_diff(&a.join("last.safetensors"), &r0);
    assert!(d0 > 1e-5, "netgen's momentum buffers should matter, got {d0}");
    assert_eq!(state_step(&a), 6);
    let rows = std::fs::read_to_string(a.join("metrics.csv")).expect("metrics");
    let last = rows.lines().last().expect("a row");
    assert!(last.starts_with("6,"), "last metrics row {last:?}");
    let [n, p] = evals(&a);
    assert_eq!((n.2, p.2), (64, 64));
    assert!(
        (n.0 - p.0).abs() < 1e-4 && (n.1 - p.1).abs() < 1e-9,
        "netgen eval {n:?} vs python eval {p:?}"
    );
    // torchrun → netgen → both evaluations.
    let b = dir.path().join("b");
    let b_s = b.to_str().unwrap();
    ok(
        "torchrun train",
        &torchrun(
            2,
            &[
                "--spec",
                spec_s,
                "--max-steps",
                "4",
                "--stop-after-steps",
                "2",
                "--batch-size",
                "16",
                "--eval-samples",
                "64",
                "--threads",
                "1",
                "--workers",
                "0",
                "--quiet",
                "--out",
                b_s,
            ],
        ),
    );
    assert_eq!(state_step(&b), 2);
    ok(
        "netgen train --resume (torchrun's run)",
        &netgen(&[
            "train",
            "--resume",
            b_s,
            "--threads",
            "1",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ]),
    );
    assert_eq!(state_step(&b), 4);
    let [n, p] = evals(&b);
    assert!(
        (n.0 - p.0).abs() < 1e-4 && (n.1 - p.1).abs() < 1e-9,
        "netgen eval {n:?} vs python eval {p:?}"
    );
}

#[test]
fn bad_input_is_one_error_line_and_no_run_directory() {
    if !peers::available("bad_input_is_one_error_line_and_no_run_directory") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("r");
    let o = python(&[
        "-m",
        "netgen_torch.train",
        "--spec",
        dir.path().join("missing.json").to_str().unwrap(),
        "--max-steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.trim().lines().count() == 1 && err.contains("error:"), "{err}");
    assert!(!out.exists());
    let o = python(&["-m", "netgen_torch.eval", "--run", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("netgen run directory"));
}
