//! `netgen train` / `netgen eval` end to end, on a tiny MNIST-format data set written by the test
//! (plain IDX files: 10 classes, class k = pixels uniform in 20k..20k+59) and a tiny
//! network given as a spec file, one thread each, so every run takes a few seconds:
//! - a run's `--json` summary, run directory and `netgen eval --run` agree (eval reproduces the
//!   reported best accuracy exactly);
//! - `--stop-after-steps` then `--resume` ends with the same weights as the uninterrupted run;
//! - Ctrl-C (SIGINT) saves a checkpoint and exits with 130; the run resumes;
//! - a NaN loss exits with code 3 and a clear message; bad flags give one-line errors.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use netgen::train::checkpoint::{load_tensors, read_metadata};

fn netgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netgen"))
        .args(args)
        .output()
        .expect("run netgen")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes an IDX file: magic (0, 0, 8 = u8, ndims), big-endian dims, bytes.
fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut v = vec![0u8, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    std::fs::write(path, v).unwrap();
}

/// A tiny learnable MNIST-layout data set (256 train, 64 test images of 28×28).
fn tiny_mnist(dir: &Path) {
    let mut state = 12345u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for (prefix, n) in [("train", 256u32), ("t10k", 64)] {
        let mut images = Vec::with_capacity(n as usize * 784);
        let mut labels = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = (rnd() % 10) as usize;
            labels.push(k as u8);
            for _ in 0..784 {
                images.push((20 * k as u32 + rnd() % 60) as u8);
            }
        }
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            &[n, 28, 28],
            &images,
        );
        write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &[n], &labels);
    }
}

/// A tiny pre-activation network with a CRU stage (2 units sharing factors); input, channels and
/// classes follow the data.
const TINY_SPEC: &str = r#"{
  "name": "tiny_cli", "in_channels": 1, "input_size": 28, "classes": 10, "preact": true,
  "stem": {"kind": "small", "width": 8},
  "stages": [
    {"depth": 1, "width": 16, "stride": 2, "unit": {"kind": "aggregated", "mid": 8, "groups": 2}},
    {"depth": 2, "width": 32, "stride": 2,
     "unit": {"kind": "cru", "mid": 8, "groups": 8, "share": 2, "extra_conv": true}}
  ],
  "separate_projection_bn": true
}"#;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: String,
    spec: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data_dir = root.join("mnist");
    std::fs::create_dir_all(&data_dir).unwrap();
    tiny_mnist(&data_dir);
    let spec = root.join("tiny.json");
    std::fs::write(&spec, TINY_SPEC).unwrap();
    Fixture {
        data: format!("mnist:{}", data_dir.display()),
        spec: spec.display().to_string(),
        root,
        _dir: dir,
    }
}

impl Fixture {
    /// Common arguments of a short deterministic run into `out`.
    fn train_args<'a>(&'a self, out: &'a str, steps: &'a str) -> Vec<&'a str> {
        vec![
            "train",
            "--spec",
            &self.spec,
            "--data",
            &self.data,
            "--max-steps",
            steps,
            "--batch-size",
            "32",
            "--threads",
            "1",
            "--workers",
            "1",
            "--no-augment",
            "--device",
            "cpu",
            "--lr",
            "0.2",
            "--out",
            out,
        ]
    }

    fn out(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "failed: {}", text(&o.stderr));
    serde_json::from_str(&text(&o.stdout)).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
}

