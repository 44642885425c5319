//! What the training loop reads: a [`TrainData`] gives the data set's shape, the training batches of
//! an epoch (a permutation fixed by the seed and the epoch, so a resumed run sees the same batches)
//! and the test split in order.
//!
//! Implemented by [`crate::data::Data`] (the real loaders) and by [`InMemoryData`], a small
//! in-memory data set for tests and benches.
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// Shape of a data set: what the network's input and head must fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataShape {
    /// Human-readable name ("fashion-mnist", …).
    pub name: String,
    /// Image channels.
    pub channels: usize,
    /// Image side in pixels (as fed to the network).
    pub input_size: usize,
    /// Number of classes.
    pub classes: usize,
    /// Training samples.
    pub train_len: usize,
    /// Test samples.
    pub test_len: usize,
}

/// One batch: `images (N, C, H, W)` f32 and `labels (N)` i64, on the CPU.
pub type BatchResult = Result<(Tensor, Tensor), String>;

/// An iterator of batches.
pub type Batches<'a> = Box<dyn Iterator<Item = BatchResult> + 'a>;

/// A data set the trainer can read.
pub trait TrainData {
    /// The data set's shape.
    fn shape(&self) -> DataShape;
    /// Training batches of `epoch` (drop-last, so `train_len / batch` of them), starting at batch
    /// index `skip`; the order depends only on `(seed, epoch)`.
    fn train_batches(&self, epoch: u64, seed: u64, batch: usize, skip: usize) -> Batches<'_>;
    /// The test split in order, every sample once (the last batch may be smaller).
    fn test_batches(&self, batch: usize) -> Batches<'_>;
    /// Training batches per epoch (drop-last).
    fn train_batches_per_epoch(&self, batch: usize) -> usize {
        self.shape().train_len / batch.max(1)
    }
}

impl TrainData for crate::data::Data {
    fn shape(&self) -> DataShape {
        let i = self.info();
        DataShape {
            name: i.name.clone(),
            channels: i.channels,
            input_size: i.input_size,
            classes: i.classes,
            train_len: i.train_len,
            test_len: i.test_len,
        }
    }

    fn train_batches(&self, epoch: u64, seed: u64, batch: usize, skip: usize) -> Batches<'_> {
        Box::new(
            crate::data::Data::train_batches(self, epoch, seed, batch, skip)
                .map(|b| b.map(|b| (b.images, b.labels)).map_err(|e| e.to_string())),
        )
    }

    fn test_batches(&self, batch: usize) -> Batches<'_> {
        Box::new(
            crate::data::Data::test_batches(self, batch)
                .map(|b| b.map(|b| (b.images, b.labels)).map_err(|e| e.to_string())),
        )
    }

    fn train_batches_per_epoch(&self, batch: usize) -> usize {
        crate::data::Data::train_batches_per_epoch(self, batch)
    }
}

/// A data set held in memory as tensors (no augmentation).
#[derive(Debug)]
pub struct InMemoryData {
    /// Name reported by [`TrainData::shape`].
    pub name: String,
    /// Training images `(N, C, H, W)` f32.
    pub train_images: Tensor,
    /// Training labels `(N)` i64.
    pub train_labels: Tensor,
    /// Test images.
    pub test_images: Tensor,
    /// Test labels.
    pub test_labels: Tensor,
    /// Number of classes.
    pub classes: usize,
}

impl InMemoryData {
    /// A learnable synthetic task: `classes` random prototype images (seeded), each sample a
    /// prototype plus Gaussian noise of standard deviation `noise`; labels are the prototype
    /// indices. `train` and `test` samples of `channels × size × size`.
    pub fn synthetic(
        train: usize,
        test: usize,
        classes: usize,
        channels: usize,
        size: usize,
        noise: f64,
        seed: i64,
    ) -> Self {
        tch::manual_seed(seed);
        let (c, s) = (channels as i64, size as i64);
        let protos = Tensor::randn([classes as i64, c, s, s], (Kind::Float, tch::Device::Cpu));
        let make = |n: usize| {
            let labels = Tensor::randint(classes as i64, [n as i64], (Kind::Int64, tch::Device::Cpu));
            let images = protos.index_select(0, &labels)
                + Tensor::randn([n as i64, c, s, s], (Kind::Float, tch::Device::Cpu)) * noise;
            (images, labels)
        };
        let (train_images, train_labels) = make(train);
        let (test_images, test_labels) = make(test);
        Self {
            name: "synthetic".into(),
            train_images,
            train_labels,
            test_images,
            test_labels,
            classes,
        }
    }
}

/// A seed for the permutation of `epoch` under `seed` (SplitMix64 of both, so neighbouring epochs
/// and seeds give unrelated streams).
pub fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    let mut z = seed
        ^ epoch
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TrainData for InMemoryData {
    fn shape(&self) -> DataShape {
        let s = self.train_images.size();
        DataShape {
            name: self.name.clone(),
            channels: s[1] as usize,
            input_size: s[2] as usize,
            classes: self.classes,
            train_len: s[0] as usize,
            test_len: self.test_images.size()[0] as usize,
        }
    }

    fn train_batches(&self, epoch: u64, seed: u64, batch: usize, skip: usize) -> Batches<'_> {
        let n = self.train_images.size()[0] as usize;
        let mut idx: Vec<i64> = (0..n as i64).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(epoch_seed(seed, epoch)));
        let batches = n / batch.max(1);
        Box::new((skip..batches).map(move |b| {
            let sel = Tensor::from_slice(&idx[b * batch..(b + 1) * batch]);
            Ok((
                self.train_images.index_select(0, &sel),
                self.train_labels.index_select(0, &sel),
            ))
        }))
    }

    fn test_batches(&self, batch: usize) -> Batches<'_> {
        let n = self.test_images.size()[0];
        let batch = batch.max(1) as i64;
        Box::new((0..n).step_by(batch as usize).map(move |start| {
            let len = batch.min(n - start);
            Ok((
                self.test_images.narrow(0, start, len),
                self.test_labels.narrow(0, start, len),
            ))
        }))
    }
}
