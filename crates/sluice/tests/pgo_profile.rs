//! `pgo.profdata` (see `scripts/pgo.py`): rustc reads a profile it cannot
//! parse with a warning and builds on without it, so a truncated or
//! corrupted file, or one this toolchain's LLVM no longer reads, would make
//! the release build an unoptimised one unnoticed.

use std::path::Path;
use std::process::Command;

const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pgo.profdata");

/// rustc's warnings when it compiles a small program at `-O` with `profile`.
fn warnings_with(profile: &Path, dir: &Path) -> String {
    let src = dir.join("tiny.rs");
    std::fs::write(
        &src,
        "fn main() { let n: usize = std::env::args().map(|a| a.len()).sum(); println!(\"{n}\"); }\n",
    )
    .expect("a temporary source file");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .arg("-O")
        .arg(format!("-Cprofile-use={}", profile.display()))
        // The gateway's functions are not in this program: no news.
        .arg("-Cllvm-args=-no-pgo-warn-mismatch")
        .arg("-o")
        .arg(dir.join("tiny"))
        .arg(&src)
        .output()
        .expect("rustc runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "rustc failed: {stderr}");
    stderr
}

#[test]
fn the_pgo_profile_is_one_this_toolchain_reads() {
    let dir = std::env::temp_dir().join(format!("sluice-pgo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let profile = Path::new(PROFILE);
    let size = std::fs::metadata(profile).expect("pgo.profdata").len();
    // A sparse profile of the gateway's hot paths is ~2 MB; the full one
    // (every function of wasmtime, cranelift, tract …) ~40.
    assert!(
        (100_000..8_000_000).contains(&size),
        "{size} bytes: take it again with `scripts/pgo.py train`"
    );
    let good = warnings_with(profile, &dir);
    assert!(!good.contains("warning"), "{good}");
    // The check sees a damaged one.
    let bytes = std::fs::read(profile).expect("pgo.profdata");
    let cut = dir.join("cut.profdata");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("a cut copy");
    let bad = warnings_with(&cut, &dir);
    assert!(bad.contains("warning"), "a cut profile was read: {bad}");
    std::fs::remove_dir_all(&dir).ok();
}
