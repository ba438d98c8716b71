//! Builds the kernel programs (`ebpf/laneway-ebpf`) with the nightly
//! toolchain for `bpfel-unknown-none`, so the agent can embed the object.
//!
//! Needs `rust-src` for nightly and `bpf-linker` (in `target/tools/bin`, where
//! `cargo xtask setup` puts it, or on PATH). `LANEWAY_EBPF_OBJ` points at a
//! prebuilt object instead (e.g. in a container build).

use std::{env, ffi::OsString, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=LANEWAY_EBPF_OBJ");
    if let Some(prebuilt) = env::var_os("LANEWAY_EBPF_OBJ") {
        println!(
            "cargo:rustc-env=LANEWAY_EBPF_OBJ={}",
            PathBuf::from(prebuilt).display()
        );
        return;
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("agent/ is in the workspace root")
        .to_owned();
    let ebpf_dir = root.join("ebpf/laneway-ebpf");
    let common_dir = root.join("ebpf/laneway-common");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join(".cargo/config.toml"),
        common_dir.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    let target_dir = root.join("target/ebpf");
    let tools = root.join("target/tools/bin");
    let mut path = OsString::from(&tools);
    if let Some(old) = env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release"])
        .current_dir(&ebpf_dir)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // The outer (stable) build's settings must not leak into the nightly one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo build` for the kernel programs: {e}")
    });
    if !status.success() {
        panic!(
            "building the kernel programs failed ({status}). They need the nightly toolchain \
             with rust-src and bpf-linker: run `cargo xtask setup` once."
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/laneway-ebpf");
    println!("cargo:rustc-env=LANEWAY_EBPF_OBJ={}", object.display());
}
