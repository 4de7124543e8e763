//! The committed header is what cbindgen makes of the source.

use std::path::Path;

#[test]
fn committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    let path = dir.join("../../include/sluice.h");
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &out).expect("write include/sluice.h");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == out,
        "include/sluice.h is out of date: run SLUICE_BLESS=1 cargo test -p sluice-ffi --test header"
    );
}
