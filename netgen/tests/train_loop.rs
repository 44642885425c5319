//! The training loop through the library, on a tiny CRU network and a small synthetic task held in
//! memory (`InMemoryData::synthetic`: noisy copies of random class prototypes), so each run takes
//! well under a second:
//! - a short run's loss falls and its accuracy beats chance by far;
//! - a run stopped after N steps and resumed ends with bit-identical weights, BN statistics and
//!   momentum buffers to the same run uninterrupted;
//! - a NaN loss stops the run with `NonFinite`, keeping the last good checkpoint;
//! - `best.safetensors` loads back into a fresh network and reproduces the reported accuracy.
use std::path::Path;

use netgen::arch::{NetSpec, StageSpec, Stem, UnitSpec};
use netgen::nn::{Network, load_safetensors};
use netgen::train::checkpoint::{load_tensors, read_metadata};
use netgen::train::metrics;
use netgen::train::trainer::{Outcome, RunOptions, train};
use netgen::train::{InMemoryData, Recipe, RecipeKind, TrainConfig, TrainError, evaluate};
use tch::Device;
use tch::nn::VarStore;

/// Pre-activation net on 1×8×8 inputs: a 3×3 stem (8), an aggregated stage (16 wide, R = 2) and a
/// CRU stage of 2 units sharing one set of factors (32 wide, stride 2), 4 classes.
fn tiny_spec() -> NetSpec {
    NetSpec {
        name: "tiny_cru".into(),
        in_channels: 1,
        input_size: 8,
        classes: 4,
        preact: true,
        stem: Stem::Small { width: 8 },
        stages: vec![
            StageSpec {
                depth: 1,
                width: 16,
                stride: 1,
                unit: UnitSpec::Aggregated { mid: 8, groups: 2 },
            },
            StageSpec {
                depth: 2,
                width: 32,
                stride: 2,
                unit: UnitSpec::Cru {
                    mid: 8,
                    groups: 8,
                    share: 2,
                    extra_conv: true,
                },
            },
        ],
        separate_projection_bn: true,
    }
}

fn data() -> InMemoryData {
    InMemoryData::synthetic(256, 128, 4, 1, 8, 0.5, 7)
}

fn config(max_steps: u64) -> TrainConfig {
    let mut recipe = Recipe::defaults(RecipeKind::Modern, 11, 32);
    recipe.lr = 0.1;
    TrainConfig {
        data: "synthetic".into(),
        augment: false,
        workers: 0,
        batch_size: 32,
        eval_batch_size: 64,
        recipe,
        epochs: None,
        max_steps: Some(max_steps),
        budget_seconds: None,
        seed: 3,
        threads: 1,
        device: "cpu".into(),
        amp: false,
        channels_last: false,
        eval_samples: None,
    }
}

