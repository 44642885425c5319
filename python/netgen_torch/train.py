"""``python -m netgen_torch.train`` / ``torchrun --nproc_per_node=N -m netgen_torch.train``: trains a
netgen spec with PyTorch's DistributedDataParallel into the same run directory as ``netgen train``.

The recipe, flag names, defaults and run directory are netgen's (docs/training.md); ``--batch-size``
is the *global* batch (each of the ``W`` processes takes ``batch / W`` samples), so a run gives the
same steps, learning rates and epochs on any number of processes. Gradients are averaged by DDP
(gloo on CPUs, NCCL on GPUs); ``--sync-bn`` makes BatchNorm use the statistics of the whole
global batch (SyncBatchNorm), which makes ``W`` processes compute what one process at the same
global batch computes. Rank 0 writes the run directory; every write is atomic.

Step ``t``: ``lr = recipe.lr_at(t, T, E)``; logits in training mode; cross-entropy with label
smoothing; backward (DDP all-reduce); optional global-norm clipping; SGD (Nesterov, decay on conv
and fc weights only). Evaluation at each epoch end and at the end (sharded over the ranks).

Interchange with ``netgen train``: ``--resume DIR`` continues a run written by either trainer —
weights and BN statistics, SGD momentum buffers (``momentum.<name>``: the same update rule, so
the same buffers), step, best accuracy, plateau state and metrics. The data order is not shared
(torch's permutation here, ChaCha8 in netgen): a cross-trainer resume continues the schedule at
the right step but draws other batches than the other trainer would have.

Examples::

    netgen emit --preset crunet_small --input 28 --in-channels 1 --first-stride 2 --json > spec.json
    python -m netgen_torch.train --spec spec.json --epochs 2 --out runs/t1
    torchrun --standalone --nproc_per_node=2 -m netgen_torch.train --spec spec.json --epochs 2 --out runs/t2
    torchrun --nproc_per_node=2 -m netgen_torch.train --resume runs/t2 --epochs 4
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=job1 \\
        -m netgen_torch.train --spec spec.json --data cifar10:/data/cifar --sync-bn --out runs/big
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data import DataError, EpochBatches, default_workers, open_data, prefetch
from .eval import EvalResult, build_model, evaluate, load_weights, resolve_device
from .recipe import PlateauState, Recipe, RecipeError, clip_grad, make_optimizer, parse_schedule, set_lr, \
    weighted_depth
from .rundir import LoopState, Row, RunError, check_fresh, check_run_dir, draw_curves, load_tensors, read_json, \
    read_metadata, read_metrics, read_spec, save_tensors, write_json, write_metrics

PROG = "netgen_torch"


class NonFinite(Exception):
    pass


def _bool(s: str) -> bool:
    if s.lower() in ("true", "1", "yes"):
        return True
    if s.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"'{s}' is not true or false")


def parse(argv):
    p = argparse.ArgumentParser(
        prog="netgen_torch.train",
        description="Train a netgen spec with PyTorch DDP into a netgen run directory (same flags, recipe and "
                    "files as netgen train).",
        epilog="examples:" + __doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Network")
    g.add_argument("--spec", type=Path, metavar="FILE",
                   help="netgen spec: `netgen emit ... --json` output, a run's spec.json, or TOML")
    g = p.add_argument_group("Data")
    g.add_argument("--data", metavar="SOURCE",
                   help="fashion-mnist (default), fashion-mnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR, "
                        "imagefolder:DIR")
    g.add_argument("--no-augment", action="store_true", help="no training-time augmentation")
    g.add_argument("--workers", type=int, metavar="N", help="batches built ahead in a thread (default min(4, cores))")
    g = p.add_argument_group("Length")
    g.add_argument("--epochs", type=float, metavar="E", help="epochs of the whole run (also on --resume)")
    g.add_argument("--max-steps", type=int, metavar="N", help="steps of the whole run (also on --resume)")
    g.add_argument("--budget", metavar="DURATION", help=argparse.SUPPRESS)
    g = p.add_argument_group("Recipe")
    g.add_argument("--recipe", choices=["modern", "paper"], help="modern (default) or paper")
    g.add_argument("--batch-size", type=int, metavar="N", help="GLOBAL mini-batch size (default 128)")
    g.add_argument("--eval-batch-size", type=int, metavar="N", help="evaluation batch per process (2 × batch)")
    g.add_argument("--lr", type=float, metavar="LR", help="base learning rate (modern: 0.1 × batch / 128)")
    g.add_argument("--momentum", type=float, metavar="M", help="momentum (0.9)")
    g.add_argument("--nesterov", type=_bool, nargs="?", const=True, metavar="BOOL", help="Nesterov (true)")
    g.add_argument("--weight-decay", type=float, metavar="WD", help="L2 decay, not on BN and biases (5e-4)")
    g.add_argument("--schedule", metavar="SCHEDULE", help="cosine, plateau, constant or step:E1,E2,…")
    g.add_argument("--warmup-epochs", type=float, metavar="E", help="linear warm-up (modern: 3%% of the run)")
    g.add_argument("--label-smoothing", type=float, metavar="EPS", help="label smoothing (0)")
    g.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the global gradient norm (off)")
    g.add_argument("--eval-samples", type=int, metavar="N", help="evaluate on the first N test images")
    g.add_argument("--seed", type=int, metavar="N", help="seed of the initialisation and data order (0)")
    g = p.add_argument_group("Device")
    g.add_argument("--device", metavar="DEVICE", help="auto (CUDA when available), cpu, cuda (cuda:LOCAL_RANK)")
    g.add_argument("--threads", type=int, metavar="N", help="intra-op threads per process (cores / local procs)")
    g.add_argument("--amp", action="store_true", help="float16 autocast with loss scaling (CUDA)")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format (CUDA)")
    g.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm: BN statistics over the global batch (CUDA; PyTorch has no CPU version)")
    g.add_argument("--frozen-bn", action="store_true",
                   help="BatchNorm uses and keeps its running statistics (fine-tuning; exact DDP equivalence on CPUs)")
    g = p.add_argument_group("Run")
    g.add_argument("--out", type=Path, metavar="DIR", help="run directory (default runs/NAME-NNN)")
    g.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR (netgen's or this one's)")
    g.add_argument("--stop-after-steps", type=int, metavar="N", help="stop with a checkpoint after N steps")
    g.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    g.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Distributed set-up

class Dist:
    """Rank, world size and device of this process (a one-process 'world' without torchrun)."""

    def __init__(self, device_flag: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        dev = resolve_device(device_flag)
        if dev.type == "cuda" and device_flag in ("auto", "cuda"):
            dev = torch.device(f"cuda:{self.local_rank % torch.cuda.device_count()}")
        self.device = dev
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self.on = self.world > 1
        if self.on:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.on:
            dist.all_reduce(t)
        return t.tolist()

    def close(self):
        if self.on and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Planning (fresh run or resume), as netgen's cli/train.rs

FIXED_ON_RESUME = ["spec", "data", "no_augment", "budget", "recipe", "batch_size", "lr", "momentum", "nesterov",
                   "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "clip_grad", "seed",
                   "eval_samples", "amp", "channels_last", "out", "eval_batch_size"]


def _flag(n: str) -> str:
    return "--" + n.replace("_", "-")


def plan_resume(a) -> tuple[dict, dict, Path]:
    fixed = [_flag(n) for n in FIXED_ON_RESUME if getattr(a, n) not in (None, False)]
    if fixed:
        raise RunError(f"{', '.join(fixed)} cannot be changed on --resume (the run's config.json fixes it); only "
                       "--epochs, --max-steps, --stop-after-steps, --device, --threads, --workers, --sync-bn, "
                       "--frozen-bn, --quiet and --json are accepted")
    d = a.resume
    check_run_dir(d)
    spec, cfg = read_spec(d / "spec.json"), read_json(d / "config.json")
    if a.epochs is not None:
        if cfg.get("epochs") is not None and a.epochs < cfg["epochs"]:
            raise RunError(f"--epochs {a.epochs} would shorten the run (it has --epochs {cfg['epochs']}); flags "
                           "given with --resume may only extend it")
        cfg["epochs"] = a.epochs
        if a.max_steps is None:
            cfg["max_steps"] = None
    if a.max_steps is not None:
        if cfg.get("max_steps") is not None and a.max_steps < cfg["max_steps"]:
            raise RunError(f"--max-steps {a.max_steps} would shorten the run (it has --max-steps "
                           f"{cfg['max_steps']}); flags given with --resume may only extend it")
        cfg["max_steps"] = a.max_steps
        if a.epochs is None:
            cfg["epochs"] = None
    for k in ("threads", "workers", "device"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    return spec, cfg, d


def plan_fresh(a, spec: dict, data_s: str) -> tuple[dict, Path]:
    if a.budget is not None:
        raise RunError("--budget is netgen train's; the torchrun trainer takes --epochs or --max-steps")
    if a.epochs is None and a.max_steps is None:
        raise RunError("no length given: pass --epochs E or --max-steps N")
    batch = a.batch_size or 128
    r = Recipe.defaults(a.recipe or "modern", weighted_depth(spec), batch)
    for k in ("lr", "momentum", "nesterov", "weight_decay", "label_smoothing"):
        if getattr(a, k) is not None:
            setattr(r, k, getattr(a, k))
    if a.schedule is not None:
        r.schedule = parse_schedule(a.schedule)
    if a.warmup_epochs is not None:
        r.warmup_epochs = a.warmup_epochs
    r.clip_grad = a.clip_grad
    cfg = {
        "data": data_s, "augment": not a.no_augment, "workers": a.workers if a.workers is not None else default_workers(),
        "batch_size": batch, "eval_batch_size": a.eval_batch_size or 2 * batch, "recipe": r.to_dict(),
        "epochs": a.epochs, "max_steps": a.max_steps, "budget_seconds": None, "seed": a.seed or 0,
        "threads": a.threads or 0, "device": a.device or "auto", "amp": a.amp, "channels_last": a.channels_last,
        "eval_samples": a.eval_samples,
    }
    out = a.out or default_out(spec.get("name", "net"))
    return cfg, out


def validate(cfg: dict) -> None:
    if cfg["batch_size"] < 1:
        raise RunError("--batch-size must be at least 1")
    if cfg["eval_batch_size"] < 1:
        raise RunError("--eval-batch-size must be at least 1")
    e = cfg.get("epochs")
    if e is not None and not (math.isfinite(e) and e > 0):
        raise RunError(f"--epochs must be a positive number, got {e}")
    if cfg.get("eval_samples") == 0 or (cfg.get("eval_samples") or 1) < 0:
        raise RunError("--eval-samples must be at least 1")
    if cfg.get("max_steps") is not None and cfg["max_steps"] < 1:
        raise RunError("--max-steps must be at least 1")
    Recipe.from_dict(cfg["recipe"]).validate()


def default_out(name: str) -> Path:
    safe = ""
    for c in name:
        if c.isascii() and (c.isalnum() or c == "-"):
            safe += c
        elif safe and not safe.endswith("_"):
            safe += "_"
    safe = safe.rstrip("_")
    i = 1
    while (Path("runs") / f"{safe}-{i:03}").exists():
        i += 1
    return Path("runs") / f"{safe}-{i:03}"


def planned_steps(cfg: dict, per_epoch: int) -> int | None:
    a = None if cfg.get("epochs") is None else int(math.floor(cfg["epochs"] * per_epoch + 0.5))
    b = cfg.get("max_steps")
    if a is not None and b is not None:
        return min(a, b)
    return a if a is not None else b


# ---------------------------------------------------------------------------------------------
# Names of parameters in netgen's state-dict naming

def named_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Every trainable parameter once, under its state-dict name (a shared tensor under the one name
    the state dict gives it), sorted by name as netgen's SGD keeps them."""
    sd = model.state_dict(keep_vars=True)
    names: dict[int, str] = {}
    for n, t in sd.items():
        if isinstance(t, torch.nn.Parameter) and id(t) not in names:
            names[id(t)] = n
    out, seen = [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) not in names:
            raise RunError("a parameter of the network has no state-dict name; the model is not netgen_torch's")
        out.append((names[id(p)], p))
    return sorted(out, key=lambda x: x[0])


