//! netgen's data loading (`netgen::data`) checked against independent readers and properties:
//! the IDX and CIFAR readers and the evaluation pipeline against numpy's reading of the same
//! files (fixtures written by numpy at test time, and the real Debian Fashion-MNIST); the
//! image-folder evaluation transform against torchvision's `Resize` + `CenterCrop` on PIL images;
//! determinism of the loader across worker counts, epochs and `skip`; and a clear `DataError` for
//! each kind of bad data.
//!
//! Python-peer tests skip with a message when `.venv` is absent, and fail instead when `CI` is set.
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use netgen::data::{Batch, Data, DataError, DataOptions, DataSource, FASHION_MNIST_DIR, idx};
use tch::Tensor;

/// `true` when the Python peers can run; otherwise prints why the test is skipped (or panics when
/// the `CI` environment variable is set).
fn python_available(test: &str) -> bool {
    peers::available(test)
}

fn run_py(script: &str, args: &[&str]) -> String {
    peers::run_python(script, args).unwrap_or_else(|e| panic!("python peer failed: {e}"))
}

fn opts(workers: usize, augment: bool) -> DataOptions {
    DataOptions {
        input_size: None,
        augment,
        workers,
        prefetch: 3,
    }
}

/// Reads the named tensors of a `.safetensors` file written by `safetensors.numpy.save_file`.
fn read_named(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).expect("read reference safetensors")
}

fn get(named: &[(String, Tensor)], k: &str) -> Tensor {
    named
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, t)| t.shallow_clone())
        .unwrap_or_else(|| panic!("missing {k}"))
}

fn bytes(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t.flatten(0, -1)).unwrap()
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap()
}

/// All batches of a loader, concatenated: (images as f32, labels, per-batch sizes, image shape).
fn collect(loader: netgen::data::Loader) -> (Vec<f32>, Vec<i64>, Vec<usize>, Vec<i64>) {
    let (mut x, mut y, mut sizes, mut shape) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in loader {
        let Batch { images, labels } = b.expect("batch");
        assert_eq!(images.kind(), tch::Kind::Float);
        assert_eq!(labels.kind(), tch::Kind::Int64);
        shape = images.size();
        sizes.push(shape[0] as usize);
        x.extend(floats(&images));
        y.extend(Vec::<i64>::try_from(&labels).unwrap());
    }
    (x, y, sizes, shape)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const IDX_FIXTURE: &str = r#"
import sys, gzip, struct, numpy as np
from safetensors.numpy import save_file
out = sys.argv[1]
rng = np.random.default_rng(7)
def write(name, arr, gz):
    head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{out}/{name}.gz", "wb") as f: f.write(data)
    else:
        open(f"{out}/{name}", "wb").write(data)
tr_x = rng.integers(0, 256, (37, 28, 28), dtype=np.uint8)
tr_y = rng.integers(0, 10, 37, dtype=np.uint8)
te_x = rng.integers(0, 256, (11, 28, 28), dtype=np.uint8)
te_y = rng.integers(0, 10, 11, dtype=np.uint8)
write("train-images-idx3-ubyte", tr_x, True)
write("train-labels-idx1-ubyte", tr_y, True)
write("t10k-images-idx3-ubyte", te_x, False)
write("t10k-labels-idx1-ubyte", te_y, False)
# numpy's own reading of the files just written.
def read(name, gz):
    raw = gzip.open(f"{out}/{name}.gz").read() if gz else open(f"{out}/{name}", "rb").read()
    nd = raw[3]
    dims = struct.unpack(">" + "I" * nd, raw[4:4 + 4 * nd])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)
a = read("train-images-idx3-ubyte", True); b = read("train-labels-idx1-ubyte", True)
c = read("t10k-images-idx3-ubyte", False); d = read("t10k-labels-idx1-ubyte", False)
x = a.astype(np.float64) / 255
mean, std = x.mean(), x.std()
norm = ((c.astype(np.float64) / 255 - mean) / std).astype(np.float32)[:, None]
# PIL's bilinear resize of each test image to 32×32 (the input-size option), then normalised.
from PIL import Image
up = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in c])
norm32 = ((up.astype(np.float64) / 255 - mean) / std).astype(np.float32)[:, None]
save_file({"test_norm32": norm32, "train_x": np.ascontiguousarray(a), "train_y": np.ascontiguousarray(b),
           "test_x": np.ascontiguousarray(c), "test_y": np.ascontiguousarray(d),
           "mean": np.array([mean], np.float32), "std": np.array([std], np.float32),
           "test_norm": norm}, f"{out}/ref.safetensors")
