//! The batch loader: worker threads build batches into bounded queues, the consumer takes them in
//! order.
//!
//! With `W` workers, worker `w` builds batches `w, w + W, w + 2W, …` and sends each into its own
//! bounded channel (capacity `⌈prefetch / W⌉`); the consumer reads batch `b` from channel
//! `b mod W`. Batch contents depend only on the job (indices, seed, epoch), never on `W`, and
//! the memory held is bounded by the queue lengths. Dropping the loader raises a stop flag that
//! the workers check between samples and closes the channels, then joins the workers.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use tch::Tensor;

use super::transform::Scratch;
use super::{DataError, Inner, rng_for};

/// One batch, on the CPU.
pub struct Batch {
    /// `(N, C, H, W)` `f32`, normalised: `(x/255 − mean) / std`.
    pub images: Tensor,
    /// `(N,)` `i64` class labels.
    pub labels: Tensor,
}

/// What a loader produces: batches `first .. first + count` of `order` cut into `batch`-sized
/// pieces (the last may be shorter).
pub(crate) struct Job {
    pub inner: Arc<Inner>,
    pub train: bool,
    pub augment: bool,
    pub order: Vec<u32>,
    pub batch: usize,
    pub first: usize,
    pub count: usize,
    pub epoch: u64,
    pub seed: u64,
}

impl Job {
    fn indices(&self, b: usize) -> &[u32] {
        let s = (self.first + b) * self.batch;
        &self.order[s..(s + self.batch).min(self.order.len())]
    }

    /// Builds batch `b` of this job; `Ok(None)` when `stop` was raised meanwhile.
    fn build(&self, b: usize, scratch: &mut Scratch, stop: &AtomicBool) -> Result<Option<Batch>, DataError> {
        let idx = self.indices(b);
        let (c, s) = (self.inner.channels, self.inner.size);
        let per = c * s * s;
        let mut images = vec![0f32; idx.len() * per];
        let mut labels = Vec::with_capacity(idx.len());
        for (k, &i) in idx.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let mut rng = self.augment.then(|| rng_for(self.seed, self.epoch, i as u64));
            let out = &mut images[k * per..(k + 1) * per];
            labels.push(
                self.inner
                    .sample(self.train, i as usize, rng.as_mut(), out, scratch)?,
            );
        }
        let n = idx.len() as i64;
        Ok(Some(Batch {
            images: Tensor::from_slice(&images).view([n, c as i64, s as i64, s as i64]),
            labels: Tensor::from_slice(&labels),
        }))
    }
}

enum Mode {
    Inline {
        job: Job,
        scratch: Scratch,
        stop: AtomicBool,
    },
    Threads {
        rxs: Vec<Receiver<Result<Batch, DataError>>>,
        stop: Arc<AtomicBool>,
        handles: Vec<JoinHandle<()>>,
    },
}

/// Iterator over the batches of one pass, prefetched by worker threads. Yields `Err` once and then
/// ends if a batch cannot be built.
pub struct Loader {
    len: usize,
    next: usize,
    mode: Mode,
}

fn worker(
    job: Arc<Job>,
    w: usize,
    stride: usize,
    tx: SyncSender<Result<Batch, DataError>>,
    stop: Arc<AtomicBool>,
) {
    let mut scratch = Scratch::default();
    for b in (w..job.count).step_by(stride) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let r = match job.build(b, &mut scratch, &stop) {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = r.is_err();
        if tx.send(r).is_err() || failed {
            return;
        }
    }
}

impl Loader {
    pub(crate) fn start(job: Job, workers: usize, prefetch: usize) -> Loader {
        let len = job.count;
        let w = workers.min(len);
        if w == 0 {
            return Loader {
                len,
                next: 0,
                mode: Mode::Inline {
                    job,
                    scratch: Scratch::default(),
                    stop: AtomicBool::new(false),
                },
            };
        }
        let job = Arc::new(job);
        let stop = Arc::new(AtomicBool::new(false));
        let cap = prefetch.div_ceil(w).max(1);
        let mut rxs = Vec::with_capacity(w);
        let mut handles = Vec::with_capacity(w);
        for k in 0..w {
            let (tx, rx) = sync_channel(cap);
            let (job, stop) = (job.clone(), stop.clone());
            let h = std::thread::Builder::new()
                .name(format!("netgen-data-{k}"))
                .spawn(move || worker(job, k, w, tx, stop))
                .expect("spawning a data loader thread");
            rxs.push(rx);
            handles.push(h);
        }
        Loader {
            len,
            next: 0,
            mode: Mode::Threads { rxs, stop, handles },
        }
    }

    /// Number of batches this loader yields in total (including those already taken).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.len {
            return None;
        }
        let b = self.next;
        self.next += 1;
        let r = match &mut self.mode {
            Mode::Inline { job, scratch, stop } => job
                .build(b, scratch, stop)
                .map(|o| o.expect("inline loader is never stopped")),
            Mode::Threads { rxs, .. } => match rxs[b % rxs.len()].recv() {
                Ok(r) => r,
                Err(_) => Err(DataError::Options(
                    "a data loader thread stopped unexpectedly; rerun with --workers 0 to see its error"
                        .into(),
                )),
            },
        };
        if r.is_err() {
            self.next = self.len;
        }
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len - self.next;
        (left, Some(left))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Mode::Threads { rxs, stop, handles } = &mut self.mode {
            stop.store(true, Ordering::Relaxed);
            rxs.clear();
            for h in handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}
