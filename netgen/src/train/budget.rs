//! Wall-clock budgets: parsing `--budget` and fitting the number of steps to it.
//!
//! A budgeted run times a few forward+backward passes and one evaluation batch before training
//! (see the trainer), then chooses the total number of steps `T` so that
//!
//! ```text
//! elapsed + (T − done) · t_step + n_evals(T) · t_eval + margin ≤ budget
//! ```
//!
//! where `n_evals(T)` counts the evaluations the run will make (one per completed epoch, plus the
//! final one) and `t_eval` is the measured time of a full pass over the test split. The schedule
//! (warm-up, cosine) is laid over those `T` steps, so the run ends annealed when the time is up.

/// Parses a duration: `90s`, `10m`, `1.5h`, `1h30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let err = || format!("--budget: '{s}' is not a duration; use e.g. 600, 90s, 10m, 1.5h or 1h30m");
    if t.is_empty() {
        return Err(err());
    }
    if let Ok(v) = t.parse::<f64>() {
        return if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(err())
        };
    }
    let mut total = 0.0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            _ => return Err(err()),
        };
        let v: f64 = num.parse().map_err(|_| err())?;
        total += v * unit;
        num.clear();
    }
    if !(num.is_empty() && total.is_finite() && total > 0.0) {
        return Err(err());
    }
    Ok(total)
}

/// Evaluations a run of `total` steps makes: one at each completed epoch (`per_epoch` steps) plus
/// one at the end unless the end is an epoch boundary.
pub fn evals_in(total: u64, per_epoch: u64) -> u64 {
    let per_epoch = per_epoch.max(1);
    total / per_epoch + u64::from(!total.is_multiple_of(per_epoch))
}

/// The total steps that fit: `done` steps are taken, `left` seconds remain, a step costs `step_s`,
/// an evaluation `eval_s`; evaluations already made are excluded (`done_evals`). At least
/// `done + 1`, at most `cap` when given.
pub fn fit_steps(
    left: f64,
    step_s: f64,
    eval_s: f64,
    per_epoch: u64,
    done: u64,
    done_evals: u64,
    cap: Option<u64>,
) -> u64 {
    let step_s = step_s.max(1e-9);
    // cost(T) = (T − done)·step_s + (evaluations still to come)·eval_s is non-decreasing in T, so
    // the largest T with cost(T) ≤ left is found by bisection.
    let cost = |t: u64| {
        (t - done) as f64 * step_s + evals_in(t, per_epoch).saturating_sub(done_evals).max(1) as f64 * eval_s
    };
    let (mut lo, mut hi) = (done + 1, done + 1 + (left.max(0.0) / step_s).ceil() as u64);
    if let Some(c) = cap {
        hi = hi.min(c.max(done + 1));
    }
    if cost(lo) > left {
        return lo;
    }
    // Invariant: cost(lo) ≤ left; the answer is in [lo, hi].
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if cost(mid) <= left {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), 600.0);
        assert_eq!(parse_duration("90s").unwrap(), 90.0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("1.5h").unwrap(), 5400.0);
        assert_eq!(parse_duration("42").unwrap(), 42.0);
        for bad in ["", "m", "10x", "-5", "10m5", "0"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fitted_runs_fill_the_budget_without_overrunning() {
        // Brute force: for many settings, the fitted T fits, and T + 1 would not (unless capped).
        for &(left, step_s, eval_s, per_epoch) in &[
            (600.0, 9.0, 240.0, 468u64),
            (600.0, 0.25, 20.0, 468),
            (100.0, 0.01, 1.0, 50),
            (30.0, 0.5, 3.0, 10),
        ] {
            let t = fit_steps(left, step_s, eval_s, per_epoch, 0, 0, None);
            let cost = |t: u64| t as f64 * step_s + evals_in(t, per_epoch) as f64 * eval_s;
            let mut best = 1;
            for cand in 1..=((left / step_s) as u64 + 2) {
                if cost(cand) <= left {
                    best = cand;
                }
            }
            assert_eq!(t, best, "fitted {t}, brute force {best}");
        }
        assert_eq!(fit_steps(600.0, 0.01, 1.0, 10, 0, 0, Some(50)), 50);
    }
}
