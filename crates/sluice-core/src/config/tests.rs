use super::*;

fn env(k: &str) -> Option<String> {
    match k {
        "UP_KEY" => Some("sk-secret-value".into()),
        _ => None,
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.toml", &env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn embedded_default_is_valid_and_serves_mock() {
    let c = embedded_default(&|_| None).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.server.max_body_bytes, 4 << 20);
    assert!(c.models.iter().any(|m| &*m.name == "mock-1"));
    assert!(c.providers.iter().all(|p| p.kind == ProviderKind::Mock));
}

#[test]
fn embedded_default_adds_openai_when_key_set() {
    let c = embedded_default(&|k| (k == "OPENAI_API_KEY").then(|| "sk-x".to_owned())).unwrap();
    let openai = c.providers.iter().find(|p| &*p.name == "openai").unwrap();
    assert_eq!(openai.api_key.as_ref().unwrap().expose(), "sk-x");
    assert!(c.models.iter().any(|m| &*m.name == "gpt-4o-mini"));
}

#[test]
fn full_config_parses() {
    let text = r#"
[server]
listen = "0.0.0.0:8000"
max_body_bytes = 1024

[[providers]]
name = "primary"
kind = "openai"
base_url = "http://127.0.0.1:9900/v1/"
api_key = "${UP_KEY}"
headers = { "x-org" = "acme" }
timeout_ms = 2500

[[providers]]
name = "backup"
kind = "openai"
base_url = "http://127.0.0.1:9901/v1"

[[models]]
name = "gpt-4o-mini"
targets = [
  { provider = "primary", model = "gpt-4o-mini-2024", weight = 3 },
  { provider = "backup", weight = 1 },
]
"#;
    let c = parse(text, "t.toml", &env).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8000");
    assert_eq!(c.server.max_body_bytes, 1024);
    let p = &c.providers[0];
    assert_eq!(p.base_url, "http://127.0.0.1:9900/v1");
    assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-secret-value");
    assert_eq!(p.headers[0].0, "x-org");
    assert_eq!(p.timeout, Duration::from_millis(2500));
    let m = &c.models[0];
    assert_eq!(m.targets.len(), 2);
    assert_eq!(
        (
            m.targets[0].provider,
            &*m.targets[0].model,
            m.targets[0].weight
        ),
        (0, "gpt-4o-mini-2024", 3)
    );
    assert_eq!(
        (
            m.targets[1].provider,
            &*m.targets[1].model,
            m.targets[1].weight
        ),
        (1, "gpt-4o-mini", 1)
    );
}

#[test]
fn every_problem_is_reported_with_location() {
    let text = r#"[server]
listen = "nope"

[[providers]]
name = "a"
kind = "openai"
base_url = "ftp://x"
api_key = "${MISSING_KEY}"

[[providers]]
name = "a"
kind = "martian"

[[models]]
name = "m"
targets = [{ provider = "ghost", weight = 0 }]

[[models]]
name = "empty"
targets = []
"#;
    let errs = errors(text);
    let expect = [
        "t.toml:2:10: listen: 'nope' is not an IP:port address",
        "t.toml:7:12: base_url must be an http:// or https:// URL with a host",
        "t.toml:8:11: environment variable 'MISSING_KEY' is not set",
        "t.toml:11:8: duplicate provider name 'a'",
        "t.toml:12:8: unknown provider kind 'martian' (supported: openai, anthropic, gemini, azure, groq, mistral, deepseek, together, openrouter, ollama, vllm, mock)",
        "t.toml:16:25: target names unknown provider 'ghost'",
        "t.toml:20:11: model 'empty' needs at least one target",
    ];
    assert_eq!(errs, expect);
}

