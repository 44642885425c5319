//! Data loading for training: Fashion-MNIST (the default, from the Debian package), MNIST,
//! CIFAR-10/100 (binary versions) and ImageNet-layout image folders, with augmentation,
//! normalisation and a multi-threaded, prefetching, deterministic batch loader.
//!
//! * [`DataSource`] names the data (`--data`); [`Data::open`] reads or lists it and reports its
//!   shape in [`DatasetInfo`] (channels, input size, classes), which the architecture follows.
//! * Small data sets (28×28, 32×32) are held in memory as bytes; image folders are listed at open
//!   time and decoded in the loader's workers.
//! * [`Data::train_batches`] yields epoch `epoch` in the order of a permutation drawn from
//!   `(seed, epoch)` only, and each sample's augmentation uses random numbers drawn from
//!   `(seed, epoch, sample index)` only: the batches do not depend on the number of workers.
//! * Normalisation: mean and standard deviation per channel computed from the training set's
//!   pixels for the in-memory data sets; the standard ImageNet values (mean 0.485, 0.456, 0.406,
//!   std 0.229, 0.224, 0.225) for image folders.
//!
//! See [`transform`] for the augmentations and [`folder`] for how unreadable images are handled.
pub mod cifar;
mod error;
pub mod folder;
pub mod idx;
mod loader;
pub mod resample;
mod source;
pub mod transform;

use std::path::PathBuf;
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

pub use error::DataError;
pub use loader::{Batch, Loader};
pub use source::{DataSource, FASHION_MNIST_DIR};

use cifar::Cifar;
use folder::FolderSplit;
use transform::{Normalize, Scratch, SmallAugment};

/// Loading options.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataOptions {
    /// Network input side; `None` = the data set's native side (28, 32), or 224 for image folders.
    pub input_size: Option<usize>,
    /// Training-time augmentation on/off (evaluation never augments).
    pub augment: bool,
    /// Decode/augment worker threads (0 = build batches on the calling thread).
    pub workers: usize,
    /// Bounded queue length, in batches, over all workers.
    pub prefetch: usize,
}

impl Default for DataOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        DataOptions {
            input_size: None,
            augment: true,
            workers: cores.min(4),
            prefetch: 4,
        }
    }
}

/// What the network needs to know about the data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub channels: usize,
    pub input_size: usize,
    pub classes: usize,
    pub train_len: usize,
    pub test_len: usize,
    pub class_names: Vec<String>,
    /// Per-channel normalisation used, in 0..1 pixel units: `(x/255 − mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Largest accepted `input_size`.
const MAX_INPUT: usize = 4096;

/// Small images held in memory: `len` planar `channels × side × side` byte images.
pub(crate) struct MemSplit {
    channels: usize,
    side: usize,
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl MemSplit {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn image(&self, i: usize) -> &[u8] {
        let n = self.channels * self.side * self.side;
        &self.images[i * n..(i + 1) * n]
    }
}

pub(crate) enum Split {
    Mem(MemSplit),
    Folder(FolderSplit),
}

/// Everything the workers need, shared behind an `Arc`.
pub(crate) struct Inner {
    train: Split,
    test: Split,
    channels: usize,
    size: usize,
    norm: Normalize,
    /// Augmentation of in-memory images (`None` when `augment` is off).
    small_aug: Option<SmallAugment>,
    augment: bool,
}

/// splitmix64 finaliser: decorrelates nearby integers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random stream of `(seed, epoch, stream)`; `stream` is a sample index, or `u64::MAX` for
/// the epoch's permutation.
fn rng_for(seed: u64, epoch: u64, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(mix(seed) ^ epoch) ^ stream))
}

impl Inner {
    fn split(&self, train: bool) -> &Split {
        if train { &self.train } else { &self.test }
    }