"#;

#[test]
fn idx_reader_and_eval_pipeline_match_numpy() {
    if !python_available("idx_reader_and_eval_pipeline_match_numpy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run_py(IDX_FIXTURE, &[dir.path().to_str().unwrap()]);
    let r = read_named(&dir.path().join("ref.safetensors"));
    for (file, nd, key, shape) in [
        ("train-images-idx3-ubyte.gz", 3, "train_x", vec![37, 28, 28]),
        ("train-labels-idx1-ubyte.gz", 1, "train_y", vec![37]),
        ("t10k-images-idx3-ubyte", 3, "test_x", vec![11, 28, 28]),
        ("t10k-labels-idx1-ubyte", 1, "test_y", vec![11]),
    ] {
        let a = idx::read_idx(&dir.path().join(file), nd).unwrap();
        assert_eq!(a.dims, shape, "{file}");
        assert_eq!(
            a.data,
            bytes(&get(&r, key)),
            "{file}: bytes differ from numpy's reading"
        );
    }
    // Through the whole evaluation pipeline: normalisation statistics and normalised images.
    for workers in [0, 2] {
        let data = Data::open(&DataSource::Mnist(dir.path().into()), &opts(workers, true)).unwrap();
        let info = data.info();
        assert_eq!((info.channels, info.input_size, info.classes), (1, 28, 10));
        assert_eq!((info.train_len, info.test_len), (37, 11));
        assert!((info.mean[0] - floats(&get(&r, "mean"))[0]).abs() < 1e-6);
        assert!((info.std[0] - floats(&get(&r, "std"))[0]).abs() < 1e-6);
        let loader = data.test_batches(4);
        assert_eq!(loader.len(), 3);
        let (x, y, sizes, shape) = collect(loader);
        assert_eq!(sizes, vec![4, 4, 3]);
        assert_eq!(shape[1..], [1, 28, 28]);
        assert!(max_abs_diff(&x, &floats(&get(&r, "test_norm"))) < 1e-5);
        let want: Vec<i64> = bytes(&get(&r, "test_y")).into_iter().map(i64::from).collect();
        assert_eq!(y, want);
    }
    // A network input larger than the native side: images are resized like PIL's bilinear
    // (which rounds to whole grey levels: allow one, 1/255/std ≈ 0.014).
    let o = DataOptions {
        input_size: Some(32),
        ..opts(2, false)
    };
    let data = Data::open(&DataSource::Mnist(dir.path().into()), &o).unwrap();
    assert_eq!(data.info().input_size, 32);
    let (x, _, _, shape) = collect(data.test_batches(5));
    assert_eq!(shape[1..], [1, 32, 32]);
    let d = max_abs_diff(&x, &floats(&get(&r, "test_norm32")));
    assert!(d < 0.015, "resize to 32 differs from PIL by {d}");
}

const CIFAR_FIXTURE: &str = r#"
import sys, os, numpy as np
from safetensors.numpy import save_file
out = sys.argv[1]
rng = np.random.default_rng(11)
def records(n, classes, coarse):
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, classes, n, dtype=np.uint8)
    cols = [y[:, None]]
    if coarse:
        cols.insert(0, rng.integers(0, 20, n, dtype=np.uint8)[:, None])
    return x, y, np.concatenate(cols + [x.reshape(n, -1)], axis=1)
def read(path, lb):
    raw = np.fromfile(path, np.uint8).reshape(-1, lb + 3072)
    return raw[:, lb:].reshape(-1, 3, 32, 32), raw[:, lb - 1]