#[test]
fn syntax_and_unknown_keys_are_located() {
    let errs = errors("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("t.toml:3:1: "), "{errs:?}");
    assert!(errs[0].contains("lisen"), "{errs:?}");

    let errs = errors("[[providers]]\nname = \"x\"\nkind = \n");
    assert!(errs[0].starts_with("t.toml:3:"), "{errs:?}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let text = "[[providers]]\nname = \"p\"\nkind = \"openai\"\napi_key = \"${UP_KEY}\"\nbase_url = \"${UP_KEY}\"\n";
    let errs = errors(text).join("\n");
    assert!(!errs.contains("sk-secret-value"), "{errs}");
    let c = parse(
        "[[providers]]\nname = \"p\"\nkind = \"openai\"\napi_key = \"${UP_KEY}\"\n",
        "t.toml",
        &env,
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("sk-secret-value"));
}

#[test]
fn mock_options_rejected_elsewhere_and_zero_limits() {
    let text = "[server]\nmax_body_bytes = 0\n[[providers]]\nname = \"p\"\nkind = \"openai\"\ntokens_per_response = 4\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("max_body_bytes must be between"));
    assert!(errs[1].contains("tokens_per_response applies only"));
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncdé f", 0), (1, 1));
    assert_eq!(line_col("ab\ncdé f", 3), (2, 1));
    assert_eq!(line_col("ab\ncdé f", 7), (2, 4));
}

#[test]
fn example_configs_in_repo_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            parse(&text, &path.display().to_string(), &|k| match k {
                "SLUICE_AUDIT_KEY" => Some("000102030405060708090a0b0c0d0e0f".into()),
                _ => k.ends_with("_KEY").then(|| "x".into()),
            })
            .unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen > 0, "no example configs found in {}", dir.display());
}

#[test]
fn routing_defaults_and_overrides() {
    let c = parse(
        "[routing]\nmax_attempts = 5\nbreaker = { cooldown_ms = 250 }\nweights = { growth = 1.1 }\n\
         [[providers]]\nname = \"p\"\nkind = \"mock\"\n\
         [[models]]\nname = \"a\"\nstrategy = \"least_outstanding\"\nfallbacks = [\"b\"]\nttft_timeout_ms = 900\ntargets = [{ provider = \"p\" }]\n\
         [[models]]\nname = \"b\"\nmax_attempts = 1\ntargets = [{ provider = \"p\" }]\n",
        "t.toml",
        &env,
    )
    .unwrap();
    assert_eq!(c.routing.max_attempts, 5);
    assert_eq!(c.routing.breaker.cooldown, Duration::from_millis(250));
    assert_eq!(c.routing.breaker.consecutive_failures, 5, "default kept");
    assert_eq!(c.routing.weights.growth, 1.1);
    let (a, b) = (&c.models[0], &c.models[1]);
    assert_eq!(a.strategy, Strategy::LeastOutstanding);
    assert_eq!(&*a.fallbacks[0], "b");
    assert_eq!(a.ttft_timeout, Duration::from_millis(900));
    assert_eq!(a.max_attempts, 5);
    assert_eq!(b.max_attempts, 1);
    assert_eq!(b.timeout, c.routing.timeout);
}

#[test]
fn routing_problems_are_located() {
    let errs = errors(
        "[routing]\nbreaker = { error_rate = 2.0 }\n\
         [[providers]]\nname = \"p\"\nkind = \"mock\"\n\
         [[models]]\nname = \"a\"\nstrategy = \"fastest\"\nfallbacks = [\"a\", \"zzz\"]\ntargets = [{ provider = \"p\" }]\n",
    );
    assert_eq!(
        errs,
        [
            "t.toml:2:26: breaker.error_rate must be between 0.01 and 1",
            "t.toml:8:12: unknown strategy 'fastest' (weighted, least_outstanding, lowest_latency)",
            "t.toml:9:14: model 'a' cannot fall back to itself",
            "t.toml:9:19: fallback names unknown model 'zzz'",
        ]
    );
}

#[test]
fn key_problems_are_located() {
    let errs = errors(
        "[[providers]]\nname = \"p\"\nkind = \"mock\"\n[[models]]\nname = \"a\"\ntargets = [{ provider = \"p\" }]\n\
         [[keys]]\nname = \"k\"\nsha256 = \"abc\"\n\
         [[keys]]\nname = \"k2\"\nsha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\nmodels = [\"zzz\"]\nexpires_at = \"tomorrow\"\n",
    );
    assert_eq!(
        errs,
        [
            "t.toml:9:10: sha256 must be 64 hex digits (the SHA-256 of the token)",
            "t.toml:13:11: key allows unknown model 'zzz'",
            "t.toml:14:14: expires_at must be like 2027-01-31T00:00:00Z (UTC)",
        ]
    );
}

