//! Architecture descriptions: the serde spec ([`spec`]), the named presets ([`presets`]) and the
//! mapping from a GBTD configuration (R, rank, share, depth, …) to a spec ([`config`]).
pub mod config;
pub mod presets;
pub mod spec;

pub use config::{Depth, GbtdConfig};
pub use presets::{PresetOptions, preset};
pub use spec::{ArchError, NetSpec, StageSpec, Stem, UnitIo, UnitSpec};