    /// Writes sample `index` of a split, transformed, into `out` (`C × size × size`) and returns its
    /// label. `aug_rng` is `Some` for augmented training samples.
    fn sample(
        &self,
        train: bool,
        index: usize,
        aug_rng: Option<&mut ChaCha8Rng>,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<i64, DataError> {
        match self.split(train) {
            Split::Mem(m) => {
                let aug = match (aug_rng, self.small_aug) {
                    (Some(r), Some(a)) => Some((a, r)),
                    _ => None,
                };
                transform::small_sample(
                    m.image(index),
                    m.channels,
                    m.side,
                    self.size,
                    aug,
                    &self.norm,
                    out,
                    scratch,
                );
                Ok(m.labels[index] as i64)
            }
            Split::Folder(f) => {
                let d = f.load(index)?;
                transform::large_sample(
                    &d.rgb, d.height, d.width, self.size, aug_rng, &self.norm, out, scratch,
                );
                Ok(d.label as i64)
            }
        }
    }
}

/// An opened data set: training and test splits.
pub struct Data {
    info: DatasetInfo,
    inner: Arc<Inner>,
    opts: DataOptions,
}

/// Per-channel mean and (population) standard deviation of planar byte images, in 0..1 units.
fn channel_stats(images: &[u8], channels: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0u64; channels];
    let mut sq = vec![0u64; channels];
    for (k, p) in images.chunks_exact(plane).enumerate() {
        let (s, q) = p.iter().fold((0u64, 0u64), |(s, q), &v| {
            (s + v as u64, q + (v as u64) * (v as u64))
        });
        sum[k % channels] += s;
        sq[k % channels] += q;
    }
    let count = (images.len() / channels) as f64;
    let mut mean = Vec::new();
    let mut std = Vec::new();
    for c in 0..channels {
        let m = sum[c] as f64 / count;
        let var = (sq[c] as f64 / count - m * m).max(0.0);
        mean.push((m / 255.0) as f32);
        std.push(((var.sqrt() / 255.0) as f32).max(1e-3));
    }
    (mean, std)
}

fn check_size(opts: &DataOptions, native: usize) -> Result<usize, DataError> {
    match opts.input_size {
        None => Ok(native),
        Some(s) if (1..=MAX_INPUT).contains(&s) => Ok(s),
        Some(s) => Err(DataError::Options(format!(
            "input size {s} must be between 1 and {MAX_INPUT}"
        ))),
    }
}

impl Data {
    /// Opens (reads or lists) the data set.
    pub fn open(src: &DataSource, opts: &DataOptions) -> Result<Data, DataError> {
        if opts.prefetch == 0 {
            return Err(DataError::Options("prefetch must be at least 1 batch".into()));
        }
        match src {
            DataSource::FashionMnist(d) | DataSource::Mnist(d) => {
                let fashion = matches!(src, DataSource::FashionMnist(_));
                if !d.is_dir() {
                    let hint = if fashion && *src == DataSource::default() {
                        "install the Debian package dataset-fashion-mnist (scripts/setup.sh does) or pass --data fashion-mnist:DIR"
                    } else {
                        "pass the directory that holds train-images-idx3-ubyte.gz and its three companions"
                    };
                    return Err(DataError::NotFound {
                        what: "data directory".into(),
                        path: d.clone(),
                        hint: hint.into(),
                    });
                }
                let train = idx::read_idx_split(d, "train", 10)?;
                let test = idx::read_idx_split(d, "t10k", 10)?;
                if train.rows != train.cols || (test.rows, test.cols) != (train.rows, train.cols) {
                    return Err(DataError::format(
                        d,
                        format!(
                            "images must be square and the same size in both splits (train {}×{}, test {}×{})",
                            train.rows, train.cols, test.rows, test.cols
                        ),
                    ));
                }
                let names: Vec<String> = if fashion {
                    FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect()
                } else {
                    (0..10).map(|i| i.to_string()).collect()
                };
                let side = train.rows;
                // Digits are not mirror-symmetric: no flip for MNIST.
                let aug = SmallAugment {
                    pad: if side <= 28 { 2 } else { 4 },
                    flip: fashion,
                };
                let mk = |s: idx::IdxSplit| MemSplit {
                    channels: 1,
                    side,
                    images: s.images,
                    labels: s.labels,
                };
                Self::from_memory(src.name(), names, mk(train), mk(test), aug, opts)
            }
            DataSource::Cifar10(d) | DataSource::Cifar100(d) => {
                let kind = if matches!(src, DataSource::Cifar10(_)) {
                    Cifar::Ten
                } else {
                    Cifar::Hundred
                };
                let (train, test) = cifar::read_cifar(d, kind)?;
                let names = cifar::class_names(d, kind);
                let mk = |a: cifar::CifarArrays| MemSplit {
                    channels: 3,
                    side: cifar::SIDE,
                    images: a.images,
                    labels: a.labels,
                };
                Self::from_memory(
                    src.name(),
                    names,
                    mk(train),
                    mk(test),
                    SmallAugment { pad: 4, flip: true },
                    opts,
                )
            }
            DataSource::ImageFolder(d) => {
                let size = check_size(opts, 224)?;
                let (names, train, test) = folder::list(d)?;
                let norm = Normalize {
                    mean: vec![0.485, 0.456, 0.406],
                    std: vec![0.229, 0.224, 0.225],
                };
                let info = DatasetInfo {
                    name: src.name().into(),
                    channels: 3,
                    input_size: size,
                    classes: names.len(),
                    train_len: train.len(),
                    test_len: test.len(),
                    class_names: names,
                    mean: norm.mean.clone(),
                    std: norm.std.clone(),
                };
                let inner = Inner {
                    train: Split::Folder(train),
                    test: Split::Folder(test),
                    channels: 3,
                    size,
                    norm,
                    small_aug: None,
                    augment: opts.augment,
                };
                Ok(Data {
                    info,
                    inner: Arc::new(inner),
                    opts: opts.clone(),
                })
            }
        }
    }