#[test]
fn train_json_run_directory_and_eval_agree() {
    let f = fixture();
    let out = f.out("run");
    let mut args = f.train_args(&out, "48");
    args.extend(["--json", "--quiet"]);
    let s = json(&netgen(&args));
    assert_eq!(s["outcome"], "finished");
    assert_eq!(s["steps"], 48);
    assert_eq!(s["device"], "cpu");
    let best = s["best_acc"].as_f64().unwrap();
    let test_acc = s["test_acc"].as_f64().unwrap();
    assert!(
        test_acc > 50.0,
        "the 10-class brightness task should be learnt in 6 epochs: {s}"
    );
    assert!(s["params"].as_u64().unwrap() > 1000 && s["flops"].as_u64().unwrap() > 10_000);
    for name in [
        "spec.json",
        "config.json",
        "metrics.csv",
        "curves.png",
        "last.safetensors",
        "best.safetensors",
    ] {
        assert!(Path::new(&out).join(name).is_file(), "{name} missing");
    }
    // 8 steps per epoch: a header and rows at 8, 16, …, 48.
    let csv = std::fs::read_to_string(Path::new(&out).join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    // config.json holds the resolved options.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["batch_size"], 32);
    assert_eq!(cfg["recipe"]["nesterov"], true);
    assert_eq!(cfg["recipe"]["lr"], 0.2);
    assert_eq!(cfg["recipe"]["weight_decay"], 5e-4);
    // eval of best.safetensors reproduces the reported best accuracy.
    let e = json(&netgen(&[
        "eval",
        "--run",
        &out,
        "--json",
        "--threads",
        "1",
        "--workers",
        "1",
    ]));
    assert_eq!(e["top1"].as_f64().unwrap(), best, "{e}");
    assert_eq!(e["samples"], 64);
    // And of last.safetensors, the final accuracy.
    let e = json(&netgen(&[
        "eval",
        "--run",
        &out,
        "--last",
        "--json",
        "--threads",
        "1",
    ]));
    assert_eq!(e["top1"].as_f64().unwrap(), test_acc, "{e}");
    // The same weights through --weights/--spec.
    let w = Path::new(&out).join("best.safetensors").display().to_string();
    let spec = Path::new(&out).join("spec.json").display().to_string();
    let e = json(&netgen(&[
        "eval",
        "--weights",
        &w,
        "--spec",
        &spec,
        "--data",
        &f.data,
        "--json",
    ]));
    assert_eq!(e["top1"].as_f64().unwrap(), best);

    // A second run into the same directory is refused; changing the recipe on resume is refused.
    let o = netgen(&f.train_args(&out, "24"));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--resume"), "{}", text(&o.stderr));
    let o = netgen(&["train", "--resume", &out, "--lr", "0.5"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("--lr cannot be changed on --resume") && err.lines().count() == 1,
        "{err}"
    );
    let o = netgen(&["train", "--resume", &out, "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("already took all its 48 steps"),
        "{}",
        text(&o.stderr)
    );
}

fn sorted(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut v = load_tensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn stop_after_steps_then_resume_matches_the_uninterrupted_run() {
    let f = fixture();
    let full = f.out("full");
    let mut a = f.train_args(&full, "20");
    a.push("--quiet");
    assert!(netgen(&a).status.success());
    let split = f.out("split");
    let mut a = f.train_args(&split, "20");
    a.extend(["--quiet", "--stop-after-steps", "13"]);
    let o = netgen(&a);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        read_metadata(&Path::new(&split).join("last.safetensors")).unwrap()["step"],
        "13"
    );
    let o = netgen(&["train", "--resume", &split, "--quiet", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for file in ["last.safetensors", "best.safetensors"] {
        let (x, y) = (
            sorted(&Path::new(&full).join(file)),
            sorted(&Path::new(&split).join(file)),
        );
        assert_eq!(x.len(), y.len());
        for ((n1, t1), (n2, t2)) in x.iter().zip(y.iter()) {
            assert_eq!(n1, n2);
            assert!(
                t1.equal(t2),
                "{file}: {n1} differs between the resumed and the uninterrupted run"
            );
        }
    }
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_the_run_resumes() {
    let f = fixture();
    let out = f.out("int");
    let mut a = f.train_args(&out, "100000");
    a.push("--quiet");
    let child = Command::new(env!("CARGO_BIN_EXE_netgen"))
        .args(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it start training (reading the data and building the network take well under a second).
    std::thread::sleep(std::time::Duration::from_secs(4));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--resume"), "{}", text(&o.stderr));
    let step: u64 = read_metadata(&Path::new(&out).join("state.safetensors")).unwrap()["step"]
        .parse()
        .unwrap();
    assert_eq!(
        read_metadata(&Path::new(&out).join("last.safetensors")).unwrap()["step"],
        step.to_string()
    );
    // Resume for 8 more steps (extending --max-steps is not allowed to shrink, so stop early).
    let until = (step + 8).to_string();
    let o = netgen(&[
        "train",
        "--resume",
        &out,
        "--quiet",
        "--stop-after-steps",
        &until,
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        read_metadata(&Path::new(&out).join("last.safetensors")).unwrap()["step"],
        until
    );
}

#[test]
fn nan_loss_exits_with_code_3_and_keeps_the_checkpoint() {
    let f = fixture();
    let out = f.out("nan");
    let mut a = f.train_args(&out, "24");
    a.extend(["--quiet", "--debug-nan-at-step", "10"]);
    let o = netgen(&a);
    assert_eq!(o.status.code(), Some(3));
    let err = text(&o.stderr);
    assert!(
        err.contains("loss is NaN at step 10") && err.contains("step 8"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        read_metadata(&Path::new(&out).join("last.safetensors")).unwrap()["step"],
        "8"
    );
}

#[test]
fn bad_options_are_one_line_errors() {
    let f = fixture();
    let out = f.out("bad");
    for (extra, want) in [
        (vec!["--budget", "10x"], "--budget"),
        (vec!["--schedule", "linear"], "--schedule"),
        (vec!["--device", "tpu"], "--device"),
        (vec!["--lr=-1"], "--lr"),
    ] {
        let mut a = f.train_args(&out, "4");
        a.extend(extra.iter().copied());
        let o = netgen(&a);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.starts_with("netgen: error: ") && err.contains(want),
            "{extra:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!Path::new(&out).join("config.json").exists());
    }
    let o = netgen(&[
        "train",
        "--spec",
        &f.spec,
        "--data",
        "mnist:/nonexistent",
        "--max-steps",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = netgen(&["eval"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--run"));
}

/// The directory of the libtorch this test process mapped (from `/proc/self/maps`).
fn mapped_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .map(|p| Path::new(p).parent().unwrap().to_path_buf())
}

#[test]
fn libtorch_cuda_is_linked_when_shipped_and_auto_picks_the_available_device() {
    // Touch libtorch so that it is mapped in this process.
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
    let dir = mapped_libtorch_dir().expect("libtorch_cpu.so mapped");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    if dir.join("libtorch_cuda.so").is_file() {
        // The test binary is linked by the same build script as netgen.
        assert!(
            maps.contains("libtorch_cuda.so"),
            "libtorch_cuda.so ships in {dir:?} but is not loaded"
        );
        let ldd = Command::new("ldd")
            .arg(env!("CARGO_BIN_EXE_netgen"))
            .output()
            .unwrap();
        assert!(
            text(&ldd.stdout).contains("libtorch_cuda.so"),
            "{}",
            text(&ldd.stdout)
        );
    }
    let f = fixture();
    let out = f.out("auto");
    let mut a = f.train_args(&out, "2");
    let i = a.iter().position(|s| *s == "cpu").unwrap();
    a[i] = "auto";
    a.extend(["--json", "--quiet"]);
    let s = json(&netgen(&a));
    let want = if tch::Cuda::is_available() {
        "cuda:0"
    } else {
        "cpu"
    };
    assert_eq!(s["device"], want);
}
