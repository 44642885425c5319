//! Typed errors for every fallible operation of the crate. User input never panics: shapes,
//! ranks, non-finite values and empty tensors are reported through [`GbtdError`].
use thiserror::Error;

/// Errors returned by `gbtd`'s algebra and decompositions.
#[derive(Debug, Error)]
pub enum GbtdError {
    /// Two operands do not fit together (for example a factor whose column count differs from
    /// the mode size it multiplies).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A requested rank exceeds the dimension it factorizes, or is zero.
    #[error("invalid rank: {0}")]
    Rank(String),
    /// The input holds NaN or infinite values.
    #[error("non-finite input: {0}")]
    NonFinite(String),
    /// A mode list is invalid: empty, a mode out of range for the tensor's order, or a mode listed
    /// twice. Every function that takes modes reports these mistakes with this variant.
    #[error("invalid modes: {0}")]
    Mode(String),
    /// The input tensor has no elements or no modes.
    #[error("empty tensor: {0}")]
    Empty(String),
    /// An option is out of its valid range (for example a negative tolerance).
    #[error("invalid option: {0}")]
    Options(String),
    /// The decomposition's estimated factor and workspace memory exceeds the limit of
    /// [`crate::options::check_workspace`]; refused before anything large is allocated.
    #[error("too large: {0}")]
    Memory(String),
    /// A progress callback asked to stop (see [`crate::options::Progress::interruptible`]).
    #[error("interrupted")]
    Interrupted,
    /// A LAPACK routine reported a failure.
    #[error("linear algebra failure: {0}")]
    Linalg(String),
    /// An internal invariant does not hold: a bug in `gbtd`, not a problem with the input.
    /// Please report it with the input's shape and the options used.
    #[error("internal error (a bug in gbtd, please report it): {0}")]
    Internal(String),
}

impl GbtdError {
    /// An [`GbtdError::Internal`] error with the given description.
    pub(crate) fn internal(what: impl Into<String>) -> Self {
        GbtdError::Internal(what.into())
    }
}

impl From<ndarray_linalg::error::LinalgError> for GbtdError {
    fn from(e: ndarray_linalg::error::LinalgError) -> Self {
        GbtdError::Linalg(e.to_string())
    }
}

impl From<ndarray::ShapeError> for GbtdError {
    fn from(e: ndarray::ShapeError) -> Self {
        GbtdError::Shape(e.to_string())
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, GbtdError>;

/// `text` on one line, for an error message that quotes it: a name read from a file (a pickle
/// global, an archive member) or a parser's report that spans several lines (`toml`, the `.npy`
/// header parser).
///
/// - In text of several lines, the lines that only draw a parser's source excerpt are dropped:
///   those whose first non-blank characters are an optional line number and then `|`
///   (`  |`, `3 | a = = 1`, `  |     ^`).
/// - The other lines are trimmed and joined with one space; blank lines are dropped.
/// - Any control character left (a tab, a terminal escape) is written as Rust escapes it
///   (`\t`, `\u{1b}`); every other character is kept.
pub(crate) fn one_line(text: &str) -> String {
    let joined = if text.contains(['\n', '\r']) {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !is_excerpt(l))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        text.to_string()
    };
    joined
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Whether a trimmed line is a source-excerpt line of a parser's report (`|`, `12 | text`).
fn is_excerpt(line: &str) -> bool {
    line.trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start()
        .starts_with('|')
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_keeps_names_and_drops_report_excerpts() {
        assert_eq!(one_line("os.system"), "os.system");
        assert_eq!(one_line("a|b"), "a|b");
        assert_eq!(one_line("| a single line is kept"), "| a single line is kept");
        assert_eq!(one_line("tab\there\u{1b}[2J"), "tab\\there\\u{1b}[2J");
        assert_eq!(one_line("first\r\nsecond\n"), "first second");
        let toml_report = "TOML parse error at line 1, column 5\n  |\n1 | a = = 1\n  |     ^\ninvalid string\nexpected `\"`, `'`\n";
        assert_eq!(
            one_line(toml_report),
            "TOML parse error at line 1, column 5 invalid string expected `\"`, `'`"
        );
        let real = "a = = 1".parse::<toml::Table>().unwrap_err().to_string();
        let line = one_line(&real);
        assert!(
            !line.contains('\n') && line.starts_with("TOML parse error"),
            "{line}"
        );
    }
}