# ---------------------------------------------------------------------------------------------
# The run

class Trainer:
    def __init__(self, a, d: Dist):
        self.a, self.d = a, d
        self.quiet = a.quiet or d.rank != 0
        if a.resume is not None:
            self.spec, self.cfg, self.out = plan_resume(a)
            self.fresh = False
        else:
            if a.spec is None:
                raise RunError("no network: pass --spec FILE (write one with netgen emit ... --json > spec.json), "
                               "or --resume DIR")
            self.spec = read_spec(a.spec)
            data_s = a.data or "fashion-mnist"
            self.cfg, self.out = plan_fresh(a, self.spec, data_s)
            self.fresh = True
        validate(self.cfg)
        self.recipe = Recipe.from_dict(self.cfg["recipe"])
        B, W = self.cfg["batch_size"], d.world
        if B % W:
            raise RunError(f"--batch-size {B} (the global batch) must be a multiple of the {W} processes")
        # Cores shared by the processes of this node, unless --threads says otherwise.
        threads = a.threads or max(1, (os.cpu_count() or 1) // max(1, d.local_world))
        self.cfg["threads"] = threads
        torch.set_num_threads(threads)
        self.data = open_data(self.cfg["data"], input_size=self.spec["input_size"], augment=self.cfg["augment"])
        info = self.data.info
        if (info.channels, info.input_size, info.classes) != \
                (self.spec["in_channels"], self.spec["input_size"], self.spec["classes"]):
            raise RunError(f"the network takes {self.spec['in_channels']}×{self.spec['input_size']}² inputs with "
                           f"{self.spec['classes']} classes but {info.name} has {info.channels}×{info.input_size}² "
                           f"with {info.classes}; emit the spec with --input/--in-channels/--classes of the data")
        self.per_epoch = info.train_len // B
        if self.per_epoch == 0:
            raise RunError(f"--batch-size {B} is larger than the training split ({info.train_len} samples); use a "
                           "smaller batch")
        torch.manual_seed(self.cfg["seed"])
        self.model = build_model(self.spec)
        self.params = named_params(self.model)
        self.st = LoopState(total_steps=planned_steps(self.cfg, self.per_epoch) or 0, seed=self.cfg["seed"])
        self.plateau = PlateauState()
        self.rows: list[Row] = []
        self.seconds_before = 0.0
        self.opt = make_optimizer([p for _, p in self.params], self.recipe)
        if self.fresh:
            if d.rank == 0:
                check_fresh(self.out)
                write_json(self.out / "spec.json", self.spec)
                write_json(self.out / "config.json", dict(self.cfg, trainer="netgen_torch", world_size=W,
                                                         sync_bn=a.sync_bn, frozen_bn=a.frozen_bn))
        else:
            self.restore()
        self.model.to(d.device)
        self.cl = self.cfg["channels_last"] and d.device.type == "cuda"
        self.amp = self.cfg["amp"] and d.device.type == "cuda"
        if self.cl:
            self.model.to(memory_format=torch.channels_last)
        # The state-dict names netgen knows (SyncBatchNorm would add num_batches_tracked).
        self.sd_keys = set(self.model.state_dict().keys())
        if a.sync_bn and d.on:
            if d.device.type != "cuda":
                raise RunError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU implementation); on CPUs "
                               "use --frozen-bn for BN that is identical on every process, or neither")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ddp = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None) if d.on else self.model
        # Momentum buffers loaded in restore() live on the CPU: move them with the parameters.
        for st in self.opt.state.values():
            if "momentum_buffer" in st:
                st["momentum_buffer"] = st["momentum_buffer"].to(d.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.interrupted = False
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)

    def train_mode(self):
        """Training mode; with --frozen-bn the BatchNorm layers stay in evaluation mode."""
        self.ddp.train()
        if self.a.frozen_bn:
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _on_signal(self, *_):
        if self.interrupted:
            sys.exit(130)
        self.interrupted = True

    def restore(self):
        last, state_p = self.out / "last.safetensors", self.out / "state.safetensors"
        if not last.exists() or not state_p.exists():
            raise RunError(f"{self.out}: no checkpoint to resume (last.safetensors and state.safetensors are written "
                           "at each epoch end, on Ctrl-C and with --stop-after-steps); start a new run with --out")
        m1, m2 = read_metadata(last), read_metadata(state_p)
        if m1.get("step") != m2.get("step"):
            raise RunError(f"{self.out}: last.safetensors (step {m1.get('step', '?')}) and state.safetensors (step "
                           f"{m2.get('step', '?')}) do not match; the run was stopped while saving: delete both to "
                           "start over")
        load_weights(self.model, last)
        named = load_tensors(state_p)
        st = LoopState.from_tensors(named, state_p)
        for n, p in self.params:
            k = f"momentum.{n}"
            if k not in named:
                raise RunError(f"{state_p}: no momentum buffer for {n}; the state belongs to another network")
            if tuple(named[k].shape) != tuple(p.shape):
                raise RunError(f"{state_p}: momentum buffer {n}: shape {list(named[k].shape)}, parameter "
                               f"{list(p.shape)}; the state belongs to another network")
            self.opt.state[p]["momentum_buffer"] = named[k].to(p.dtype).clone()
        planned = planned_steps(self.cfg, self.per_epoch)
        st.total_steps = max(st.total_steps, planned or 0)
        st.seed = self.cfg["seed"]
        self.st = st
        self.plateau = PlateauState(st.plateau_factor, st.plateau_best, st.plateau_bad)
        self.seconds_before = st.seconds
        self.rows = [r for r in read_metrics(self.out / "metrics.csv") if r.step <= st.step]
        if st.step >= st.total_steps:
            raise RunError(f"the run in {self.out} already took all its {st.total_steps} steps; pass a larger --epochs "
                           "or --max-steps with --resume to extend it")

    # -- files (rank 0) --

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in sorted(self.model.state_dict().items()) if k in self.sd_keys}

    def save_checkpoint(self):
        self.st.seconds = self.seconds()
        self.st.plateau_factor, self.st.plateau_best, self.st.plateau_bad = \
            self.plateau.factor, self.plateau.best, self.plateau.bad
        if self.d.rank != 0:
            return
        meta = {"step": str(self.st.step), "format": "netgen"}
        save_tensors(self.out / "last.safetensors", self.weights(), meta)
        state = {}
        for n, p in self.params:
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            state[f"momentum.{n}"] = buf if buf is not None else torch.zeros_like(p)
        state.update(self.st.to_tensors())
        save_tensors(self.out / "state.safetensors", state, meta)

    def seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.t0

    def say(self, line: str):
        if not self.quiet:
            print(line, file=sys.stderr if self.a.json else sys.stdout, flush=True)

    # -- loop --

    def run(self) -> dict:
        self.t0 = time.monotonic()
        d, B, W = self.d, self.cfg["batch_size"], self.d.world
        if self.st.total_steps == 0:
            raise RunError("no length given: pass --epochs, --max-steps")
        if not self.quiet:
            info = self.data.info
            print(f"{PROG}: {'training' if self.fresh else 'resuming'} {self.spec.get('name', '')} on {info.name} "
                  f"({info.train_len} train / {info.test_len} test), {W} process(es) × batch {B // W} on "
                  f"{d.device}{' with SyncBatchNorm' if self.a.sync_bn and d.on else ''} → {self.out}",
                  file=sys.stderr, flush=True)
        win = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, samples, seconds
        last_eval: EvalResult | None = None
        imgs, train_s, lr = 0, 0.0, 0.0
        ls = self.recipe.label_smoothing
        # A progress line on a terminal (rank 0, not --quiet), at most twice a second.
        self.tty = not self.quiet and sys.stderr.isatty()
        t_shown = 0.0
        self.train_mode()
        while self.st.step < self.st.total_steps:
            epoch, skip = divmod(self.st.step, self.per_epoch)
            end = min(self.st.step + self.per_epoch - skip, self.st.total_steps)
            batches = prefetch(iter(EpochBatches(self.data, epoch, self.cfg["seed"], B, W, d.rank, skip)),
                               self.cfg["workers"])
            t_last = time.monotonic()
            while self.st.step < end:
                x, y = next(batches)
                x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
                if self.cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = self.recipe.lr_at(self.st.step, self.st.total_steps, self.per_epoch, self.plateau.factor)
                set_lr(self.opt, lr)
                self.opt.zero_grad(set_to_none=True)
                with torch.autocast(d.device.type, dtype=torch.float16, enabled=self.amp):
                    logits = self.ddp(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=ls)
                # One collective per step: any rank's interrupt or non-finite loss stops all ranks.
                lv = loss.item()
                bad, stop = d.sum([0.0 if math.isfinite(lv) else 1.0, 1.0 if self.interrupted else 0.0])
                if bad:
                    raise NonFinite(f"the loss of step {self.st.step + 1} is not finite (lr {lr:.4g}); lower --lr, "
                                    "add --warmup-epochs or --clip-grad 5; the last checkpoint is kept")
                if stop:
                    return self.stop("interrupted", last_eval, imgs, train_s)
                self.scaler.scale(loss).backward()
                if self.recipe.clip_grad is not None:
                    self.scaler.unscale_(self.opt)
                    clip_grad([p for _, p in self.params], self.recipe.clip_grad)
                self.scaler.step(self.opt)
                self.scaler.update()
                n = y.shape[0]
                win[0] += lv * n
                win[1] += float((logits.argmax(1) == y).sum())
                win[2] += n
                self.st.step += 1
                now = time.monotonic()
                win[3] += now - t_last
                train_s += now - t_last
                imgs += n * W
                t_last = now
                if self.tty and now - t_shown > 0.5:
                    t_shown = now
                    print(f"\repoch {epoch + 1}/{math.ceil(self.st.total_steps / self.per_epoch)} step "
                          f"{self.st.step}/{self.st.total_steps}: loss {win[0] / win[2]:.4f} acc "
                          f"{100 * win[1] / win[2]:.1f}% {win[2] * W / max(win[3], 1e-9):.0f} img/s ",
                          end="", file=sys.stderr, flush=True)
                if self.a.stop_after_steps == self.st.step and self.st.step < self.st.total_steps:
                    return self.stop("stopped", last_eval, imgs, train_s)
            if self.tty:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            if self.st.step % self.per_epoch == 0 or self.st.step >= self.st.total_steps:
                last_eval = evaluate(self.model, self.data, self.cfg["eval_batch_size"], self.cfg.get("eval_samples"),
                                     d.device, d.rank, W, self.amp, self.cl)
                self.record(last_eval, lr, win)
                win = [0.0, 0.0, 0.0, 0.0]
                self.train_mode()
        return self.summary("finished", last_eval, imgs, train_s)

    def record(self, ev: EvalResult, lr: float, win: list[float]):
        loss_sum, correct, samples = self.d.sum(win[:3])
        step = self.st.step
        if ev.top1 > self.st.best_acc:
            self.st.best_acc, self.st.best_step = ev.top1, step
            if self.d.rank == 0:
                save_tensors(self.out / "best.safetensors", self.weights(),
                             {"step": str(step), "top1": repr(ev.top1), "format": "netgen"})
        if self.plateau.observe(self.recipe.schedule, ev.top1):
            self.say(f"{PROG}: test accuracy saturated: learning rate × {self.plateau.factor:.3f} from now on")
        self.save_checkpoint()
        row = Row(step, step / self.per_epoch, lr,
                  loss_sum / samples if samples else float("nan"),
                  100.0 * correct / samples if samples else float("nan"),
                  ev.loss, ev.top1, ev.top5, samples / max(win[3], 1e-9), self.seconds())
        self.rows.append(row)
        if self.d.rank == 0:
            write_metrics(self.out / "metrics.csv", self.rows)
            note = draw_curves(self.out / "curves.png", self.rows, self.spec.get("name", ""))
            if note and len(self.rows) == 1:
                self.say(f"{PROG}: {note}")
        self.say(f"epoch {row.epoch:.2f}/{self.st.total_steps / self.per_epoch:.2f} (step {step}/{self.st.total_steps}): "
                 f"lr {lr:.4f}, train loss {row.train_loss:.4f} acc {row.train_acc:.2f}%, test loss {ev.loss:.4f} "
                 f"top-1 {ev.top1:.2f}% top-5 {ev.top5:.2f}%, {row.img_per_s:.0f} img/s, {row.seconds:.0f} s")

    def stop(self, outcome, last_eval, imgs, secs) -> dict:
        if self.tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        self.save_checkpoint()
        return self.summary(outcome, last_eval, imgs, secs)

    def summary(self, outcome, ev: EvalResult | None, imgs, secs) -> dict:
        uniq = {id(p): p for p in self.model.parameters()}
        return {
            "outcome": outcome,
            "test_acc": ev.top1 if ev else None, "test_top5": ev.top5 if ev else None,
            "test_loss": ev.loss if ev else None, "test_samples": ev.samples if ev else None,
            "best_acc": self.st.best_acc if math.isfinite(self.st.best_acc) else None,
            "best_step": self.st.best_step, "epochs": self.st.step / self.per_epoch, "steps": self.st.step,
            "total_steps": self.st.total_steps, "seconds": self.seconds(),
            "img_per_s": imgs / max(secs, 1e-9),
            "params": sum(p.numel() for p in uniq.values() if p.requires_grad),
            "device": str(self.d.device), "world_size": self.d.world, "run_dir": str(self.out),
        }


