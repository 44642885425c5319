//! The report of a [`compress`](super::compress) run: totals, JSON (the file's metadata plus
//! totals) and CSV (one row per compressed layer and per skipped tensor).
use serde_json::{Value, json};

use super::{Compressed, LayerReport, writer};

/// Totals over the compressed layers and the whole model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    /// Compressed layers.
    pub layers: usize,
    /// Skipped layers (conv kernels, and linear weights when asked for).
    pub skipped_kernels: usize,
    /// Weights of the compressed kernels.
    pub params_before: u64,
    /// Weights of their chains.
    pub params_after: u64,
    /// Multiply-adds of the compressed layers per sample (when every layer's sizes are known).
    pub macs_before: Option<u64>,
    /// Multiply-adds of their factorized forms per sample (when every layer's sizes are known).
    pub macs_after: Option<u64>,
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
            macs_before: self.layers.iter().map(|l| l.macs_before).sum(),
            macs_after: self.layers.iter().map(|l| l.macs_after).sum(),
            model_params_before: model_before,
            model_params_after: model_before - pb + pa,
            seconds: self.layers.iter().map(|l| l.seconds).sum(),
        }
    }

    /// The report as JSON: the `gbtd.compress` metadata object of the output file (format,
    /// version, source, method, rank rule, layers with their chains, skipped) plus the totals
    /// (multiply-adds `null` when some layer's sizes are unknown).
    pub fn report_json(&self) -> Value {
        let mut v = writer::metadata_json(self);
        let t = self.totals();
        v["inferred_groups"] = json!(
            self.inferred
                .iter()
                .map(|(n, g)| json!({"name": n, "groups": g}))
                .collect::<Vec<_>>()
        );
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

    /// The report as CSV (RFC 4180, written by the `csv` crate): a header, then one row per
    /// compressed layer and per skipped candidate (`status` `compressed` or `skipped`, with the
    /// reason); multiply-adds are empty when unknown.
    pub fn report_csv(&self) -> String {
        let dims = |d: &[usize]| d.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("x");
        let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut rows: Vec<Vec<String>> = vec![
            [
                "name",
                "tensor",
                "status",
                "shape",
                "method",
                "ranks",
                "terms",
                "conv_groups",
                "relative_error",
                "params_before",
                "params_after",
                "macs_before",
                "macs_after",
                "seconds",
                "reason",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for l in &self.layers {
            rows.push(vec![
                l.name.clone(),
                format!("{}.weight", l.name),
                "compressed".into(),
                dims(&l.shape),
                l.method_name().into(),
                l.ranks
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                l.chain_dims().0.to_string(),
                l.conv_groups().to_string(),
                l.relative_error.to_string(),
                l.params_before.to_string(),
                l.params_after.to_string(),
                opt(l.macs_before),
                opt(l.macs_after),
                format!("{:.6}", l.seconds),
                String::new(),
            ]);
        }
        for k in &self.skipped {
            let mut row = vec![String::new(); 15];
            row[0] = k.name().into();
            row[1] = k.tensor.clone();
            row[2] = "skipped".into();
            row[3] = dims(&k.shape);
            row[14] = k.reason.clone();
            rows.push(row);
        }
        for r in &rows {
            // Writing to a Vec cannot fail.
            let _ = w.write_record(r);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}