#[test]
fn security_tables_parse() {
    let text = r#"
[redis]
url = "redis://:${UP_KEY}@127.0.0.1:6379/0"

[redaction]
kinds = ["email", "card"]
custom = [{ name = "mrn", pattern = "MRN-[0-9]+" }]
prompts = true

[audit]
sink = "redis"
fields = ["metadata.team"]
encrypt_fields = ["user"]
key_env = "AUDIT_KEY"
"#;
    let env = |k: &str| match k {
        "UP_KEY" => Some("pw".into()),
        "AUDIT_KEY" => Some("000102030405060708090a0b0c0d0e0f".into()),
        _ => None,
    };
    let c = parse(text, "t.toml", &env).unwrap();
    assert_eq!(
        c.redis.as_ref().unwrap().url.expose(),
        "redis://:pw@127.0.0.1:6379/0"
    );
    assert!(
        !format!("{:?}", c.redis).contains("pw@"),
        "the URL is secret"
    );
    assert_eq!(
        c.limits.backend,
        LimitsBackend::Redis,
        "shared when redis is set"
    );
    assert!(c.limits.fail_open);
    let r = c.redaction.redactor.as_ref().unwrap();
    assert_eq!(
        r.redact("a@b.io MRN-1 +44 20 7946 0958"),
        "[EMAIL] [MRN] +44 20 7946 0958"
    );
    assert!(c.redaction.prompts);
    let a = c.audit.unwrap();
    assert_eq!(a.sink, AuditSinkKind::Redis);
    assert_eq!(a.fields, ["metadata.team", "user"]);
    assert!(a.key.is_some());
    assert_eq!(a.buffer_path.to_str(), Some("audit.jsonl.buffer"));
    // No [audit]: none; no [redis]: local limits.
    let c = parse("", "t.toml", &env).unwrap();
    assert!(c.audit.is_none());
    assert_eq!(c.limits.backend, LimitsBackend::Local);
    assert!(
        c.redaction.redactor.is_none(),
        "nothing redacts without prompts or [audit]: no patterns compiled"
    );
    let c = parse("[audit]\npath = \"a.jsonl\"\n", "t.toml", &env).unwrap();
    assert!(c.redaction.redactor.is_some(), "redaction is on by default");
    let c = parse("[redaction]\nprompts = true\n", "t.toml", &env).unwrap();
    assert!(c.redaction.redactor.is_some());
    let c = parse(
        "[redaction]\nenabled = false\nprompts = true\n[audit]\npath = \"a.jsonl\"\n",
        "t.toml",
        &env,
    )
    .unwrap();
    assert!(c.redaction.redactor.is_none(), "off stays off");
}

#[test]
fn security_problems_are_located() {
    let errs = errors(
        r#"
[limits]
backend = "redis"

[redaction]
kinds = ["email", "ssn"]
custom = [{ name = "bad", pattern = "(" }, { name = "no spaces", pattern = "x" }]

[audit]
sink = "redis"
fields = ["a..b"]
encrypt_fields = ["user"]
key_env = "MISSING"
"#,
    );
    let joined = errs.join("\n");
    for (line, needle) in [
        (3, "needs [redis] url"),
        (6, "unknown PII kind 'ssn'"),
        (7, "pattern 'bad' does not compile"),
        (7, "letters, digits and _"),
        (10, "needs [redis] url"),
        (11, "dot path"),
        (13, "set MISSING to 32 hex digits"),
    ] {
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("t.toml:{line}:")) && e.contains(needle)),
            "{needle} at line {line} in:\n{joined}"
        );
    }
    let short = r#"
[audit]
encrypt_fields = ["user"]
key_env = "UP_KEY"
"#;
    assert!(errors(short).iter().any(|e| e.contains("32 hex digits")));
}

#[test]
fn budgets_and_prices() {
    let text = r#"
[[providers]]
name = "m"
kind = "mock"

[[models]]
name = "priced"
targets = [{ provider = "m" }]
price_output_per_mtok = 15.0

[[keys]]
name = "k"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
budget_usd = 12.5
budget_period = "day"
"#;
    let c = parse(text, "t.toml", &env).unwrap();
    assert_eq!(c.models[0].price, Some((0.0, 15.0)));
    let k = &c.keys[0];
    assert_eq!(k.budget_usd, Some((12.5, crate::limits::BudgetPeriod::Day)));
    assert!(k.budget.is_none());
    let errs = errors(&text.replace("12.5", "-1.0").replace("\"day\"", "\"week\""));
    assert!(
        errs.iter()
            .any(|e| e.contains("budget_usd must be between"))
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("unknown budget_period 'week'"))
    );
}

