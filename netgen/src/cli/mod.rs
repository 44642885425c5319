//! The `train`, `eval` and `convert` subcommands (the emit side lives in `main.rs`).
pub(crate) mod convert;
pub(crate) mod eval;
pub(crate) mod train;

use clap::Args;

use crate::EmitArgs;

/// Examples of `netgen train` / `netgen eval`.
pub(crate) const TRAIN_EXAMPLES: &str = "\
Examples:
  netgen --R 32 --rank 4 --share 6                  table, then train on Fashion-MNIST (CPU: 10-minute budget)
  netgen train --preset crunet_small --epochs 4 --no-augment --out runs/cru
                                                    a small CRU-Net, 4 epochs, warm-up + cosine
  netgen train --R 8 --rank 4 --share 3 --budget 5m --out runs/b5
                                                    as many steps as fit in 5 minutes, schedule stretched over them
  netgen train --preset resnet50 --data imagefolder:/data/imagenet --recipe paper --epochs 90 --amp
  netgen train --resume runs/cru --epochs 8         continue a run (to 8 epochs in all)
  netgen train --preset resnet_small --max-steps 200 --stop-after-steps 100 --out runs/a
                                                    stop at step 100 with a checkpoint; --resume runs/a finishes it
  netgen eval --run runs/cru                        test accuracy of runs/cru/best.safetensors
  netgen eval --weights w.safetensors --spec spec.json --data cifar10:/data/cifar --json

A run directory holds spec.json, config.json, metrics.csv, curves.png, last.safetensors,
best.safetensors (torchvision-style names; loadable by PyTorch) and state.safetensors.
Ctrl-C saves a checkpoint and exits; a NaN/Inf loss stops the run with exit code 3.";

/// `netgen train`: architecture flags (as for `emit`) plus data, recipe and run options.
#[derive(Args, Debug)]
pub(crate) struct TrainCmd {
    #[command(flatten)]
    pub(crate) arch: EmitArgs,
    #[command(flatten)]
    pub(crate) flags: train::TrainFlags,
}
