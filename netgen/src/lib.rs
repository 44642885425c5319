//! # netgen — from a GBTD configuration to ResNet / ResNeXt / CRU-Net networks
pub use tch;