fn run_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn short_run_loss_falls_and_accuracy_beats_chance() {
    let root = tempfile::tempdir().unwrap();
    let out = run_dir(root.path(), "a");
    let d = data();
    // 8 steps per epoch, 4 epochs: 4 evaluations.
    let s = train(&tiny_spec(), &config(32), &d, &RunOptions::new(&out, Device::Cpu)).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    assert_eq!(s.steps, 32);
    let rows = metrics::read(&out.join("metrics.csv")).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![8, 16, 24, 32]
    );
    let first = rows.first().unwrap();
    let last = rows.last().unwrap();
    assert!(
        last.train_loss < 0.6 * first.train_loss,
        "training loss did not fall: {} → {} ({rows:?})",
        first.train_loss,
        last.train_loss
    );
    assert!(last.test_loss < first.test_loss);
    // Chance is 25%.
    assert!(last.test_top1 > 80.0, "test top-1 {}", last.test_top1);
    // Learning rate annealed by cosine.
    assert!(last.lr < 1e-3, "lr {}", last.lr);
    for f in [
        "spec.json",
        "config.json",
        "curves.png",
        "last.safetensors",
        "best.safetensors",
        "state.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The plot is a real PNG of the advertised size.
    let png = std::fs::read(out.join("curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1200);
    // best.safetensors reproduces the best accuracy through a fresh network.
    let vs = VarStore::new(Device::Cpu);
    let net = Network::new(&vs.root(), &tiny_spec()).unwrap();
    load_safetensors(&vs, &out.join("best.safetensors")).unwrap();
    let e = evaluate(&net, &d, 64, None, Device::Cpu, false, false).unwrap();
    assert_eq!(e.top1, s.best_acc);
    let meta = read_metadata(&out.join("best.safetensors")).unwrap();
    assert_eq!(meta["step"], s.best_step.to_string());
}

/// All tensors of a checkpoint file, sorted by name.
fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut v = load_tensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn stopped_and_resumed_run_equals_the_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let d = data();
    let spec = tiny_spec();
    // 20 steps = 2.5 epochs; stop at 11 (mid-epoch, after one evaluation), resume to the end.
    let full = run_dir(root.path(), "full");
    train(&spec, &config(20), &d, &RunOptions::new(&full, Device::Cpu)).unwrap();
    let split = run_dir(root.path(), "split");
    let mut o = RunOptions::new(&split, Device::Cpu);
    o.stop_after_steps = Some(11);
    let s1 = train(&spec, &config(20), &d, &o).unwrap();
    assert_eq!((s1.outcome, s1.steps), (Outcome::Stopped, 11));
    assert_eq!(
        read_metadata(&split.join("state.safetensors")).unwrap()["step"],
        "11"
    );
    let mut o = RunOptions::new(&split, Device::Cpu);
    o.resume = true;
    let s2 = train(&spec, &config(20), &d, &o).unwrap();
    assert_eq!((s2.outcome, s2.steps), (Outcome::Finished, 20));
    for file in ["last.safetensors", "state.safetensors"] {
        let a = tensors(&full.join(file));
        let b = tensors(&split.join(file));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(b.iter()) {
            assert_eq!(na, nb);
            if na == "meta.seconds" {
                continue;
            }
            assert!(ta.equal(tb), "{file}: {na} differs after resume");
        }
    }
    let (ma, mb) = (
        metrics::read(&full.join("metrics.csv")).unwrap(),
        metrics::read(&split.join("metrics.csv")).unwrap(),
    );
    assert_eq!(ma.len(), mb.len());
    for (a, b) in ma.iter().zip(mb.iter()) {
        assert_eq!(
            (a.step, a.test_top1, a.test_loss),
            (b.step, b.test_top1, b.test_loss)
        );
    }
    // A finished run cannot be resumed without extending it …
    let mut o = RunOptions::new(&split, Device::Cpu);
    o.resume = true;
    assert!(matches!(
        train(&spec, &config(20), &d, &o),
        Err(TrainError::Config(_))
    ));
    // … and extending it continues from step 20.
    let s3 = train(&spec, &config(24), &d, &o).unwrap();
    assert_eq!(s3.steps, 24);
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let out = run_dir(root.path(), "nan");
    let d = data();
    let mut o = RunOptions::new(&out, Device::Cpu);
    o.poison_step = Some(11);
    let err = train(&tiny_spec(), &config(20), &d, &o).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFinite { step: 11, .. }), "{msg}");
    assert!(msg.contains("NaN") && msg.contains("step 8"), "{msg}");
    // The checkpoint of the epoch end (step 8) is intact and finite.
    assert_eq!(read_metadata(&out.join("last.safetensors")).unwrap()["step"], "8");
    for (n, t) in tensors(&out.join("last.safetensors")) {
        assert!(
            t.isfinite().all().int64_value(&[]) == 1,
            "{n} is not finite in the kept checkpoint"
        );
    }
    // A huge learning rate makes the loss blow up for real.
    let out2 = run_dir(root.path(), "lr");
    let mut cfg = config(20);
    cfg.recipe.lr = 1e30;
    cfg.recipe.warmup_epochs = Some(0.0);
    let err = train(&tiny_spec(), &cfg, &d, &RunOptions::new(&out2, Device::Cpu)).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { .. }), "{err}");
}

#[test]
fn mismatched_data_and_oversized_batches_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let out = run_dir(root.path(), "bad");
    let d = InMemoryData::synthetic(16, 8, 4, 3, 8, 1.0, 1);
    let err = train(&tiny_spec(), &config(4), &d, &RunOptions::new(&out, Device::Cpu)).unwrap_err();
    assert!(err.to_string().contains("3×8×8"), "{err}");
    let d = InMemoryData::synthetic(16, 8, 4, 1, 8, 1.0, 1);
    let err = train(&tiny_spec(), &config(4), &d, &RunOptions::new(&out, Device::Cpu)).unwrap_err();
    assert!(err.to_string().contains("--batch-size 32"), "{err}");
}

#[test]
fn budgeted_run_fits_its_steps_and_ends_annealed() {
    let root = tempfile::tempdir().unwrap();
    let out = run_dir(root.path(), "budget");
    let d = data();
    let mut cfg = config(1);
    cfg.max_steps = None;
    cfg.budget_seconds = Some(3.0);
    let opts = RunOptions::new(&out, Device::Cpu);
    let started = opts.started;
    let s = train(&tiny_spec(), &cfg, &d, &opts).unwrap();
    let took = started.elapsed().as_secs_f64();
    assert_eq!(s.outcome, Outcome::Finished);
    // The run used its budget (a tiny step takes milliseconds, so far more than one step fits)
    // without running much past it.
    assert!(s.steps > 20, "only {} steps in a 3 s budget", s.steps);
    assert!(took < 3.0 + 3.0, "a 3 s budget took {took:.2} s");
    let rows = metrics::read(&out.join("metrics.csv")).unwrap();
    let last = rows.last().unwrap();
    assert_eq!(last.step, s.steps);
    // The cosine schedule was laid over the fitted steps: the last step's rate is near zero.
    assert!(
        last.lr < 0.01 * 0.1,
        "lr {} at the end of a budgeted run",
        last.lr
    );
    // A budget whose test pass alone would not fit evaluates on a prefix of the test split.
    let out = run_dir(root.path(), "subset");
    let mut cfg = config(1);
    cfg.max_steps = None;
    cfg.budget_seconds = Some(1e-4);
    let s = train(&tiny_spec(), &cfg, &d, &RunOptions::new(&out, Device::Cpu)).unwrap();
    assert_eq!(s.steps, 1);
    let samples = s.last_eval.unwrap().samples;
    assert!((64..128).contains(&samples), "{samples}");
    let stored: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(stored.eval_samples, Some(samples as usize));
}
