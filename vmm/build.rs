//! Builds the guest kernel and hands its path to the vmm crate, which embeds
//! it as the default kernel.
//!
//! The guest needs codegen flags that must not apply to the VMM itself (no
//! SSE, static relocation, panic=abort, see `guest-kernel/rustflags`), and
//! stable cargo has no per-package RUSTFLAGS. So this script runs a nested
//! `cargo build` of the `guest-kernel` package with those flags, in its own
//! target directory (`target/guest`), so it never contends with the outer
//! build's lock and is shared by debug and release builds of the VMM.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("vmm/ sits in the workspace root");
    let guest_dir = workspace.join("guest-kernel");

    println!("cargo:rerun-if-changed={}", guest_dir.display());
    println!("cargo:rerun-if-env-changed=VMM_GUEST_KERNEL");

    // An explicit prebuilt kernel skips the nested build (useful for packaging).
    if let Ok(path) = env::var("VMM_GUEST_KERNEL") {
        println!("cargo:rustc-env=GUEST_KERNEL_PATH={path}");
        return;
    }

    let flags = read_flags(&guest_dir.join("rustflags"));
    let target_dir = guest_target_dir(workspace);
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "guest-kernel",
            "--bin",
            "guest-kernel",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    // The outer build's wrappers and flags are for host code: clippy-driver
    // must not lint the guest here (CI lints it separately, with the guest
    // flags), and host RUSTFLAGS must not leak into the guest.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }

    let status = cmd
        .status()
        .expect("failed to run cargo for the guest kernel");
    if !status.success() {
        panic!("building the guest kernel failed ({status})");
    }

    let elf = target_dir.join("release").join("guest-kernel");
    assert!(elf.exists(), "guest kernel not found at {}", elf.display());
    println!("cargo:rustc-env=GUEST_KERNEL_PATH={}", elf.display());
}

/// Reads one flag per line, skipping blank lines and `#` comments.
fn read_flags(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `<target>/guest`, where `<target>` is the outer build's target directory.
fn guest_target_dir(workspace: &Path) -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/vmm-<hash>/out; walk up to <target>.
    if let Some(target) = env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .and_then(|out| out.ancestors().nth(4).map(Path::to_path_buf))
    {
        return target.join("guest");
    }
    workspace.join("target").join("guest")
}
