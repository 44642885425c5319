//! `metrics.csv`: one row per evaluation (every completed epoch and the end of the run).
//!
//! Columns: `step, epoch, lr, train_loss, train_acc, test_loss, test_top1, test_top5, img_per_s,
//! seconds`. `epoch` is fractional (steps / steps per epoch); `train_*` are averages over the
//! steps since the previous row (accuracy in percent, on the augmented training batches);
//! `img_per_s` is the training throughput over those steps (data loading included, evaluation
//! excluded); `seconds` is the run's wall-clock time so far.
use std::path::Path;

use super::checkpoint::write_text;
use super::{Result, io_err};

/// The header line.
pub const HEADER: &str = "step,epoch,lr,train_loss,train_acc,test_loss,test_top1,test_top5,img_per_s,seconds";

/// One row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Completed steps.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Mean training loss since the previous row.
    pub train_loss: f64,
    /// Training top-1 (%) since the previous row.
    pub train_acc: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Test top-1 (%).
    pub test_top1: f64,
    /// Test top-5 (%).
    pub test_top5: f64,
    /// Training images per second since the previous row.
    pub img_per_s: f64,
    /// Wall-clock seconds of the run so far.
    pub seconds: f64,
}

impl Row {
    fn to_line(self) -> String {
        format!(
            "{},{:.4},{:.6e},{:.5},{:.3},{:.5},{:.3},{:.3},{:.1},{:.1}",
            self.step,
            self.epoch,
            self.lr,
            self.train_loss,
            self.train_acc,
            self.test_loss,
            self.test_top1,
            self.test_top5,
            self.img_per_s,
            self.seconds
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let v: Vec<&str> = line.split(',').collect();
        if v.len() != 10 {
            return None;
        }
        let f = |i: usize| v[i].trim().parse::<f64>().ok();
        Some(Self {
            step: v[0].trim().parse().ok()?,
            epoch: f(1)?,
            lr: f(2)?,
            train_loss: f(3)?,
            train_acc: f(4)?,
            test_loss: f(5)?,
            test_top1: f(6)?,
            test_top5: f(7)?,
            img_per_s: f(8)?,
            seconds: f(9)?,
        })
    }
}

/// Reads the rows of a metrics file (a missing file has none).
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, e)),
    };
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| Row::parse(l).ok_or_else(|| io_err(path, format!("unreadable row '{l}'"))))
        .collect()
}

/// Writes all rows (atomically, header included).
pub fn write(path: &Path, rows: &[Row]) -> Result<()> {
    let mut s = String::from(HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.to_line());
        s.push('\n');
    }
    write_text(path, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.csv");
        assert!(read(&p).unwrap().is_empty());
        let r = Row {
            step: 10,
            epoch: 0.5,
            lr: 0.05,
            train_loss: 1.25,
            train_acc: 60.5,
            test_loss: 1.5,
            test_top1: 55.25,
            test_top5: 90.0,
            img_per_s: 123.4,
            seconds: 5.5,
        };
        write(&p, &[r, r]).unwrap();
        let back = read(&p).unwrap();
        assert_eq!(back, vec![r, r]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(HEADER));
    }
}
