//! Number formatting shared by the `gbtd` and `netgen` command-line reports (tested through
//! `netgen::table::thousands`, which re-exports it).

/// Writes `n` with a comma every three digits: `25557032` → `"25,557,032"`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