def ref(train_files, test_file, lb, name):
    tx, ty = zip(*[read(f, lb) for f in train_files])
    tx, ty = np.concatenate(tx), np.concatenate(ty)
    ex, ey = read(test_file, lb)
    x = tx.astype(np.float64) / 255
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    norm = lambda a: ((a.astype(np.float64) / 255 - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    save_file({"train_norm": norm(tx), "train_y": ty.astype(np.int64), "test_norm": norm(ex),
               "test_y": ey.astype(np.int64), "mean": mean.astype(np.float32), "std": std.astype(np.float32)},
              f"{out}/{name}.safetensors")
c10 = f"{out}/c10"; os.makedirs(c10)
for i, n in enumerate([3, 4, 2, 5, 3]):
    records(n, 10, False)[2].tofile(f"{c10}/data_batch_{i + 1}.bin")
records(6, 10, False)[2].tofile(f"{c10}/test_batch.bin")
open(f"{c10}/batches.meta.txt", "w").write("\n".join(f"class{i}" for i in range(10)) + "\n\n")
ref([f"{c10}/data_batch_{i}.bin" for i in range(1, 6)], f"{c10}/test_batch.bin", 1, "ref10")
c100 = f"{out}/c100/cifar-100-binary"; os.makedirs(c100)
records(9, 100, True)[2].tofile(f"{c100}/train.bin")
records(4, 100, True)[2].tofile(f"{c100}/test.bin")
ref([f"{c100}/train.bin"], f"{c100}/test.bin", 2, "ref100")
"#;

#[test]
fn cifar_readers_and_pipeline_match_numpy() {
    if !python_available("cifar_readers_and_pipeline_match_numpy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run_py(CIFAR_FIXTURE, &[dir.path().to_str().unwrap()]);
    for (src, refname, train_len, test_len, classes) in [
        (DataSource::Cifar10(dir.path().join("c10")), "ref10", 17, 6, 10),
        // The archive's sub-directory (cifar-100-binary) is found from its parent.
        (DataSource::Cifar100(dir.path().join("c100")), "ref100", 9, 4, 100),
    ] {
        let r = read_named(&dir.path().join(format!("{refname}.safetensors")));
        let data = Data::open(&src, &opts(3, false)).unwrap();
        let info = data.info().clone();
        assert_eq!((info.channels, info.input_size, info.classes), (3, 32, classes));
        assert_eq!((info.train_len, info.test_len), (train_len, test_len));
        if classes == 10 {
            assert_eq!(info.class_names[0], "class0");
            assert_eq!(info.class_names[9], "class9");
        } else {
            assert_eq!(info.class_names[42], "42");
        }
        assert!(max_abs_diff(&info.mean, &floats(&get(&r, "mean"))) < 1e-6);
        assert!(max_abs_diff(&info.std, &floats(&get(&r, "std"))) < 1e-6);
        let (x, y, _, shape) = collect(data.test_batches(4));
        assert_eq!(shape[1..], [3, 32, 32]);
        assert!(max_abs_diff(&x, &floats(&get(&r, "test_norm"))) < 1e-5);
        assert_eq!(y, Vec::<i64>::try_from(get(&r, "test_y")).unwrap());
        // Training batches without augmentation: the epoch's permutation of the numpy arrays,
        // full batches only.
        let perm = data.train_permutation(3, 9);
        let (x, y, sizes, _) = collect(data.train_batches(3, 9, 4, 0));
        assert_eq!(sizes, vec![4; train_len / 4]);
        let (tx, ty) = (
            floats(&get(&r, "train_norm")),
            Vec::<i64>::try_from(get(&r, "train_y")).unwrap(),
        );
        let per = 3 * 32 * 32;
        for (k, &i) in perm.iter().take(sizes.len() * 4).enumerate() {
            let i = i as usize;
            assert_eq!(y[k], ty[i]);
            assert!(max_abs_diff(&x[k * per..(k + 1) * per], &tx[i * per..(i + 1) * per]) < 1e-5);
        }
    }
}

const FASHION_PEER: &str = r#"
import sys, gzip, numpy as np
d = sys.argv[1]
for split in ["train", "t10k"]:
    x = np.frombuffer(gzip.open(f"{d}/{split}-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    y = np.frombuffer(gzip.open(f"{d}/{split}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    x = x.reshape(len(y), 28, 28)
    print(split, len(y), int(x.sum(dtype=np.uint64)), int(y.sum(dtype=np.uint64)), x[0].tobytes().hex(),
          x[-1].tobytes().hex(), int(y[0]), int(y[-1]))
"#;

#[test]
fn debian_fashion_mnist_matches_numpy() {
    if !Path::new(FASHION_MNIST_DIR).is_dir() {
        if std::env::var_os("CI").is_some() {
            panic!("{FASHION_MNIST_DIR} is missing: install the Debian package dataset-fashion-mnist");
        }
        eprintln!("skipping: {FASHION_MNIST_DIR} is missing (Debian package dataset-fashion-mnist)");
        return;
    }
    if !python_available("debian_fashion_mnist_matches_numpy") {
        return;
    }
    let out = run_py(FASHION_PEER, &[FASHION_MNIST_DIR]);
    let dir = Path::new(FASHION_MNIST_DIR);
    let mut checked = 0;
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let s = idx::read_idx_split(dir, f[0], 10).unwrap();
        let n: usize = f[1].parse().unwrap();
        assert_eq!(s.labels.len(), n);
        assert_eq!((s.rows, s.cols), (28, 28));
        assert_eq!(
            s.images.iter().map(|&v| v as u64).sum::<u64>(),
            f[2].parse::<u64>().unwrap()
        );
        assert_eq!(
            s.labels.iter().map(|&v| v as u64).sum::<u64>(),
            f[3].parse::<u64>().unwrap()
        );
        let hex = |b: &[u8]| b.iter().map(|v| format!("{v:02x}")).collect::<String>();
        assert_eq!(hex(&s.images[..784]), f[4]);
        assert_eq!(hex(&s.images[(n - 1) * 784..]), f[5]);
        assert_eq!(
            (s.labels[0].to_string(), s.labels[n - 1].to_string()),
            (f[6].into(), f[7].into())
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "python output:\n{out}");
    let data = Data::open(&DataSource::default(), &opts(0, true)).unwrap();
    let i = data.info();
    assert_eq!(
        (i.train_len, i.test_len, i.channels, i.input_size, i.classes),
        (60000, 10000, 1, 28, 10)
    );
    assert_eq!(i.class_names[9], "Ankle boot");
    // The published Fashion-MNIST training-set statistics: mean 0.2860, std 0.3530.
    assert!(
        (i.mean[0] - 0.2860).abs() < 1e-4 && (i.std[0] - 0.3530).abs() < 1e-4,
        "{:?} {:?}",
        i.mean,
        i.std
    );
}

const FOLDER_FIXTURE: &str = r#"
import sys, os, numpy as np, torch
from PIL import Image
import torchvision.transforms as T
out = sys.argv[1]
rng = np.random.default_rng(5)
def img(h, w, gray=False):
    # Smooth content plus noise, like a photograph.
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 90 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None] * np.array([1, -0.5, 0.7])
    a = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(a[..., 0] if gray else a)
files = {
    "train/cat/1.png": img(40, 50), "train/cat/2.jpg": img(61, 45), "train/dog/1.png": img(33, 70),
    "train/dog/2.png": img(80, 80), "train/dog/3.PNG": img(35, 36),
    "val/cat/a.png": img(48, 64, gray=True), "val/dog/b.png": img(100, 37), "val/dog/c.jpg": img(52, 75),
}
for name, im in files.items():
    os.makedirs(os.path.dirname(f"{out}/{name}"), exist_ok=True)
    if name.endswith(".jpg"):
        im.save(f"{out}/{name}", quality=95, subsampling=0)
    else:
        im.save(f"{out}/{name}")
open(f"{out}/train/dog/notes.txt", "w").write("not an image")
open(f"{out}/val/dog/broken.jpg", "wb").write(b"\xff\xd8\xff\xe0 this is not a JPEG")
tf = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
ref = torch.stack([tf(Image.open(f"{out}/val/{p}").convert("RGB")) for p in ["cat/a.png", "dog/b.png", "dog/c.jpg"]])
from safetensors.numpy import save_file
save_file({"val": ref.contiguous().numpy()}, f"{out}/ref.safetensors")
"#;

#[test]
fn image_folder_matches_torchvision_and_skips_corrupt_files() {
    if !python_available("image_folder_matches_torchvision_and_skips_corrupt_files") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    std::fs::create_dir(&root).unwrap();
    run_py(FOLDER_FIXTURE, &[root.to_str().unwrap()]);
    let r = read_named(&root.join("ref.safetensors"));
    let reference = floats(&get(&r, "val"));
    let o = DataOptions {
        input_size: Some(32),
        augment: true,
        workers: 2,
        prefetch: 2,
    };
    let data = Data::open(&DataSource::ImageFolder(root.clone()), &o).unwrap();
    let info = data.info().clone();
    assert_eq!(info.class_names, vec!["cat", "dog"]);
    assert_eq!((info.channels, info.input_size, info.classes), (3, 32, 2));
    // train: 2 cats + 3 dogs (the .txt is ignored, .PNG counts); val: a, b, broken, c.
    assert_eq!((info.train_len, info.test_len), (5, 4));
    let (x, y, sizes, shape) = collect(data.test_batches(3));
    assert_eq!(sizes, vec![3, 1]);
    assert_eq!(shape[1..], [3, 32, 32]);
    // The corrupt file (sorted between b.png and c.jpg) is replaced by the next readable image.
    assert_eq!(y, vec![0, 1, 1, 1]);
    assert_eq!(data.skipped_images(), vec![root.join("val/dog/broken.jpg")]);
    let per = 3 * 32 * 32;
    for (k, refk) in [(0, 0), (1, 1), (2, 2), (3, 2)] {
        let got = &x[k * per..(k + 1) * per];
        let want = &reference[refk * per..(refk + 1) * per];
        let mean_diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).sum::<f32>() / per as f32;
        let max_diff = max_abs_diff(got, want);
        // PIL rounds to u8 between its two resampling passes and the JPEG decoders differ by a
        // grey level or two: allow 2 grey levels at most (2/255/0.224 = 0.035), under 1 on average (1/255/0.224 = 0.0175).
        assert!(
            max_diff < 0.036 && mean_diff < 0.01,
            "sample {k}: max {max_diff}, mean {mean_diff}"
        );
    }
    // Training batches: RandomResizedCrop + flip at 32×32, reproducible, labels in range.
    let (a, ya, sizes, shape) = collect(data.train_batches(0, 1, 2, 0));
    assert_eq!((sizes, shape), (vec![2, 2], vec![2, 3, 32, 32]));
    assert!(a.iter().all(|v| v.is_finite() && v.abs() < 3.0));
    assert!(ya.iter().all(|&l| l == 0 || l == 1));
    let (b, yb, _, _) = collect(data.train_batches(0, 1, 2, 0));
    assert_eq!((a, ya), (b, yb));
}

/// Writes an IDX file: magic `0x0000 08 nd`, big-endian dims, then `data`; gzip when `gz`.
fn write_idx(path: &Path, magic_nd: u8, dims: &[u32], data: &[u8], gz: bool) {
    let mut raw = vec![0, 0, 8, magic_nd];
    for d in dims {
        raw.extend(d.to_be_bytes());
    }
    raw.extend_from_slice(data);
    if gz {
        let mut e = GzEncoder::new(std::fs::File::create(path).unwrap(), Compression::fast());
        e.write_all(&raw).unwrap();
        e.finish().unwrap();
    } else {
        std::fs::write(path, raw).unwrap();
    }
}

/// Pseudo-random bytes (an LCG), so the fixtures need no Python.
fn lcg_bytes(n: usize, seed: u64, modulo: u8) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % modulo as u64) as u8
        })
        .collect()
}

