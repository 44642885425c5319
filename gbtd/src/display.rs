//! Number formatting of the `gbtd` command-line reports and error messages.

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

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_of_three_digits_from_the_right() {
        // Independent construction: peel off three digits at a time with division.
        fn by_division(mut n: u64) -> String {
            let mut groups = Vec::new();
            while n >= 1000 {
                groups.push(format!("{:03}", n % 1000));
                n /= 1000;
            }
            groups.push(n.to_string());
            groups.reverse();
            groups.join(",")
        }
        for n in [0, 7, 999, 1000, 25_557_032, 1_000_000, 123_456_789_012, u64::MAX] {
            assert_eq!(thousands(n), by_division(n), "{n}");
        }
        assert_eq!(thousands(25_557_032), "25,557,032");
    }
}
