//! Forward-only evaluation over a data set's test split: mean cross-entropy, top-1 and top-5.
//!
//! Runs under `no_grad` with BN in evaluation mode (running statistics), accumulating the sums on
//! the device so that the only host synchronisation is the final read.
use tch::nn::ModuleT;
use tch::{Device, Kind, Reduction, Tensor};

use super::source::TrainData;
use super::{Result, TrainError};

/// Result of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent (top-k with k = classes when there are fewer than 5 classes).
    pub top5: f64,
    /// Number of samples.
    pub samples: u64,
}

/// Sums of one batch: (loss sum, top-1 hits, top-5 hits) as device scalars.
fn batch_sums(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor, Tensor) {
    let classes = logits.size()[1];
    let k = classes.min(5);
    let loss =
        logits
            .to_kind(Kind::Float)
            .cross_entropy_loss::<Tensor>(labels, None, Reduction::Sum, -100, 0.0);
    let (_, top) = logits.topk(k, 1, true, true);
    let hit = top.eq_tensor(&labels.unsqueeze(1));
    let top1 = hit.narrow(1, 0, 1).sum(Kind::Int64);
    let top5 = hit.sum(Kind::Int64);
    (loss, top1, top5)
}

/// Evaluates `net` on the test split of `data` (the first `limit` images when given) with batches
/// of `batch`, moving each batch to `device` (and to channels-last when `channels_last`).
pub fn evaluate(
    net: &dyn ModuleT,
    data: &dyn TrainData,
    batch: usize,
    limit: Option<usize>,
    device: Device,
    amp: bool,
    channels_last: bool,
) -> Result<EvalResult> {
    let limit = limit.unwrap_or(usize::MAX) as u64;
    tch::no_grad(|| {
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        let mut top1 = Tensor::zeros([], (Kind::Int64, device));
        let mut top5 = Tensor::zeros([], (Kind::Int64, device));
        let mut n = 0u64;
        for b in data.test_batches(batch) {
            if n >= limit {
                break;
            }
            let (mut x, mut y) = b.map_err(TrainError::Data)?;
            let len = (y.size()[0] as u64).min(limit - n);
            if len < y.size()[0] as u64 {
                x = x.narrow(0, 0, len as i64);
                y = y.narrow(0, 0, len as i64);
            }
            n += len;
            let x = to_device_input(&x, device, channels_last);
            let y = y.to_device(device);
            let logits = tch::autocast(amp && device.is_cuda(), || net.forward_t(&x, false));
            let (l, a, b5) = batch_sums(&logits, &y);
            loss += l;
            top1 += a;
            top5 += b5;
        }
        if n == 0 {
            return Err(TrainError::Data("the test split is empty".into()));
        }
        let nf = n as f64;
        Ok(EvalResult {
            loss: loss.double_value(&[]) / nf,
            top1: 100.0 * top1.int64_value(&[]) as f64 / nf,
            top5: 100.0 * top5.int64_value(&[]) as f64 / nf,
            samples: n,
        })
    })
}

/// Moves an input batch to the device (non-blocking from CPU) and, on request, to channels-last
/// strides (NHWC in memory, same NCHW shape).
pub fn to_device_input(x: &Tensor, device: Device, channels_last: bool) -> Tensor {
    let x = if device == Device::Cpu {
        x.shallow_clone()
    } else {
        x.to_device_(device, Kind::Float, true, false)
    };
    if channels_last { as_channels_last(&x) } else { x }
}

/// The same tensor values with channels-last strides: a contiguous NHWC buffer viewed as NCHW.
pub fn as_channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_a_hand_count() {
        // 3 samples, 6 classes; labels 0, 2, 5.
        let logits = Tensor::from_slice(&[
            5.0f32, 1.0, 0.0, 0.0, 0.0, 0.0, // argmax 0: top-1 hit
            1.0, 0.0, 2.0, 3.0, 4.0, 5.0, // label 2 ranks 4th of 6 → top-5 hit only
            9.0, 8.0, 7.0, 6.0, 5.0, 0.0, // label 5 is last → miss
        ])
        .reshape([3, 6]);
        let labels = Tensor::from_slice(&[0i64, 2, 5]);
        let (loss, t1, t5) = batch_sums(&logits, &labels);
        assert_eq!(t1.int64_value(&[]), 1);
        assert_eq!(t5.int64_value(&[]), 2);
        // Cross-entropy by hand: log-sum-exp minus the label's logit.
        let rows: [[f64; 6]; 3] = [
            [5.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 2.0, 3.0, 4.0, 5.0],
            [9.0, 8.0, 7.0, 6.0, 5.0, 0.0],
        ];
        let want: f64 = rows
            .iter()
            .zip([0usize, 2, 5])
            .map(|(r, l)| r.iter().map(|v| v.exp()).sum::<f64>().ln() - r[l])
            .sum();
        assert!((loss.double_value(&[]) - want).abs() < 1e-4);
    }
}