/// A Fashion-MNIST-format directory with `n_train` and `n_test` 28×28 images.
fn idx_dir(n_train: u32, n_test: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (p, n, seed) in [("train", n_train, 1), ("t10k", n_test, 2)] {
        let images = lcg_bytes(n as usize * 784, seed, 255);
        write_idx(
            &d.join(format!("{p}-images-idx3-ubyte.gz")),
            3,
            &[n, 28, 28],
            &images,
            true,
        );
        let labels = lcg_bytes(n as usize, seed + 10, 10);
        write_idx(
            &d.join(format!("{p}-labels-idx1-ubyte.gz")),
            1,
            &[n],
            &labels,
            true,
        );
    }
    dir
}

#[test]
fn batches_are_deterministic_across_workers_epochs_and_skip() {
    let dir = idx_dir(40, 10);
    let src = DataSource::FashionMnist(dir.path().into());
    let run = |workers: usize, epoch: u64, seed: u64, skip: usize| {
        let data = Data::open(&src, &opts(workers, true)).unwrap();
        assert_eq!(data.train_batches_per_epoch(8), 5);
        let loader = data.train_batches(epoch, seed, 8, skip);
        assert_eq!(loader.len(), 5 - skip);
        collect(loader)
    };
    let base = run(0, 2, 5, 0);
    assert_eq!(base.2, vec![8; 5]);
    for workers in [1, 3] {
        let other = run(workers, 2, 5, 0);
        assert_eq!(
            (&base.0, &base.1),
            (&other.0, &other.1),
            "{workers} workers give other batches"
        );
    }
    // skip = k gives the batches after the first k.
    let per = 784;
    let skipped = run(3, 2, 5, 2);
    assert_eq!(skipped.0, base.0[2 * 8 * per..]);
    assert_eq!(skipped.1, base.1[16..]);
    // Another epoch or seed: another permutation and other augmentations.
    let data = Data::open(&src, &opts(0, true)).unwrap();
    let p2 = data.train_permutation(2, 5);
    let mut sorted = p2.clone();
    sorted.sort();
    assert_eq!(sorted, (0..40).collect::<Vec<u32>>(), "not a permutation");
    assert_ne!(p2, data.train_permutation(3, 5));
    assert_ne!(p2, data.train_permutation(2, 6));
    assert_ne!(base.0, run(0, 3, 5, 0).0);
    // Augmentation changes images; without it a training sample is its evaluation image.
    let plain = Data::open(&src, &opts(2, false)).unwrap();
    let (px, _, _, _) = collect(plain.train_batches(2, 5, 8, 0));
    assert_ne!(px, base.0);
    let (tx, _, _, _) = collect(plain.test_batches(100));
    assert_eq!(tx.len(), 10 * per);
    // The training side may share the data set across threads and move loaders.
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    send_sync(&data);
    send(&data.test_batches(4));
    // Dropping a loader early stops its workers (this would hang otherwise).
    let mut early = Data::open(&src, &opts(3, true))
        .unwrap()
        .train_batches(0, 0, 1, 0);
    assert!(early.next().unwrap().is_ok());
    drop(early);
}

