//! Architecture descriptions: the serde spec ([`spec`]), the named presets ([`presets`]) and the
//! mapping from a GBTD configuration (R, rank, share, depth, …) to a spec ([`config`]), and the
//! one description of a unit's layers that counting and the tch builder share ([`plan`]).
pub mod config;
pub mod plan;
pub mod presets;
pub mod spec;

pub use config::{Depth, GbtdConfig};
pub use presets::{PresetOptions, preset};
pub use spec::{ArchError, NetSpec, StageSpec, Stem, UnitIo, UnitSpec};
