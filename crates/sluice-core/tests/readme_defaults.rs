//! The README's configuration tables state each key's default; this holds
//! the code to them, row by row. For every key whose default is a plain
//! value (a number, a size in KiB/MiB, a bool, a string, `[]`), setting it
//! explicitly to that value must give exactly the configuration that
//! leaving it out gives. A README default that drifts from the code fails
//! here, naming the row.

use sluice_core::config::parse;

const README: &str = include_str!("../../../README.md");

/// The TOML for a README default, or `None` for prose ("—", "from
/// `[routing]`", "5 failures, …").
fn toml_value(default: &str) -> Option<String> {
    let d = default.trim();
    let d = d.split(" (").next().unwrap_or(d).trim(); // "0 (no cap)"
    if let Some(s) = d.strip_prefix('`').and_then(|s| s.strip_suffix('`')) {
        return Some(if s == "[]" {
            s.to_owned()
        } else {
            format!("{s:?}")
        });
    }
    if d == "true" || d == "false" || d == "[]" {
        return Some(d.to_owned());
    }
    for (unit, n) in [(" KiB", 1u64 << 10), (" MiB", 1 << 20)] {
        if let Some(v) = d.strip_suffix(unit) {
            return v.parse::<u64>().ok().map(|v| (v * n).to_string());
        }
    }
    if d.parse::<i64>().is_ok() || d.parse::<f64>().is_ok() {
        return Some(d.to_owned());
    }
    None
}

/// A configuration with `key = value` set where the row's key lives.
fn with(section: &str, key: &str, value: Option<&str>, row: &str) -> String {
    let set = value.map(|v| format!("{key} = {v}\n")).unwrap_or_default();
    let kind = if row.contains("mock only") {
        "kind = \"mock\""
    } else if row.contains("Anthropic only") {
        "kind = \"anthropic\""
    } else if row.contains("Azure only") {
        "kind = \"azure\"\nbase_url = \"https://r.openai.azure.com/openai/deployments/d\""
    } else {
        "kind = \"openai\""
    };
    let provider = |extra: &str| format!("[[providers]]\nname = \"p\"\n{kind}\n{extra}");
    let model = |extra: &str| {
        format!("[[models]]\nname = \"m\"\ntargets = [{{ provider = \"p\" }}]\n{extra}")
    };
    match section {
        "providers[]" => format!("{}\n{}", provider(&set), model("")),
        "models[]" => format!("{}\n{}", provider(""), model(&set)),
        "predictors[]" => format!(
            "[[predictors]]\nname = \"x\"\npath = \"{}\"\n{set}\n{}\n{}",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../sluice-inference/tests/fixtures/mlp.onnx"
            ),
            provider(""),
            model("")
        ),
        "plugins[]" => format!(
            "[[plugins]]\nname = \"x\"\npath = \"{}\"\n{set}\n{}\n{}",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/plugins/empty_filter.wat"
            ),
            provider(""),
            model("")
        ),
        "processors[]" => {
            // Any existing file stands for a model: nothing is loaded here.
            let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
            let kind = if row.contains("VAD:") {
                format!("kind = \"vad\"\nmodel = \"{file}\"")
            } else {
                format!("kind = \"ocr\"\ndet_model = \"{file}\"\nrec_model = \"{file}\"")
            };
            format!(
                "[[processors]]\nname = \"x\"\n{kind}\n{set}\n{}\n{}",
                provider(""),
                model("")
            )
        }
        "mcp_servers[]" => format!(
            "[[mcp_servers]]\nname = \"x\"\nurl = \"http://127.0.0.1:1/mcp\"\n{set}\n{}\n{}",
            provider(""),
            model("")
        ),
        s => format!("[{s}]\n{set}\n{}\n{}", provider(""), model("")),
    }
}

#[test]
fn every_plain_default_in_the_readme_is_the_codes() {
    let env =
        |k: &str| (k == "SLUICE_AUDIT_KEY").then(|| "000102030405060708090a0b0c0d0e0f".to_owned());
    let mut checked = Vec::new();
    for row in README.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        if cells.len() < 3 {
            continue;
        }
        // "`server.listen` / `admin_listen`", "`routing.backoff_base_ms`, `backoff_max_ms`"
        let keys: Vec<&str> = cells[0]
            .trim_start_matches("| ")
            .split([',', '/'])
            .map(|k| k.trim().trim_matches('`'))
            .collect();
        let Some((section, _)) = keys[0].rsplit_once('.') else {
            continue; // a CLI row
        };
        if section.contains('*') || keys[0].contains('"') {
            continue;
        }
        let defaults: Vec<&str> = if cells[1].contains(" / ") {
            cells[1].split(" / ").collect()
        } else {
            cells[1].split(", ").collect()
        };
        for (i, key) in keys.iter().enumerate() {
            let key = key.rsplit('.').next().unwrap_or(key);
            if key.contains(['*', '"', ' ']) || key.is_empty() {
                continue;
            }
            let Some(value) = defaults.get(i).and_then(|d| toml_value(d)) else {
                continue;
            };
            let explicit = with(section, key, Some(&value), row);
            let implicit = with(section, key, None, row);
            let a = parse(&explicit, "explicit.toml", &env).unwrap_or_else(|e| {
                panic!("README row `{section}.{key}` = {value}: {e}\n{explicit}")
            });
            let b = parse(&implicit, "implicit.toml", &env).expect("the implicit config parses");
            assert!(
                // (Located values name their file.)
                format!("{a:?}").replace("explicit.toml", "implicit.toml") == format!("{b:?}"),
                "README says `{section}.{key}` defaults to {value}, the code disagrees"
            );
            checked.push(format!("{section}.{key}"));
        }
    }
    // The tables hold some 60 keys; most have plain defaults.
    assert!(
        checked.len() >= 35,
        "only {} defaults checked: {checked:?}",
        checked.len()
    );
}

/// Each preset the README lists reaches its provider's public API (or the
/// local server's usual address) unless `base_url` says otherwise.
#[test]
fn each_preset_has_its_public_base_url() {
    let presets = [
        ("openai", "https://api.openai.com/v1"),
        ("anthropic", "https://api.anthropic.com/v1"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta"),
        ("groq", "https://api.groq.com/openai/v1"),
        ("mistral", "https://api.mistral.ai/v1"),
        ("deepseek", "https://api.deepseek.com/v1"),
        ("together", "https://api.together.xyz/v1"),
        ("openrouter", "https://openrouter.ai/api/v1"),
        ("ollama", "http://127.0.0.1:11434/v1"),
        ("vllm", "http://127.0.0.1:8000/v1"),
    ];
    for (kind, url) in presets {
        assert!(
            README.contains(&format!("`{kind}`")),
            "the README names `{kind}`"
        );
        let c = parse(
            &format!("[[providers]]\nname = \"p\"\nkind = \"{kind}\"\n"),
            "t",
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(&*c.providers[0].base_url, url, "{kind}");
        assert_eq!(c.providers[0].preset, kind);
    }
}
