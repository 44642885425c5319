//! The layer-info file: what a state dict does not record about its layers (each conv's groups,
//! and the positions per sample at each layer's input and output), for `gbtd compress
//! --layer-info`. The Python package writes it from a model and an example input
//! (`gbtd.torch.layer_info`); a user may also write it by hand.
//!
//! A JSON object:
//!
//! ```json
//! {"format": "gbtd.layer_info", "version": 1,
//!  "layers": {"layer1.0.conv2": {"groups": 32, "input_positions": 3136, "output_positions": 3136},
//!             "fc": {"groups": 1, "input_positions": 1, "output_positions": 1}}}
//! ```
//!
//! keyed by module name (`NAME` of `NAME.weight`). `groups` defaults to 1; the two positions are
//! optional but go together (`H·W` of the conv's input and output, the number of vectors per
//! sample for a linear layer). Other keys (`kind`, `stride`, ...) are ignored.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::LayerGeometry;
use crate::formats::{IoError, IoResult, read_bytes};

/// The value of the `format` key.
pub const LAYER_INFO_FORMAT: &str = "gbtd.layer_info";

/// Reads a layer-info file (see the module documentation).
pub fn read_layer_info(path: &Path) -> IoResult<BTreeMap<String, LayerGeometry>> {
    let bytes = read_bytes(path)?;
    parse_layer_info(&bytes).map_err(|msg| IoError::Corrupt {
        path: path.to_path_buf(),
        msg: format!("not a valid layer-info file ({msg}); write it with gbtd.torch.layer_info"),
    })
}

/// Parses the JSON text of a layer-info file.
pub fn parse_layer_info(bytes: &[u8]) -> Result<BTreeMap<String, LayerGeometry>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.get("format").and_then(Value::as_str) != Some(LAYER_INFO_FORMAT) {
        return Err(format!("its \"format\" is not \"{LAYER_INFO_FORMAT}\""));
    }
    if v.get("version").and_then(Value::as_u64) != Some(1) {
        return Err("only \"version\": 1 is read".into());
    }
    let Some(layers) = v.get("layers").and_then(Value::as_object) else {
        return Err("\"layers\" must be an object keyed by module name".into());
    };
    let mut out = BTreeMap::new();
    for (name, l) in layers {
        let count = |key: &str| -> Result<Option<u64>, String> {
            match l.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| format!("layer '{name}': \"{key}\" must be a whole number >= 0")),
            }
        };
        let groups = count("groups")?.unwrap_or(1);
        if groups == 0 {
            return Err(format!("layer '{name}': \"groups\" must be at least 1"));
        }
        let (input_positions, output_positions) =
            match (count("input_positions")?, count("output_positions")?) {
                (Some(i), Some(o)) => (Some(i), Some(o)),
                (None, None) => (None, None),
                _ => {
                    return Err(format!(
                        "layer '{name}': give both \"input_positions\" and \"output_positions\", or neither"
                    ));
                }
            };
        let groups =
            usize::try_from(groups).map_err(|_| format!("layer '{name}': \"groups\" is too large"))?;
        out.insert(
            name.clone(),
            LayerGeometry {
                groups,
                input_positions,
                output_positions,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_groups_and_positions_and_refuses_bad_files() {
        let ok = br#"{"format": "gbtd.layer_info", "version": 1, "layers": {
            "a": {"groups": 32, "input_positions": 3136, "output_positions": 784, "kind": "conv"},
            "b": {}}}"#;
        let m = parse_layer_info(ok).unwrap();
        assert_eq!(
            m["a"],
            LayerGeometry {
                groups: 32,
                input_positions: Some(3136),
                output_positions: Some(784)
            }
        );
        assert_eq!(m["b"], LayerGeometry::default());
        for bad in [
            &br#"{"format": "x", "version": 1, "layers": {}}"#[..],
            br#"{"format": "gbtd.layer_info", "version": 2, "layers": {}}"#,
            br#"{"format": "gbtd.layer_info", "version": 1, "layers": []}"#,
            br#"{"format": "gbtd.layer_info", "version": 1, "layers": {"a": {"groups": 0}}}"#,
            br#"{"format": "gbtd.layer_info", "version": 1, "layers": {"a": {"groups": -1}}}"#,
            br#"{"format": "gbtd.layer_info", "version": 1, "layers": {"a": {"input_positions": 4}}}"#,
            b"not json",
        ] {
            let e = parse_layer_info(bad).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
