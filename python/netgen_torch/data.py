"""Training and test data for ``netgen_torch.train`` / ``netgen_torch.eval``: the same four sources,
``--data`` strings, normalisation and augmentation as ``netgen train`` (netgen/src/data).

Sources (``--data``): ``fashion-mnist`` (the Debian package's IDX ``.gz`` files in
``/usr/share/datasets/fashion-mnist``), ``fashion-mnist:DIR``, ``mnist:DIR`` (IDX, ``.gz`` or plain),
``cifar10:DIR`` / ``cifar100:DIR`` (the *binary* versions; CIFAR-100 uses the fine labels) and
``imagefolder:DIR`` (``DIR/train/CLASS/*.jpg|png``, ``DIR/val/CLASS/…``, classes sorted by name).
IDX and CIFAR files are parsed here with numpy (torchvision's CIFAR classes read the pickled
Python version, and unpickling executes code); image folders go through torchvision's
``ImageFolder`` and transforms.

Transforms, as netgen's:

* in-memory data sets (28×28, 32×32): normalisation ``(x/255 − mean[c]) / std[c]`` with the
  per-channel mean and population standard deviation of the training pixels; training
  augmentation = a random crop of the image zero-padded by ``pad`` pixels (2 at ≤ 28 px, 4 above;
  CIFAR 4) and a horizontal flip with probability ½ (not for MNIST digits). When the network input
  differs from the native side the crop is resized (antialiased bilinear).
* image folders: training ``RandomResizedCrop(size, scale=(0.08, 1))`` + flip; evaluation shorter
  side to ``⌊size·256/224⌋`` and a centre crop; ImageNet mean/std.

Data order: epoch ``e`` visits the training set in the order of ``DistributedSampler(shuffle=True,
seed=seed, drop_last=True)`` with ``set_epoch(e)``; with ``W`` processes and a global batch ``B``,
rank ``r`` takes every ``W``-th sample, so global batch ``k`` is the same ``B`` samples for any
``W`` that divides ``B``. A sample's augmentation depends only on ``(seed, epoch, sample index)``
(a splitmix64 hash, as netgen's streams), never on the rank or the number of processes. The
permutation itself is torch's, not netgen's ChaCha8 one: a run resumed across the two trainers
continues at the right step and epoch, but not with the same sample order.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MASK64 = (1 << 64) - 1


class DataError(Exception):
    """Bad ``--data`` or unreadable data: the message is one line that says what to do."""


@dataclass(frozen=True)
class Source:
    """A parsed ``--data`` string: kind (``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``,
    ``imagefolder``) and directory."""

    kind: str
    dir: Path


def parse_source(s: str) -> Source:
    """Parses ``--data`` exactly as netgen's ``DataSource::parse``."""
    s = s.strip()
    kind, sep, d = s.partition(":")
    kind = kind.lower()
    if sep and not d:
        raise DataError(_bad_source(s))
    if kind in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return Source("fashion-mnist", Path(d or FASHION_MNIST_DIR))
    names = {"mnist": "mnist", "cifar10": "cifar10", "cifar-10": "cifar10", "cifar100": "cifar100",
             "cifar-100": "cifar100", "imagefolder": "imagefolder", "image-folder": "imagefolder"}
    if kind in names and d:
        return Source(names[kind], Path(d))
    raise DataError(_bad_source(s))


def _bad_source(s: str) -> str:
    return (f"--data: unknown data source '{s}'; use fashion-mnist, fashion-mnist:DIR, mnist:DIR, "
            "cifar10:DIR, cifar100:DIR or imagefolder:DIR")


# ---------------------------------------------------------------------------------------------
# Readers