#[test]
fn telemetry_batching_and_otel_variables() {
    let base = "[[providers]]\nname = \"m\"\nkind = \"mock\"\n[[models]]\nname = \"x\"\ntargets = [{ provider = \"m\" }]\n";
    let otel = |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318".to_owned()),
        "OTEL_EXPORTER_OTLP_HEADERS" => {
            Some("Api-Key=a%3Db%2Cc, x-team = ml ,broken,bad name=1".to_owned())
        }
        "OTEL_RESOURCE_ATTRIBUTES" => {
            Some("deployment.environment=prod,service.namespace=ai%20gw%".to_owned())
        }
        _ => None,
    };
    let t = parse(base, "t.toml", &otel).unwrap().telemetry;
    assert_eq!(t.otlp_endpoint.as_deref(), Some("http://collector:4318"));
    let headers: Vec<_> = t
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    assert_eq!(headers, [("api-key", "a=b,c"), ("x-team", "ml")]);
    assert_eq!(
        t.resource_attributes,
        [
            ("deployment.environment".to_owned(), "prod".to_owned()),
            ("service.namespace".to_owned(), "ai gw%".to_owned()),
        ]
    );
    assert_eq!((t.max_queue_spans, t.max_batch_spans), (8192, 512));
    assert_eq!(t.export_interval, Duration::from_secs(1));

    // The file wins over the variables.
    let text = format!(
        "{base}[telemetry]\notlp_endpoint = \"http://a:4317\"\nmax_queue_spans = 100\nmax_batch_spans = 10\nexport_interval_ms = 250\nexport_timeout_ms = 2000\n[telemetry.otlp_headers]\nauthorization = \"Bearer t\"\n[telemetry.resource_attributes]\n\"k8s.pod.name\" = \"p-1\"\n"
    );
    let t = parse(&text, "t.toml", &otel).unwrap().telemetry;
    assert_eq!(t.headers.len(), 1);
    assert_eq!(
        t.resource_attributes,
        [("k8s.pod.name".to_owned(), "p-1".to_owned())]
    );
    assert_eq!((t.max_queue_spans, t.max_batch_spans), (100, 10));
    assert_eq!(t.export_interval, Duration::from_millis(250));
    assert_eq!(t.export_timeout, Duration::from_secs(2));

    // Signal-specific variables win over the general ones, and name the
    // whole URL; OTEL_TRACES_SAMPLER picks parent-based or not.
    let signal = |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://general:4318".to_owned()),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://traces:4318/custom".to_owned()),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_owned()),
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => Some("http/protobuf".to_owned()),
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => Some("a=1".to_owned()),
        "OTEL_EXPORTER_OTLP_HEADERS" => Some("b=2".to_owned()),
        "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_owned()),
        "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".to_owned()),
        _ => None,
    };
    let t = parse(base, "t.toml", &signal).unwrap().telemetry;
    assert_eq!(
        t.otlp_endpoint.as_deref(),
        Some("http://traces:4318/custom")
    );
    assert!(t.traces_url);
    assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(t.headers[0].0, "a");
    assert_eq!((t.sampling_ratio, t.parent_based), (0.25, false));
    let sampler = |name: &'static str| {
        move |k: &str| match k {
            "OTEL_TRACES_SAMPLER" => Some(name.to_owned()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.5".to_owned()),
            _ => None,
        }
    };
    for (name, ratio, parent) in [
        ("always_on", 1.0, false),
        ("always_off", 0.0, false),
        ("parentbased_always_off", 0.0, true),
        ("parentbased_traceidratio", 0.5, true),
        ("something_else", 0.5, true),
    ] {
        let t = parse(base, "t.toml", &sampler(name)).unwrap().telemetry;
        assert_eq!(
            (t.sampling_ratio, t.parent_based),
            (ratio, parent),
            "{name}"
        );
    }
    // OTEL_SDK_DISABLED turns off what the variables would turn on.
    let off = |k: &str| match k {
        "OTEL_SDK_DISABLED" => Some("TRUE".to_owned()),
        other => otel(other),
    };
    assert_eq!(
        parse(base, "t.toml", &off).unwrap().telemetry.otlp_endpoint,
        None
    );
    // The file's own settings win.
    let t = parse(
        &format!("{base}[telemetry]\nsampling_ratio = 0.3\nparent_based = false\n"),
        "t.toml",
        &signal,
    )
    .unwrap()
    .telemetry;
    assert_eq!((t.sampling_ratio, t.parent_based), (0.3, false));
    assert!(!parse(base, "t.toml", &otel).unwrap().telemetry.traces_url);
    let named = |k: &str| {
        (k == "OTEL_RESOURCE_ATTRIBUTES").then(|| "a=b,service.name=from-resource".to_owned())
    };
    assert_eq!(
        parse(base, "t.toml", &named)
            .unwrap()
            .telemetry
            .service_name,
        "from-resource"
    );

    let errs = errors(&format!(
        "{base}[telemetry]\nmax_queue_spans = 0\nexport_interval_ms = 0\n[telemetry.otlp_headers]\n\"bad name\" = \"x\"\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("'bad name' is not a valid header name")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("max_queue_spans must be between 1")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("export_interval_ms must be between 1")),
        "{errs:?}"
    );
}

