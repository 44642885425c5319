//! The report of a [`compress`](super::compress) run: totals, JSON (the file's metadata plus
//! totals) and CSV (one row per compressed layer and per skipped tensor).
use serde_json::{Value, json};

use super::{Compressed, LayerReport, writer};

/// Totals over the compressed layers and the whole model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    /// Compressed layers.
    pub layers: usize,
    /// Skipped conv kernels.
    pub skipped_kernels: usize,
    /// Weights of the compressed kernels.
    pub params_before: u64,
    /// Weights of their chains.
    pub params_after: u64,
    /// Multiply-adds of the compressed convs per image.
    pub macs_before: u64,
    /// Multiply-adds of their chains per image.
    pub macs_after: u64,
    /// Elements of every floating-point tensor of the model.
    pub model_params_before: u64,
    /// The same after compression.
    pub model_params_after: u64,
    /// Seconds spent decomposing.
    pub seconds: f64,
}

impl Compressed {
    /// Totals over the compressed layers and the model.
    pub fn totals(&self) -> Totals {
        let sum = |f: fn(&LayerReport) -> u64| self.layers.iter().map(f).sum::<u64>();
        let model_before: u64 = self
            .tensors
            .iter()
            .filter(|t| t.readable)
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum();
        let (pb, pa) = (sum(|l| l.params_before), sum(|l| l.params_after));
        Totals {
            layers: self.layers.len(),
            skipped_kernels: self.skipped.iter().filter(|s| s.kernel).count(),
            params_before: pb,
            params_after: pa,
            macs_before: sum(|l| l.macs_before),
            macs_after: sum(|l| l.macs_after),
            model_params_before: model_before,
            model_params_after: model_before - pb + pa,
            seconds: self.layers.iter().map(|l| l.seconds).sum(),
        }
    }

    /// The report as JSON: the `gbtd.compress` metadata object of the output file (format,
    /// version, source, method, rank rule, layers with their chains, skipped) plus the input size
    /// and the totals.
    pub fn report_json(&self) -> Value {
        let mut v = writer::metadata_json(self);
        let t = self.totals();
        v["input_size"] = json!(self.input_size);
        v["totals"] = json!({
            "layers": t.layers,
            "skipped_kernels": t.skipped_kernels,
            "params_before": t.params_before,
            "params_after": t.params_after,
            "compression": t.params_before as f64 / t.params_after.max(1) as f64,
            "macs_before": t.macs_before,
            "macs_after": t.macs_after,
            "model_params_before": t.model_params_before,
            "model_params_after": t.model_params_after,
            "seconds": t.seconds,
        });
        v
    }

    /// The report as CSV: a header, then one row per compressed layer and per skipped candidate
    /// (`status` `compressed` or `skipped`, with the reason).
    pub fn report_csv(&self) -> String {
        let mut s = String::from(
            "name,tensor,status,shape,method,ranks,groups,relative_error,params_before,params_after,macs_before,macs_after,seconds,reason\n",
        );
        let q = |x: &str| {
            if x.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", x.replace('"', "\"\""))
            } else {
                x.to_string()
            }
        };
        let dims = |d: &[usize]| d.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("x");
        for l in &self.layers {
            s.push_str(&format!(
                "{},{},compressed,{},{},{},{},{},{},{},{},{},{:.6},\n",
                q(&l.name),
                q(&format!("{}.weight", l.name)),
                dims(&l.shape),
                l.method.as_str(),
                q(&l.ranks
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(",")),
                l.groups,
                l.relative_error,
                l.params_before,
                l.params_after,
                l.macs_before,
                l.macs_after,
                l.seconds
            ));
        }
        for k in &self.skipped {
            s.push_str(&format!(
                "{},{},skipped,{},,,,,,,,,,{}\n",
                q(k.name()),
                q(&k.tensor),
                dims(&k.shape),
                q(&k.reason)
            ));
        }
        s
    }
}
