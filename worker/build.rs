//! Embeds an rpath to libtorch's shared libraries so the worker binary and its test executables
//! run without `LD_LIBRARY_PATH`.
//!
//! The libtorch location comes from `LIBTORCH` (set for the whole workspace in
//! `.cargo/config.toml`, pointing at the project's `.venv` torch install, or exported by the
//! user). A relative value is resolved against the workspace root, the directory that holds
//! `.cargo/`, which cargo has already done for the config entry; this makes the path absolute in
//! every case.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set; the worker will rely on the system loader path to find libtorch"
        );
        return;
    };
    let root = PathBuf::from(libtorch);
    let root = if root.is_absolute() {
        root
    } else {
        workspace_root().join(root)
    };
    let lib = root.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// The workspace root: the manifest directory's parent (this crate lives at `<root>/worker`).
fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_default();
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}
