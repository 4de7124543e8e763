//! `link-order.txt` (see `build.rs`): lld takes the names as they are and
//! silently skips any it does not find, so a list of demangled names, or one
//! emptied by a failed regeneration, would switch the layout off unnoticed.

use std::collections::HashSet;

#[test]
fn the_link_order_lists_mangled_functions_once_each() {
    let text = include_str!("../link-order.txt");
    let names: Vec<&str> = text.lines().collect();
    assert!(names.len() > 1000, "{} names: regenerate it", names.len());
    let mut seen = HashSet::new();
    for name in &names {
        // Symbols as the linker sees them: mangled Rust, or C (`main`).
        let symbol = |c: char| c.is_ascii_alphanumeric() || "_.$".contains(c);
        assert!(name.chars().all(symbol), "not a symbol name: {name:?}");
        assert!(seen.insert(name), "listed twice: {name}");
    }
    let rust = names
        .iter()
        .filter(|n| n.starts_with("_ZN") || n.starts_with("_R"));
    assert!(rust.count() * 10 > names.len() * 9, "mostly Rust functions");
    // The gateway's own hot paths are in it. (Whether a release build still
    // has these names — they change with the rustc and dependency versions —
    // is `scripts/link-order.py --check`'s part: CI builds no release.)
    for path in ["sluice_server", "sluice_core", "sluice_providers", "tokio"] {
        let mangled = format!("{}{path}", path.len());
        assert!(
            names.iter().any(|n| n.contains(&mangled)),
            "nothing of {path}"
        );
    }
}
