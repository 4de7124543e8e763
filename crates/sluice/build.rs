//! Link options that keep the release binary's resident memory small.
//!
//! The binary's text is ~44 MiB (the inference, WASM and media crates), and
//! the code a serving gateway runs is a few MiB scattered through it: the
//! kernel's fault-around then mapped ~16 MiB of it into every process. On
//! x86_64 Linux with rust-lld (the default linker there since Rust 1.90), a
//! release build of the `sluice` binary
//! - places the functions `link-order.txt` lists first and together
//!   (`--symbol-ordering-file`; `scripts/link-order.py` regenerates the list
//!   from a profiled run; names a build no longer has are skipped);
//! - packs its relative relocations (`-z pack-relative-relocs`, DT_RELR) when
//!   the C library it is built against reads them (glibc ≥ 2.36): 2.4 MiB of
//!   `.rela.dyn` the loader read at every start become a few KiB.
//!
//! Any other target, linker override or profile links as before, and so
//! does a build with `SLUICE_LINK_ORDER=0` (a linker set in a cargo config
//! file, which a build script cannot see, that is not lld).

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=SLUICE_LINK_ORDER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let target = var("TARGET");
    let overridden = var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        || env::vars().any(|(k, _)| k.starts_with("CARGO_TARGET_") && k.ends_with("_LINKER"));
    let off = var("SLUICE_LINK_ORDER") == "0";
    if target != "x86_64-unknown-linux-gnu" || var("PROFILE") != "release" || overridden || off {
        return;
    }
    if !rustc_links_with_lld() {
        return;
    }
    let order = format!("{}/link-order.txt", var("CARGO_MANIFEST_DIR"));
    println!("cargo:rustc-link-arg-bin=sluice=-Wl,--symbol-ordering-file={order}");
    println!("cargo:rustc-link-arg-bin=sluice=-Wl,--no-warn-symbol-ordering");
    if var("HOST") == target && glibc_reads_relr() {
        println!("cargo:rustc-link-arg-bin=sluice=-Wl,-z,pack-relative-relocs");
    }
}

/// rust-lld is the default linker of x86_64-unknown-linux-gnu from Rust 1.90.
fn rustc_links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}

/// glibc reads DT_RELR from 2.36 (`getconf GNU_LIBC_VERSION` = "glibc 2.36").
fn glibc_reads_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}