#[test]
fn a_file_to_serve_must_serve_something_and_have_its_folders() {
    let env = |_: &str| None;
    for empty in ["", "# nothing\n", "[server]\nlisten = \"127.0.0.1:1\"\n"] {
        let e = parse_whole(empty, "s.toml", &env).unwrap_err();
        assert!(e.to_string().contains("no [[models]]"), "{e}");
        assert!(
            parse(empty, "s.toml", &env).is_ok(),
            "a fragment may be partial"
        );
    }
    assert!(
        parse_whole("[agents]\n", "s.toml", &env).is_ok(),
        "hub only"
    );
    let missing = "[auth]\nkeys_file = \"/nonexistent-sluice-dir/keys.json\"\n[agents]\n";
    let e = parse_whole(missing, "s.toml", &env).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].line, e.0[0].column), (2, 13));
    assert!(e.0[0].message.contains("does not exist"), "{e}");
    let here = "[auth]\nkeys_file = \"keys.json\"\n[agents]\n";
    assert!(
        parse_whole(here, "s.toml", &env).is_ok(),
        "the working folder exists"
    );
}

#[test]
fn nats_audit_sink_defaults_and_mistakes() {
    let c = parse("[audit]\nsink = \"nats\"\n", "t.toml", &env).unwrap();
    let a = c.audit.unwrap();
    assert_eq!(a.sink, AuditSinkKind::Nats);
    let n = a.nats.unwrap();
    assert_eq!(n.url.expose(), "nats://127.0.0.1:4222");
    assert_eq!(n.subject, "sluice.audit");
    assert_eq!(n.stream, "SLUICE_AUDIT");
    assert_eq!(n.duplicate_window.as_secs(), 600);
    let e = errors(
        "[audit]\nsink = \"nats\"\nurl = \"http://x:4222\"\nsubject = \"a.*\"\nstream = \"a.b\"\nstream_maxlen = 5\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].contains("t.toml:3:") && e[0].contains("not a NATS address"));
    assert!(e[1].contains(":4:") && e[1].contains("literal NATS subject"));
    assert!(e[2].contains(":5:") && e[2].contains("stream name"));
    assert!(e[3].contains(":6:") && e[3].contains("stream_maxlen"));
    let e = errors("[audit]\nurl = \"nats://x:4222\"\n");
    assert!(
        e[0].contains(":2:") && e[0].contains("sink = \"nats\""),
        "{e:?}"
    );
}

#[test]
fn the_redaction_cache_is_sized_or_turned_off() {
    let env = |_: &str| None;
    let c = parse("[redaction]\nprompts = true\n", "t.toml", &env).unwrap();
    let r = format!("{:?}", c.redaction.redactor.unwrap());
    assert!(r.contains("bytes: 4194304"), "{r}");
    let c = parse(
        "[redaction]\nprompts = true\ncache_bytes = 0\n",
        "t.toml",
        &env,
    )
    .unwrap();
    let r = format!("{:?}", c.redaction.redactor.unwrap());
    assert!(r.contains("cache: None"), "{r}");
    let errs = errors("[redaction]\nprompts = true\ncache_bytes = 8589934592\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("t.toml:3:15: cache_bytes must be between 0"),
        "{errs:?}"
    );
}
