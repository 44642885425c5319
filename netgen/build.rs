// Bakes libtorch's `lib/` directory into the rpath of every binary and test of this package, so
// the binaries run without `LD_LIBRARY_PATH`.
//
// `LIBTORCH` comes from `.cargo/config.toml` (`.venv/torch`, a symlink made by
// `scripts/setup.sh`). The symlink is resolved so that the `$ORIGIN`-relative rpaths inside the
// PyTorch wheel's own libraries (which find the CUDA runtime wheels next to `torch/`) keep
// working. `rustc-link-arg` only applies to the package whose build script prints it, so the
// root crate's `build.rs` includes this file too.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set; run scripts/setup.sh (binaries will need LD_LIBRARY_PATH)"
        );
        return;
    };
    let libtorch = PathBuf::from(libtorch);
    let resolved = std::fs::canonicalize(&libtorch).unwrap_or(libtorch);
    let lib = resolved.join("lib");
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
