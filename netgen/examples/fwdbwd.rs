//! Times one training step's forward + backward of a netgen preset (driven by
//! `scripts/bench_netgen_vs_torchvision.py`, which times torchvision the same way).
//!
//! Each iteration: zero the gradients in place, logits = net(x) in training mode (BN batch
//! statistics), cross-entropy against fixed random labels, backward. `--warmup` untimed iterations,
//! then `--iters` timed ones. Prints one JSON line:
//! `{"model", "device", "threads", "batch", "size", "iters", "seconds": [...], "images_per_s"}` with
//! images/s = batch · iters / total seconds.
//!
//! With `--serve`, after the warm-up it prints `ready` and then runs one timed iteration per line
//! read from stdin, answering each with its duration in seconds (a line with a number), until
//! stdin closes: the benchmark script uses this to interleave netgen and torchvision steps.
//!
//! `cargo run --release -p netgen --example fwdbwd -- --preset resnet50 --batch 8 --threads 2`
use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use netgen::arch::presets::{PresetOptions, preset};
use netgen::nn::Network;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Reduction, Tensor};

/// Forward+backward timing of a netgen preset.
#[derive(Parser)]
struct Args {
    /// Preset name (e.g. resnet50, resnext50_32x4d).
    #[arg(long)]
    preset: String,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: i64,
    /// Input height = width.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Intra-op threads (`tch::set_num_threads`); 0 keeps libtorch's default.
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// cpu, cuda, or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    device: String,
    /// After the warm-up, time one iteration per stdin line and print its seconds.
    #[arg(long)]
    serve: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        "auto" => Device::cuda_if_available(),
        other => bail!("unknown device {other:?}; use cpu, cuda or auto"),
    };
    if args.iters == 0 || args.batch <= 0 {
        bail!("--iters and --batch must be positive");
    }
    let opts = PresetOptions {
        input_size: Some(args.size),
        ..Default::default()
    };
    let spec = preset(&args.preset, opts)?;
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net = Network::new(&vs.root(), &spec).context("building the network")?;
    let n = args.size as i64;
    let x = Tensor::randn([args.batch, spec.in_channels as i64, n, n], (Kind::Float, device));
    let labels = Tensor::randint(spec.classes as i64, [args.batch], (Kind::Int64, device));
    let mut params = vs.trainable_variables();
    let mut step = || {
        for p in params.iter_mut() {
            p.zero_grad();
        }
        let logits = net.forward_t(&x, true);
        let loss = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0);
        loss.backward();
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
    };
    for _ in 0..args.warmup {
        step();
    }
    if args.serve {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        for line in std::io::stdin().lock().lines() {
            line?;
            let t = Instant::now();
            step();
            writeln!(out, "{}", t.elapsed().as_secs_f64())?;
            out.flush()?;
        }
        return Ok(());
    }
    let mut seconds = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t = Instant::now();
        step();
        seconds.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = seconds.iter().sum();
    let out = serde_json::json!({
        "model": args.preset,
        "device": format!("{device:?}"),
        "threads": tch::get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "iters": args.iters,
        "seconds": seconds,
        "images_per_s": (args.batch as f64) * (args.iters as f64) / total,
    });
    println!("{out}");
    Ok(())
}