def _find_idx(d: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx", 1)
    for s in (stem, dotted):
        for ext in (".gz", ""):
            p = d / f"{s}{ext}"
            if p.is_file():
                return p
    raise DataError(f"IDX file not found: {d / (stem + '.gz')}; the directory must hold {stem}.gz or {stem} "
                    "(train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte)")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (magic ``0x0000 08 ndim``, big-endian dimensions)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\0\0\x08" or raw[3] != ndim:
        raise DataError(f"{path}: not an IDX file of {ndim}-dimensional unsigned bytes (wrong magic)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    n = int(np.prod(dims))
    body = raw[4 + 4 * ndim:]
    if len(body) != n:
        raise DataError(f"{path}: {len(body)} data bytes for dimensions {dims} (truncated file?)")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _read_idx_split(d: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    ip, lp = _find_idx(d, f"{prefix}-images-idx3-ubyte"), _find_idx(d, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(ip, 3), read_idx(lp, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{lp}: {labels.shape[0]} labels but {ip} holds {images.shape[0]} images; the two "
                        "files must come from the same split")
    if images.size == 0:
        raise DataError(f"{ip}: empty image array {list(images.shape)}")
    if labels.max() >= 10:
        raise DataError(f"{lp}: label {int(labels.max())} is outside 0..10")
    return images[:, None, :, :], labels


def _read_cifar(d: Path, hundred: bool) -> tuple[tuple, tuple, list[str]]:
    classes = 100 if hundred else 10
    if not d.is_dir():
        raise DataError(f"CIFAR-{classes} directory not found: {d}; download and unpack the binary version "
                        "from https://www.cs.toronto.edu/~kriz/cifar.html")
    sub = d / ("cifar-100-binary" if hundred else "cifar-10-batches-bin")
    test_name = "test.bin" if hundred else "test_batch.bin"
    if (sub / test_name).is_file():
        d = sub
    train_names = ["train.bin"] if hundred else [f"data_batch_{i}.bin" for i in range(1, 6)]
    lb = 2 if hundred else 1
    rec = lb + 3 * 32 * 32

    def read(names):
        imgs, labs = [], []
        for n in names:
            p = d / n
            if not p.is_file():
                raise DataError(f"CIFAR-{classes} file not found: {p}; the directory must hold the binary "
                                f"version's {', '.join(train_names)} and {test_name}")
            b = np.fromfile(p, dtype=np.uint8)
            if b.size == 0 or b.size % rec:
                raise DataError(f"{p}: {b.size} bytes is not a whole number of {rec}-byte CIFAR-{classes} "
                                "records (file truncated or wrong variant)")
            r = b.reshape(-1, rec)
            lab = r[:, lb - 1]
            if lab.max() >= classes:
                raise DataError(f"{p}: label {int(lab.max())} outside 0..{classes}")
            labs.append(lab)
            imgs.append(r[:, lb:].reshape(-1, 3, 32, 32))
        return np.concatenate(imgs), np.concatenate(labs)

    train, test = read(train_names), read([test_name])
    names_file = d / ("fine_label_names.txt" if hundred else "batches.meta.txt")
    names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()] \
        if names_file.is_file() else []
    if len(names) != classes:
        names = [str(i) for i in range(classes)]
    return train, test, names


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of ``N×C×H×W`` bytes, in 0..1 units (std ≥ 1e-3)."""
    c = images.shape[1]
    x = images.transpose(1, 0, 2, 3).reshape(c, -1)
    s = x.sum(axis=1, dtype=np.uint64).astype(np.float64)
    q = np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64))
    n = x.shape[1]
    mean = s / n
    var = np.maximum(q / n - mean * mean, 0.0)
    return ([float(np.float32(m / 255.0)) for m in mean],
            [max(float(np.float32(np.sqrt(v) / 255.0)), 1e-3) for v in var])


# ---------------------------------------------------------------------------------------------
# Per-sample random streams

def mix(z: int) -> int:
    """splitmix64's finaliser (netgen's ``mix``): decorrelates nearby integers."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def sample_hash(seed: int, epoch: int, index: int) -> int:
    """The 64-bit random word of sample ``index`` in epoch ``epoch`` (independent of the rank)."""
    return mix(mix(mix(seed & MASK64) ^ epoch) ^ index)


# ---------------------------------------------------------------------------------------------
# Data sets

@dataclass
class Info:
    """What the network needs to know about the data."""

    name: str
    channels: int
    input_size: int
    classes: int
    train_len: int
    test_len: int
    class_names: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


class Data:
    """An opened data set; :meth:`train_batch` / :meth:`test_batch` build batches from indices."""

    info: Info

    def train_batch(self, indices: list[int], epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def test_batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MemData(Data):
    """28×28 / 32×32 data sets held in memory as bytes (``N×C×H×W`` uint8)."""

    def __init__(self, name, names, train, test, pad, flip, size, augment):
        (self.xtr, self.ytr), (self.xte, self.yte) = train, test
        side, c = self.xtr.shape[2], self.xtr.shape[1]
        mean, std = channel_stats(self.xtr)
        self.info = Info(name, c, size, len(names), len(self.ytr), len(self.yte), names, mean, std)
        self.side, self.pad, self.flip, self.augment = side, pad, flip, augment
        self._mean = torch.tensor(mean).view(1, c, 1, 1)
        self._std = torch.tensor(std).view(1, c, 1, 1)

    def _finish(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).float()
        if self.info.input_size != self.side:
            s = self.info.input_size
            t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (t / 255.0 - self._mean) / self._std

    def train_batch(self, indices, epoch, seed):
        idx = np.asarray(indices, dtype=np.int64)
        x = self.xtr[idx]
        if self.augment:
            p, s = self.pad, self.side
            padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
            out = np.empty_like(x)
            for k, i in enumerate(indices):
                h = sample_hash(seed, epoch, int(i))
                dy, dx = h % (2 * p + 1), (h >> 16) % (2 * p + 1)
                img = padded[k, :, dy:dy + s, dx:dx + s]
                out[k] = img[:, :, ::-1] if self.flip and (h >> 32) & 1 else img
            x = out
        return self._finish(x), torch.from_numpy(self.ytr[idx].astype(np.int64))

    def test_batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        return self._finish(self.xte[idx]), torch.from_numpy(self.yte[idx].astype(np.int64))


class FolderData(Data):
    """ImageNet-layout folders through torchvision's ``ImageFolder`` and transforms."""

    def __init__(self, d: Path, size: int, augment: bool):
        from torchvision import datasets, transforms as T

        hint = "expected the ImageNet layout DIR/train/CLASS/*.jpg and DIR/val/CLASS/*.jpg"
        for sub in (d, d / "train", d / "val"):
            if not sub.is_dir():
                raise DataError(f"image folder not found: {sub}; {hint}")
        try:
            self.train = datasets.ImageFolder(str(d / "train"))
            self.test = datasets.ImageFolder(str(d / "val"))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"{d}: {e}; {hint}") from None
        missing = set(self.test.classes) - set(self.train.classes)
        if missing:
            raise DataError(f"{d / 'val'}: class folder(s) {sorted(missing)} have no training folder")
        self.test.samples = [(p, self.train.class_to_idx[self.test.classes[y]]) for p, y in self.test.samples]
        norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.t_train = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                                  T.ToTensor(), norm]) if augment else \
            T.Compose([T.Resize(size * 256 // 224), T.CenterCrop(size), T.ToTensor(), norm])
        self.t_test = T.Compose([T.Resize(size * 256 // 224), T.CenterCrop(size), T.ToTensor(), norm])
        self.info = Info("imagefolder", 3, size, len(self.train.classes), len(self.train), len(self.test),
                         list(self.train.classes), IMAGENET_MEAN, IMAGENET_STD)

    def _load(self, ds, i: int):
        path, y = ds.samples[i]
        try:
            return ds.loader(path), y
        except OSError as e:
            raise DataError(f"{path}: unreadable image ({e})") from None

    def train_batch(self, indices, epoch, seed):
        xs, ys = [], []
        for i in indices:
            img, y = self._load(self.train, int(i))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_hash(seed, epoch, int(i)) >> 1)
                xs.append(self.t_train(img))
            ys.append(y)
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)

    def test_batch(self, indices):
        xs, ys = zip(*(self._load(self.test, int(i)) for i in indices))
        return torch.stack([self.t_test(x) for x in xs]), torch.tensor(ys, dtype=torch.int64)


def open_data(source: str, input_size: int | None = None, augment: bool = True) -> Data:
    """Opens the ``--data`` source; ``input_size`` defaults to the native side (224 for folders)."""
    src = parse_source(source)
    if input_size is not None and not 1 <= input_size <= 4096:
        raise DataError(f"input size {input_size} must be between 1 and 4096")
    if src.kind in ("fashion-mnist", "mnist"):
        fashion = src.kind == "fashion-mnist"
        if not src.dir.is_dir():
            hint = ("install the Debian package dataset-fashion-mnist (scripts/setup.sh does) or pass "
                    "--data fashion-mnist:DIR") if fashion and str(src.dir) == FASHION_MNIST_DIR else \
                "pass the directory that holds train-images-idx3-ubyte.gz and its three companions"
            raise DataError(f"data directory not found: {src.dir}; {hint}")
        train, test = _read_idx_split(src.dir, "train"), _read_idx_split(src.dir, "t10k")
        side = train[0].shape[2]
        if train[0].shape[2:] != (side, side) or test[0].shape[2:] != (side, side):
            raise DataError(f"{src.dir}: images must be square and the same size in both splits")
        names = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(10)]
        return MemData(src.kind, list(names), train, test, 2 if side <= 28 else 4, fashion,
                       input_size or side, augment)
    if src.kind in ("cifar10", "cifar100"):
        train, test, names = _read_cifar(src.dir, src.kind == "cifar100")
        return MemData(src.kind, names, train, test, 4, True, input_size or 32, augment)
    return FolderData(src.dir, input_size or 224, augment)


class EpochBatches:
    """The local batches of one epoch on one rank: the order of ``DistributedSampler(shuffle=True,
    seed, drop_last=True)`` for ``epoch``, cut into batches of ``local_batch`` (``global / world``),
    ``len(train) // global`` of them, starting at batch ``skip``."""

    def __init__(self, data: Data, epoch: int, seed: int, global_batch: int, world: int, rank: int,
                 skip: int = 0):
        from torch.utils.data.distributed import DistributedSampler

        n = data.info.train_len
        s = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        s.set_epoch(epoch)
        self.order = list(s)
        self.local = global_batch // world
        self.count = n // global_batch
        self.data, self.epoch, self.seed, self.skip = data, epoch, seed, skip

    def __iter__(self):
        for b in range(self.skip, self.count):
            yield self.data.train_batch(self.order[b * self.local:(b + 1) * self.local], self.epoch, self.seed)


def prefetch(it, workers: int):
    """Runs the iterator ``it`` ``workers`` batches ahead in a thread (0 = inline). numpy and torch
    release the GIL in the copies that dominate batch building."""
    if workers <= 0:
        yield from it
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(2, workers))
    done = object()

    def run():
        try:
            for item in it:
                q.put(item)
        except BaseException as e:  # noqa: BLE001 — handed to the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=run, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)
