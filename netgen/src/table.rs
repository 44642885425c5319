//! A Table-1-style description of a [`NetSpec`]: per stage its output size, the layers of one
//! unit with their widths and R (groups), the repeats (with the CRU share grouping, e.g.
//! "×6 ×3" = 3 share groups of 6 units), and the stage's parameters and multiply-adds; then the
//! totals. FLOPs are always printed as multiply-adds and labelled so.
use std::fmt::Write as _;

use crate::arch::plan::{self, Op};
use crate::arch::spec::{NetSpec, Result, Stem, UnitIo, UnitSpec};
use crate::count::{Counts, count};

/// `n` with a comma every three digits: 25557032 → "25,557,032" (how the table prints counts).
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n / 10^exp` rounded to one decimal, as Table 1 prints it ("25.6").
pub fn scaled(n: u64, exp: u32) -> String {
    format!("{:.1}", n as f64 / 10f64.powi(exp as i32))
}

/// "25.6 × 10^6": `n` in units of 10^9, 10^6 or 10^3, whichever keeps it ≥ 1.
pub fn short(n: u64) -> String {
    let exp = if n >= 1_000_000_000 {
        9
    } else if n >= 1_000_000 {
        6
    } else {
        3
    };
    format!("{} × 10^{exp}", scaled(n, exp))
}

/// Repeat notation of a stage: "×3"; for CRU stages the share grouping: "×6" (one group),
/// "×6 ×3" (3 groups of 6), "×8 (share groups 6+2)".
pub fn repeats(depth: usize, unit: &UnitSpec) -> String {
    match *unit {
        UnitSpec::Cru { share, .. } if share > 0 && share < depth => {
            if depth.is_multiple_of(share) {
                format!("×{share} ×{}", depth / share)
            } else {
                let groups: Vec<String> = unit
                    .share_groups(depth)
                    .iter()
                    .map(|r| r.len().to_string())
                    .collect();
                format!("×{depth} (share groups {})", groups.join("+"))
            }
        }
        _ => format!("×{depth}"),
    }
}

/// The layer lines of one non-first unit of stage `stage`, Table 1 style ("3×3, 512, R=32
/// (shared)"), read from the unit's [`plan`](crate::arch::plan): its convs in order, with the
/// groups of every k×k (k > 1) and a mark on shared tensors.
fn unit_lines(spec: &NetSpec, stage: usize) -> Vec<String> {
    let s = &spec.stages[stage];
    // A unit inside the stage: fed `width` channels at stride 1, so without a projection.
    let u = UnitIo {
        stage,
        index: 1.min(s.depth - 1),
        in_width: s.width,
        out_width: s.width,
        stride: 1,
        projection: false,
        in_size: 1,
        out_size: 1,
        share_group: None,
    };
    plan::unit_plan(spec, &u)
        .branch
        .iter()
        .filter_map(|l| match l.op {
            Op::Conv { cout, k, groups, .. } => {
                let mut line = format!("{k}×{k}, {cout}");
                if k > 1 {
                    line.push_str(&format!(", R={groups}"));
                }
                if l.shared {
                    line.push_str("  (shared)");
                }
                Some(line)
            }
            Op::Bn { .. } => None,
        })
        .collect()
}

fn bracket(lines: &[String]) -> Vec<String> {
    let w = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let n = lines.len();
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (a, b) = match (i, n) {
                (_, 1) => ('[', ']'),
                (0, _) => ('┌', '┐'),
                (i, n) if i + 1 == n => ('└', '┘'),
                _ => ('│', '│'),
            };
            let pad = w - l.chars().count();
            format!("{a} {l}{} {b}", " ".repeat(pad))
        })
        .collect()
}

/// Row of the table: stage, output, layer text, repeats, params, multiply-adds. A `note` row
/// prints its layer text unpadded and does not widen the columns.
struct Row([String; 6], bool);

impl Row {
    fn cells(c: [String; 6]) -> Self {
        Row(c, false)
    }

    fn note(text: String) -> Self {
        Row(
            [
                String::new(),
                String::new(),
                text,
                String::new(),
                String::new(),
                String::new(),
            ],
            true,
        )
    }
}

/// Renders the table for `spec` (validated), with its counts.
pub fn render(spec: &NetSpec) -> Result<String> {
    let c = count(spec)?;
    Ok(render_with(spec, &c))
}

/// Renders the table for `spec` with precomputed counts.
pub fn render_with(spec: &NetSpec, c: &Counts) -> String {
    let e = String::new;
    let mut rows: Vec<Row> = Vec::new();
    let stem_p = thousands(c.stem.params);
    let stem_f = thousands(c.stem.flops);
    match spec.stem {
        Stem::Imagenet { width } => {
            let m = crate::arch::spec::conv_out_size(spec.input_size, 7, 2, 3).unwrap_or(0);
            rows.push(Row::cells([
                "conv1".into(),
                format!("{m}×{m}"),
                format!("7×7, {width}, stride 2"),
                e(),
                stem_p,
                stem_f,
            ]));
            let n = c.stem_out_size;
            rows.push(Row::cells([
                e(),
                format!("{n}×{n}"),
                "3×3 max pool, stride 2".into(),
                e(),
                e(),
                e(),
            ]));
        }
        Stem::Small { width } => {
            let n = c.stem_out_size;
            rows.push(Row::cells([
                "conv1".into(),
                format!("{n}×{n}"),
                format!("3×3, {width}"),
                e(),
                stem_p,
                stem_f,
            ]));
        }
    }
    let in_widths = spec.stage_in_widths();
    for (i, s) in spec.stages.iter().enumerate() {
        let sc = &c.stages[i];
        let lines = bracket(&unit_lines(spec, i));
        let mid = lines.len() / 2;
        for (k, l) in lines.into_iter().enumerate() {
            let first = k == 0;
            rows.push(Row::cells([
                if first { format!("conv{}", i + 2) } else { e() },
                if first {
                    format!("{0}×{0}", sc.out_size)
                } else {
                    e()
                },
                l,
                if k == mid { repeats(s.depth, &s.unit) } else { e() },
                if first { thousands(sc.tally.params) } else { e() },
                if first { thousands(sc.tally.flops) } else { e() },
            ]));
        }
        let cin = in_widths[i];
        if s.has_projection(cin) {
            let how = match (&s.unit, spec.preact) {
                (UnitSpec::Cru { .. }, _) => {
                    format!(
                        "first unit: 1×1 {cin}→{} used twice (branch input; shortcut stride {})",
                        s.width, s.stride
                    )
                }
                _ => format!(
                    "first unit: stride {}, projection 1×1 {cin}→{}",
                    s.stride, s.width
                ),
            };
            rows.push(Row::note(how));
        }
    }
    let head = if spec.preact {
        "BN-ReLU, global average pool"
    } else {
        "global average pool"
    };
    rows.push(Row::cells([
        e(),
        "1×1".into(),
        head.into(),
        e(),
        thousands(c.head.params),
        thousands(c.head.flops),
    ]));
    rows.push(Row::note(format!("{}-d fc, softmax", spec.classes)));

    let header = Row::cells([
        "stage".into(),
        "output".into(),
        "layers (k×k, channels, R = groups)".into(),
        "repeats".into(),
        "params".into(),
        "multiply-adds".into(),
    ]);
    let mut widths = [0usize; 6];
    for r in std::iter::once(&header).chain(rows.iter().filter(|r| !r.1)) {
        for (w, cell) in widths.iter_mut().zip(r.0.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt_row = |r: &Row| -> String {
        let mut line = String::new();
        if r.1 {
            return format!("{}  {}  {}", " ".repeat(widths[0]), " ".repeat(widths[1]), r.0[2]);
        }
        for (j, (cell, w)) in r.0.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if j >= 4 {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
            if j < 5 {
                line.push_str("  ");
            }
        }
        line.trim_end().to_string()
    };
    let mut out = String::new();
    let act = if spec.preact {
        "pre-activation"
    } else {
        "post-activation"
    };
    let _ = writeln!(
        out,
        "{} — input {}×{}×{}, {} classes, {act}",
        spec.name, spec.in_channels, spec.input_size, spec.input_size, spec.classes
    );
    let rule = "─".repeat(widths.iter().sum::<usize>() + 10);
    let _ = writeln!(out, "{}", fmt_row(&header));
    let _ = writeln!(out, "{rule}");
    for r in &rows {
        let _ = writeln!(out, "{}", fmt_row(r));
    }
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "# params  {}  ({}; BN γ,β included: {}; shared tensors counted once)",
        thousands(c.params),
        short(c.params),
        thousands(c.bn_params)
    );
    let _ = writeln!(
        out,
        "FLOPs     {} multiply-adds  ({} multiply-adds per {}×{} image; convs + fc)",
        thousands(c.flops),
        short(c.flops),
        spec.input_size,
        spec.input_size
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(25_557_032), "25,557,032");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn share_grouping_notation() {
        let cru = |share| UnitSpec::Cru {
            mid: 8,
            groups: 8,
            share,
            extra_conv: true,
        };
        assert_eq!(repeats(6, &cru(6)), "×6");
        assert_eq!(repeats(18, &cru(6)), "×6 ×3");
        assert_eq!(repeats(8, &cru(6)), "×8 (share groups 6+2)");
        assert_eq!(repeats(3, &UnitSpec::Aggregated { mid: 8, groups: 1 }), "×3");
    }
}