def report(s: dict, out: Path, json_out: bool, quiet: bool):
    if json_out:
        print(json.dumps(s, indent=2))
        return
    if s["outcome"] == "finished":
        if s["test_acc"] is not None:
            print(f"test accuracy {s['test_acc']:.2f}% (top-5 {s['test_top5']:.2f}%, best {s['best_acc']:.2f}% at step "
                  f"{s['best_step']}), {s['epochs']:.2f} epochs, {s['steps']} steps, {s['seconds']:.0f} s, "
                  f"{s['img_per_s']:.0f} img/s on {s['world_size']} × {s['device']}")
        print(f"run directory {out}: curves.png, metrics.csv, best.safetensors, last.safetensors")
    elif not quiet or s["outcome"] == "interrupted":
        why = "stopped (--stop-after-steps)" if s["outcome"] == "stopped" else "interrupted"
        print(f"{PROG}: {why} at step {s['steps']} of {s['total_steps']}; checkpoint saved: continue with "
              f"torchrun -m netgen_torch.train --resume {out} (or netgen train --resume {out})", file=sys.stderr)


def main(argv=None) -> int:
    a = parse(argv)
    d = None
    rank = int(os.environ.get("RANK", "0"))
    try:
        device = a.device
        if device is None and a.resume is not None and (a.resume / "config.json").is_file():
            device = read_json(a.resume / "config.json").get("device")  # the run's own, as netgen does
        d = Dist(device or "auto")
        t = Trainer(a, d)
        s = t.run()
        if d.rank == 0:
            report(s, t.out, a.json, a.quiet)
        return 130 if s["outcome"] == "interrupted" else 0
    except NonFinite as e:
        if rank == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 3
    except (RunError, DataError, RecipeError) as e:
        if rank == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        if rank == 0:
            print(f"{PROG}: error: {e} missing from the spec or config.json; is it a netgen spec / run directory?",
                  file=sys.stderr)
        return 2
    finally:
        if d is not None:
            d.close()


if __name__ == "__main__":
    sys.exit(main())
