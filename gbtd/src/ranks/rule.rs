//! The rank-selection rules as written on the command line (`fixed:64,32`, `energy:0.9`,
//! `ratio:4`, `budget:0.25`, `vbmf`), with parsing and a [`Display`](fmt::Display) that
//! round-trips.
use std::fmt;
use std::str::FromStr;

use crate::error::{GbtdError, Result};

/// A rank-selection rule, parsed from its command-line string.
///
/// | string | rule |
/// | --- | --- |
/// | `fixed:a,b` / `fixed:R` | the given ranks (`[r_out, r_in]` for Tucker-2 and BTD, per term for BTD; `R` for CP) |
/// | `energy:f` | per factorized mode, the smallest rank keeping a fraction `f ∈ (0, 1]` of the squared singular values of the mode unfolding |
/// | `ratio:x` | per layer, the largest proportional ranks whose chain has at most `params / x` parameters (`x > 1`) |
/// | `budget:f` | global: at most `f ∈ (0, 1]` of the layers' parameters in total, spent where the estimated error drops most per parameter |
/// | `vbmf` | per factorized mode, the number of components analytic empirical VBMF retains |
///
/// Rule names are case-insensitive; surrounding white space is ignored.
#[derive(Debug, Clone, PartialEq)]
pub enum RankRule {
    /// `fixed:a,b` (ranks for the factorized modes in order; `fixed:R` for CP).
    Fixed(Vec<usize>),
    /// `energy:0.95`: per factorized mode, the smallest rank `r` with
    /// `Σ_{k<r} s_k² ≥ f · Σ_k s_k²` (`s_k` the singular values of the mode unfolding), `0 < f ≤ 1`.
    Energy(f64),
    /// `ratio:4`: per layer, the largest ranks (keeping the out:in proportion of the dims) whose
    /// chain has at most `params_before / 4` parameters.
    Ratio(f64),
    /// `budget:0.25`: global; total compressed parameters `≤ 0.25 ×` the total original
    /// parameters of the compressed layers, allocated greedily across layers by estimated error
    /// decrease per parameter (see [`crate::ranks::budget`]).
    Budget(f64),
    /// `vbmf`: Nakajima et al.'s analytic empirical variational Bayesian matrix factorization on
    /// each mode unfolding (see [`crate::ranks::vbmf_rank`]); rank = number of retained
    /// components.
    Vbmf,
}

/// The accepted forms, for error messages.
const FORMS: &str = "fixed:A,B (or fixed:R for CP), energy:F with 0 < F <= 1, ratio:X with X > 1, \
                     budget:F with 0 < F <= 1, or vbmf";

fn bad(s: &str, why: impl fmt::Display) -> GbtdError {
    GbtdError::Options(format!("invalid rank rule '{s}': {why}"))
}

/// A finite number, or an error naming the rule.
fn number(s: &str, arg: &str, name: &str) -> Result<f64> {
    let v: f64 = arg
        .trim()
        .parse()
        .map_err(|_| bad(s, format!("'{arg}' is not a number (e.g. {name}:0.9)")))?;
    if !v.is_finite() {
        return Err(bad(
            s,
            format!("the {name} value must be a finite number, not {arg}"),
        ));
    }
    Ok(v)
}

impl FromStr for RankRule {
    type Err = GbtdError;

