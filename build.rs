// The root crate's tests link tch through netgen, so they need the same rpath.
include!("netgen/build.rs");