    fn from_memory(
        name: &str,
        class_names: Vec<String>,
        train: MemSplit,
        test: MemSplit,
        aug: SmallAugment,
        opts: &DataOptions,
    ) -> Result<Data, DataError> {
        let size = check_size(opts, train.side)?;
        let (mean, std) = channel_stats(&train.images, train.channels, train.side * train.side);
        let info = DatasetInfo {
            name: name.into(),
            channels: train.channels,
            input_size: size,
            classes: class_names.len(),
            train_len: train.len(),
            test_len: test.len(),
            class_names,
            mean: mean.clone(),
            std: std.clone(),
        };
        let inner = Inner {
            channels: train.channels,
            train: Split::Mem(train),
            test: Split::Mem(test),
            size,
            norm: Normalize { mean, std },
            small_aug: opts.augment.then_some(aug),
            augment: opts.augment,
        };
        Ok(Data {
            info,
            inner: Arc::new(inner),
            opts: opts.clone(),
        })
    }

    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    /// The options the data set was opened with.
    pub fn options(&self) -> &DataOptions {
        &self.opts
    }

    /// Number of full training batches per epoch (`drop_last`): `train_len / batch`.
    pub fn train_batches_per_epoch(&self, batch: usize) -> usize {
        self.info.train_len.checked_div(batch).unwrap_or(0)
    }

    /// The permutation of the training set used in epoch `epoch` (drawn from `(seed, epoch)` only).
    pub fn train_permutation(&self, epoch: u64, seed: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.info.train_len as u32).collect();
        order.shuffle(&mut rng_for(seed, epoch, u64::MAX));
        order
    }

    /// Training batches of epoch `epoch`: `train_len / batch` full batches of the permutation
    /// [`Data::train_permutation`], starting at batch index `skip` (for resuming). With
    /// augmentation on, sample `i`'s random crop/flip come from `(seed, epoch, i)` only.
    pub fn train_batches(&self, epoch: u64, seed: u64, batch: usize, skip: usize) -> Loader {
        let order = self.train_permutation(epoch, seed);
        let total = self.train_batches_per_epoch(batch);
        let job = loader::Job {
            inner: self.inner.clone(),
            train: true,
            augment: self.inner.augment,
            order,
            batch: batch.max(1),
            first: skip.min(total),
            count: total.saturating_sub(skip),
            epoch,
            seed,
        };
        Loader::start(job, self.opts.workers, self.opts.prefetch)
    }

    /// The test split in order, every sample once (the last batch may be smaller), no
    /// augmentation.
    pub fn test_batches(&self, batch: usize) -> Loader {
        let n = self.info.test_len;
        let batch = batch.max(1);
        let job = loader::Job {
            inner: self.inner.clone(),
            train: false,
            augment: false,
            order: (0..n as u32).collect(),
            batch,
            first: 0,
            count: n.div_ceil(batch),
            epoch: 0,
            seed: 0,
        };
        Loader::start(job, self.opts.workers, self.opts.prefetch)
    }

    /// Image files found unreadable so far (image folders only; each was reported on stderr and
    /// replaced by the next readable image of its split).
    pub fn skipped_images(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for s in [&self.inner.train, &self.inner.test] {
            if let Split::Folder(f) = s {
                v.extend(f.skipped());
            }
        }
        v
    }
}
