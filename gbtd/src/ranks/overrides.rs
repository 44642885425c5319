//! Per-layer rank rules from a TOML or JSON file.
//!
//! The file maps exact layer names (module names as in the report, e.g. `layer1.0.conv2`, without
//! `.weight`) to a rank rule string or `"skip"`:
//!
//! ```toml
//! "layer1.0.conv2" = "fixed:16,16"
//! "layer4.2.conv2" = "energy:0.8"
//! conv1 = "skip"
//! ```
//! or, in JSON, `{"layer1.0.conv2": "fixed:16,16", "conv1": "skip"}`. Keys are exact names, not
//! patterns (TOML keys with dots must be quoted). `budget:F` is global and not allowed per layer.
//! Only data is read: nothing in the file is executed.
use std::path::Path;

use crate::error::{GbtdError, Result, one_line};
use crate::ranks::RankRule;

/// What the overrides file says for one layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Override {
    /// Leave the layer unchanged.
    Skip,
    /// Use this rule for the layer instead of the global one.
    Rule(RankRule),
}

/// Per-layer overrides (kept sorted by layer name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    entries: Vec<(String, Override)>,
}

impl Overrides {
    /// No overrides.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads a `.toml` or `.json` file (chosen by the extension).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        let text = || {
            std::fs::read_to_string(path).map_err(|e| {
                GbtdError::Options(format!("cannot read overrides file {}: {e}", path.display()))
            })
        };
        let parsed = match ext.as_deref() {
            Some("toml") => Self::from_toml_str(&text()?),
            Some("json") => Self::from_json_str(&text()?),
            _ => {
                return Err(GbtdError::Options(format!(
                    "overrides file {}: unknown type; name it .toml or .json",
                    path.display()
                )));
            }
        };
        parsed.map_err(|e| match e {
            GbtdError::Options(m) => GbtdError::Options(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses TOML text: a table of `"layer name" = "rule"` entries.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            GbtdError::Options(format!("invalid TOML: {}", one_line(&e.to_string())))
        })?;
        let mut entries = Vec::with_capacity(table.len());
        for (k, v) in table {
            match v.as_str() {
                Some(s) => entries.push((k.clone(), parse_entry(&k, s)?)),
                None => return Err(not_a_string(&k)),
            }
        }
        Ok(Overrides::sorted(entries))
    }

    /// Parses JSON text: an object of `"layer name": "rule"` entries.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| GbtdError::Options(format!("invalid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| {
            GbtdError::Options("expected a JSON object of \"layer\": \"rule\" entries".into())
        })?;
        let mut entries = Vec::with_capacity(obj.len());
        for (k, v) in obj {
            match v.as_str() {
                Some(s) => entries.push((k.clone(), parse_entry(k, s)?)),
                None => return Err(not_a_string(k)),
            }
        }
        Ok(Overrides::sorted(entries))
    }

    fn sorted(mut entries: Vec<(String, Override)>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Overrides { entries }
    }

    /// The override for the layer named exactly `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Override> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The layer names the file lists, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Whether the file lists no layer.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The listed names that are none of `layers` (probably typos): worth a warning.
    pub fn unmatched<'a>(&'a self, layers: &[&str]) -> Vec<&'a str> {
        self.names().filter(|n| !layers.contains(n)).collect()
    }
}

fn parse_entry(layer: &str, value: &str) -> Result<Override> {
    if value.trim().eq_ignore_ascii_case("skip") {
        return Ok(Override::Skip);
    }
    let rule: RankRule = value
        .parse()
        .map_err(|e: GbtdError| GbtdError::Options(format!("layer '{layer}': {}", strip_kind(&e))))?;
    if matches!(rule, RankRule::Budget(_)) {
        return Err(GbtdError::Options(format!(
            "layer '{layer}': budget:F is a global rule and cannot be given per layer; use fixed, energy, ratio or vbmf"
        )));
    }
    Ok(Override::Rule(rule))
}

fn not_a_string(layer: &str) -> GbtdError {
    GbtdError::Options(format!(
        "layer '{layer}': the value must be a string such as \"fixed:16,16\", \"energy:0.9\" or \"skip\""
    ))
}

/// The message of an [`GbtdError::Options`] without its "invalid option: " prefix.
fn strip_kind(e: &GbtdError) -> String {
    match e {
        GbtdError::Options(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_give_the_same_overrides() {
        let t = Overrides::from_toml_str(
            "\"layer1.0.conv2\" = \"fixed:16,16\"\nconv1 = \"skip\"\nfc = \"energy:0.8\"\n",
        )
        .unwrap();
        let j = Overrides::from_json_str(
            r#"{"layer1.0.conv2": "fixed:16,16", "conv1": "SKIP", "fc": "energy:0.8"}"#,
        )
        .unwrap();
        for o in [&t, &j] {
            assert_eq!(
                o.get("layer1.0.conv2"),
                Some(&Override::Rule(RankRule::Fixed(vec![16, 16])))
            );
            assert_eq!(o.get("conv1"), Some(&Override::Skip));
            assert_eq!(o.get("fc"), Some(&Override::Rule(RankRule::Energy(0.8))));
            assert_eq!(o.get("layer1.0"), None);
            assert_eq!(o.unmatched(&["conv1", "fc"]), vec!["layer1.0.conv2"]);
        }
        assert!(Overrides::empty().is_empty());
    }

    #[test]
    fn bad_files_say_which_layer_and_what() {
        let cases = [
            (Overrides::from_toml_str("a = \"energy:2\""), "layer 'a'"),
            (Overrides::from_toml_str("a = 3"), "must be a string"),
            (Overrides::from_toml_str("a = \"budget:0.5\""), "global"),
            (Overrides::from_toml_str("a = = 1"), "invalid TOML"),
            (Overrides::from_json_str("[1, 2]"), "JSON object"),
            (Overrides::from_json_str("{\"a\": 1}"), "must be a string"),
            (Overrides::from_json_str("{\"a\": "), "invalid JSON"),
        ];
        for (r, needle) in cases {
            let e = r.expect_err(needle).to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{e}");
        }
        let e = Overrides::from_file("/nonexistent/x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read overrides file /nonexistent/x.toml"),
            "{e}"
        );
        let e = Overrides::from_file("x.yaml").unwrap_err().to_string();
        assert!(e.contains(".toml or .json"), "{e}");
    }
}