/// Training augmentation of 28×28 images is a crop of the image zero-padded by 2 pixels, then
/// possibly a horizontal flip: every augmented sample equals one of the 5×5×2 candidates built
/// here by brute force from the raw bytes, and the draws cover shifts in both directions and both
/// flips.
#[test]
fn small_image_augmentation_is_a_padded_crop_and_flip() {
    let dir = idx_dir(64, 4);
    let raw = lcg_bytes(64 * 784, 1, 255);
    let data = Data::open(&DataSource::FashionMnist(dir.path().into()), &opts(2, true)).unwrap();
    let (mean, std) = (data.info().mean[0], data.info().std[0]);
    let perm = data.train_permutation(1, 3);
    let (x, _, _, _) = collect(data.train_batches(1, 3, 16, 0));
    let (pad, side) = (2i64, 28i64);
    let mut seen = std::collections::BTreeSet::new();
    for (k, &i) in perm.iter().enumerate() {
        let src = &raw[i as usize * 784..(i as usize + 1) * 784];
        let got = &x[k * 784..(k + 1) * 784];
        let mut found = None;
        for dy in 0..=2 * pad {
            for dx in 0..=2 * pad {
                for flip in [false, true] {
                    let cand: Vec<f32> = (0..side * side)
                        .map(|p| {
                            let (y, mut xx) = (p / side, p % side);
                            if flip {
                                xx = side - 1 - xx;
                            }
                            let (sy, sx) = (y + dy - pad, xx + dx - pad);
                            let v = if (0..side).contains(&sy) && (0..side).contains(&sx) {
                                src[(sy * side + sx) as usize] as f32
                            } else {
                                0.0
                            };
                            (v / 255.0 - mean) / std
                        })
                        .collect();
                    if max_abs_diff(&cand, got) < 1e-5 {
                        found = Some((dy, dx, flip));
                    }
                }
            }
        }
        seen.insert(
            found.unwrap_or_else(|| panic!("sample {k} (image {i}) is no padded crop/flip of its image")),
        );
    }
    assert!(
        seen.iter().any(|s| s.2) && seen.iter().any(|s| !s.2),
        "flips: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.0 == 0) && seen.iter().any(|s| s.0 == 4),
        "shifts: {seen:?}"
    );
    assert!(seen.len() > 15, "only {} distinct crops in 64 draws", seen.len());
}