    fn from_str(raw: &str) -> Result<Self> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(GbtdError::Options(format!("empty rank rule; expected {FORMS}")));
        }
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a)),
            None => (s.to_ascii_lowercase(), None),
        };
        let need_arg = |what: &str| -> Result<&str> {
            match arg {
                Some(a) if !a.trim().is_empty() => Ok(a),
                _ => Err(bad(
                    s,
                    format!(
                        "'{name}' needs {what} after a colon, e.g. {name}:{}",
                        example(&name)
                    ),
                )),
            }
        };
        match name.as_str() {
            "fixed" => {
                let a = need_arg("ranks")?;
                let ranks = a
                    .split(',')
                    .map(|p| {
                        let p = p.trim();
                        match p.parse::<usize>() {
                            Ok(0) => Err(bad(s, "ranks must be at least 1")),
                            Ok(r) => Ok(r),
                            Err(_) => Err(bad(s, format!("'{p}' is not a positive whole number"))),
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(RankRule::Fixed(ranks))
            }
            "energy" | "budget" => {
                let f = number(s, need_arg("a fraction")?, &name)?;
                if !(f > 0.0 && f <= 1.0) {
                    return Err(bad(s, format!("the {name} fraction must be in (0, 1], got {f}")));
                }
                Ok(if name == "energy" {
                    RankRule::Energy(f)
                } else {
                    RankRule::Budget(f)
                })
            }
            "ratio" => {
                let x = number(s, need_arg("a compression ratio")?, "ratio")?;
                if x <= 1.0 {
                    return Err(bad(
                        s,
                        format!("ratio:X asks for X times fewer parameters, so X must be > 1, got {x}"),
                    ));
                }
                Ok(RankRule::Ratio(x))
            }
            "vbmf" => match arg {
                None => Ok(RankRule::Vbmf),
                Some(_) => Err(bad(s, "vbmf takes no argument; write just 'vbmf'")),
            },
            _ => Err(bad(s, format!("unknown rule '{name}'; expected {FORMS}"))),
        }
    }
}

fn example(name: &str) -> &'static str {
    match name {
        "fixed" => "64,32",
        "energy" => "0.9",
        "budget" => "0.25",
        _ => "4",
    }
}

impl fmt::Display for RankRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankRule::Fixed(r) => {
                let list: Vec<String> = r.iter().map(|v| v.to_string()).collect();
                write!(f, "fixed:{}", list.join(","))
            }
            // `{}` of an f64 is the shortest string that parses back to the same value.
            RankRule::Energy(x) => write!(f, "energy:{x}"),
            RankRule::Ratio(x) => write!(f, "ratio:{x}"),
            RankRule::Budget(x) => write!(f, "budget:{x}"),
            RankRule::Vbmf => f.write_str("vbmf"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_and_round_trips() {
        let cases = [
            ("fixed:64,32", RankRule::Fixed(vec![64, 32])),
            (" Fixed: 8 ", RankRule::Fixed(vec![8])),
            ("energy:0.95", RankRule::Energy(0.95)),
            ("energy:1", RankRule::Energy(1.0)),
            ("ratio:4", RankRule::Ratio(4.0)),
            ("ratio:2.5", RankRule::Ratio(2.5)),
            ("budget:0.25", RankRule::Budget(0.25)),
            ("VBMF", RankRule::Vbmf),
        ];
        for (s, want) in cases {
            let got: RankRule = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(got, want, "{s}");
            let again: RankRule = got.to_string().parse().unwrap();
            assert_eq!(again, got, "{s} -> {got}");
        }
        assert_eq!(RankRule::Ratio(4.0).to_string(), "ratio:4");
        assert_eq!(RankRule::Fixed(vec![64, 32]).to_string(), "fixed:64,32");
    }

    #[test]
    fn bad_strings_give_one_line_errors_that_say_what_is_wrong() {
        let cases = [
            ("", "empty rank rule"),
            ("   ", "empty rank rule"),
            ("fixed:0,4", "at least 1"),
            ("fixed:-3", "'-3' is not a positive whole number"),
            ("fixed:", "needs ranks"),
            ("fixed", "needs ranks"),
            ("fixed:4,,4", "'' is not a positive whole number"),
            ("energy:0", "(0, 1]"),
            ("energy:-0.5", "(0, 1]"),
            ("energy:1.5", "(0, 1]"),
            ("energy:NaN", "finite"),
            ("energy:abc", "not a number"),
            ("budget:0", "(0, 1]"),
            ("budget:inf", "finite"),
            ("ratio:1", "must be > 1"),
            ("ratio:-2", "must be > 1"),
            ("ratio:nan", "finite"),
            ("vbmf:3", "no argument"),
            ("svd:3", "unknown rule 'svd'"),
        ];
        for (s, needle) in cases {
            let e = s.parse::<RankRule>().expect_err(s).to_string();
            assert!(e.contains(needle), "{s:?}: {e}");
            assert!(!e.contains('\n'), "{s:?}: {e}");
        }
    }
}
