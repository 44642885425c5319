// Bakes libtorch's `lib/` directory into the rpath of every binary and test of this package, so
// the binaries run without `LD_LIBRARY_PATH`.
//
// `LIBTORCH` comes from `.cargo/config.toml` (`.venv/torch`, a symlink made by
// `scripts/setup.sh`). The symlink is resolved so that the `$ORIGIN`-relative rpaths inside the
// PyTorch wheel's own libraries (which find the CUDA runtime wheels next to `torch/`) keep
// working. `rustc-link-arg` only applies to the package whose build script prints it, so the
// root crate's `build.rs` includes this file too.
//
// CUDA: tch only sees a GPU if `libtorch_cuda.so` is loaded, but nothing in the binary references
// its symbols, so the default `--as-needed` linking drops it (tch-rs issue 980). When the libtorch
// in use ships it, it is linked with `--no-as-needed` around just that library (one linker
// argument, so the flags stay in this order next to it), and `--device auto` then finds the GPU.
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
    if lib.join("libtorch_cuda.so").is_file() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