/// Opens a source and returns the error, checking it is one line.
fn open_err(src: DataSource) -> DataError {
    let e = match Data::open(&src, &opts(0, true)) {
        Ok(_) => panic!("{src} opened although it is bad"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(
        !msg.contains('\n') && !msg.is_empty(),
        "not a one-line message: {msg:?}"
    );
    e
}

#[test]
fn bad_idx_data_gives_clear_errors() {
    let missing = PathBuf::from("/nonexistent/netgen-data");
    assert!(matches!(
        open_err(DataSource::Mnist(missing)),
        DataError::NotFound { .. }
    ));

    let d = idx_dir(40, 10);
    let p = |n: &str| d.path().join(n);
    let src = DataSource::Mnist(d.path().into());
    // A missing file.
    std::fs::remove_file(p("t10k-labels-idx1-ubyte.gz")).unwrap();
    let e = open_err(src.clone());
    assert!(
        matches!(e, DataError::NotFound { .. }) && e.to_string().contains("t10k-labels"),
        "{e}"
    );
    // Plain (not gzip) labels are accepted; one label too few is a count mismatch.
    write_idx(&p("t10k-labels-idx1-ubyte"), 1, &[9], &[1; 9], false);
    let e = open_err(src.clone());
    assert!(
        e.to_string().contains("9 labels") && e.to_string().contains("10 images"),
        "{e}"
    );
    // A label outside 0..10.
    write_idx(
        &p("t10k-labels-idx1-ubyte"),
        1,
        &[10],
        &[1, 2, 3, 10, 0, 0, 0, 0, 0, 0],
        false,
    );
    assert!(open_err(src.clone()).to_string().contains("label 10 at index 3"));
    write_idx(&p("t10k-labels-idx1-ubyte"), 1, &[10], &[1; 10], false);
    assert!(Data::open(&src, &opts(0, true)).is_ok());
    // Wrong magic (a label file where images are expected).
    write_idx(&p("t10k-images-idx3-ubyte.gz"), 1, &[7840], &[0; 7840], true);
    assert!(open_err(src.clone()).to_string().contains("magic"));
    // Truncated data, gzip and plain: the header promises more bytes than there are; the header
    // of a plain file is checked against its length before reading.
    write_idx(
        &p("t10k-images-idx3-ubyte.gz"),
        3,
        &[10, 28, 28],
        &[0; 7000],
        true,
    );
    assert!(open_err(src.clone()).to_string().contains("truncated"));
    std::fs::remove_file(p("t10k-images-idx3-ubyte.gz")).unwrap();
    write_idx(
        &p("t10k-images-idx3-ubyte"),
        3,
        &[4_000_000, 28, 28],
        &[0; 7840],
        false,
    );
    assert!(matches!(open_err(src.clone()), DataError::Format { .. }));
    // Trailing bytes.
    write_idx(&p("t10k-images-idx3-ubyte"), 3, &[10, 28, 28], &[0; 7841], false);
    assert!(matches!(open_err(src.clone()), DataError::Format { .. }));
    // Truncated inside the header, and a .gz that is not gzip.
    std::fs::write(p("t10k-images-idx3-ubyte"), [0u8, 0, 8]).unwrap();
    assert!(open_err(src.clone()).to_string().contains("truncated"));
    std::fs::remove_file(p("t10k-images-idx3-ubyte")).unwrap();
    std::fs::write(p("t10k-images-idx3-ubyte.gz"), b"plain text, not gzip").unwrap();
    assert!(matches!(
        open_err(src.clone()),
        DataError::Format { .. } | DataError::Io { .. }
    ));
    // Non-square images.
    write_idx(
        &p("t10k-images-idx3-ubyte.gz"),
        3,
        &[10, 28, 27],
        &[0; 7560],
        true,
    );
    assert!(open_err(src.clone()).to_string().contains("square"));
    // An impossible input size.
    write_idx(
        &p("t10k-images-idx3-ubyte.gz"),
        3,
        &[10, 28, 28],
        &[0; 7840],
        true,
    );
    let o = DataOptions {
        input_size: Some(0),
        ..opts(0, true)
    };
    assert!(matches!(Data::open(&src, &o), Err(DataError::Options(_))));
}

#[test]
fn bad_cifar_and_folder_data_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("c10");
    std::fs::create_dir(&c).unwrap();
    let rec = |label: u8| {
        let mut r = vec![label];
        r.extend(vec![7u8; 3072]);
        r
    };
    for i in 1..=5 {
        std::fs::write(c.join(format!("data_batch_{i}.bin")), rec(1)).unwrap();
    }
    std::fs::write(c.join("test_batch.bin"), rec(2)).unwrap();
    assert_eq!(
        Data::open(&DataSource::Cifar10(c.clone()), &opts(0, true))
            .unwrap()
            .info()
            .train_len,
        5
    );
    // Read as CIFAR-100 the record size is wrong.
    let e = open_err(DataSource::Cifar100(c.clone()));
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");
    std::fs::copy(c.join("test_batch.bin"), c.join("test.bin")).unwrap();
    std::fs::copy(c.join("data_batch_1.bin"), c.join("train.bin")).unwrap();
    assert!(
        open_err(DataSource::Cifar100(c.clone()))
            .to_string()
            .contains("whole number")
    );
    // A truncated batch, a label out of range, a missing batch.
    let mut t = rec(1);
    t.pop();
    std::fs::write(c.join("data_batch_3.bin"), t).unwrap();
    assert!(
        open_err(DataSource::Cifar10(c.clone()))
            .to_string()
            .contains("data_batch_3")
    );
    std::fs::write(c.join("data_batch_3.bin"), rec(10)).unwrap();
    assert!(
        open_err(DataSource::Cifar10(c.clone()))
            .to_string()
            .contains("label 10")
    );
    std::fs::remove_file(c.join("data_batch_3.bin")).unwrap();
    assert!(matches!(
        open_err(DataSource::Cifar10(c.clone())),
        DataError::NotFound { .. }
    ));
    assert!(matches!(
        open_err(DataSource::Cifar10(d.path().join("none"))),
        DataError::NotFound { .. }
    ));

    // Image folders: missing root, missing val/, an empty class folder, an unknown val class.
    let f = d.path().join("folder");
    assert!(matches!(
        open_err(DataSource::ImageFolder(f.clone())),
        DataError::NotFound { .. }
    ));
    let png = |p: &Path| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(9, 7, image::Rgb([10, 200, 30]))
            .save(p)
            .unwrap();
    };
    png(&f.join("train/a/x.png"));
    png(&f.join("train/b/y.png"));
    assert!(
        open_err(DataSource::ImageFolder(f.clone()))
            .to_string()
            .contains("val")
    );
    png(&f.join("val/a/z.png"));
    assert!(Data::open(&DataSource::ImageFolder(f.clone()), &opts(0, true)).is_ok());
    std::fs::create_dir_all(f.join("train/c")).unwrap();
    std::fs::write(f.join("train/c/readme.txt"), "no images here").unwrap();
    assert!(matches!(
        open_err(DataSource::ImageFolder(f.clone())),
        DataError::EmptyClass(_)
    ));
    std::fs::remove_dir_all(f.join("train/c")).unwrap();
    png(&f.join("val/zebra/z.png"));
    assert!(
        open_err(DataSource::ImageFolder(f.clone()))
            .to_string()
            .contains("zebra")
    );
    std::fs::remove_dir_all(f.join("val/zebra")).unwrap();
    // A split whose every image is corrupt: loading gives a Decode error, not a panic.
    std::fs::write(f.join("val/a/z.png"), b"garbage").unwrap();
    let data = Data::open(&DataSource::ImageFolder(f.clone()), &opts(2, true)).unwrap();
    let mut l = data.test_batches(4);
    match l.next() {
        Some(Err(e @ DataError::Decode { .. })) => assert!(!e.to_string().contains('\n'), "{e}"),
        Some(Err(e)) => panic!("expected a decode error, got {e}"),
        Some(Ok(_)) => panic!("a batch from unreadable images"),
        None => panic!("no batch and no error"),
    }
    assert!(l.next().is_none());
}
