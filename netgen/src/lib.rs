//! # netgen — from a GBTD configuration to ResNet / ResNeXt / CRU-Net networks
pub use tch;
pub mod arch;
pub mod convert;
pub mod count;
pub mod data;
pub mod nn;
pub mod table;
pub mod train;
