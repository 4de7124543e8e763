//! The sandbox against real modules: the WAT plugins of `tests/plugins`
//! and the filter built on the public proxy-wasm Rust SDK.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_wasm::filter::{Exchange, Filter, Flow, REQUEST_HEADERS, RESPONSE_HEADERS};
use sluice_wasm::inference::{Inference, Tensor};
use sluice_wasm::{FailKind, Limits};

fn plugin(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/plugins")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn limits(ms: u64, mb: usize) -> Limits {
    Limits {
        max_memory_bytes: mb << 20,
        max_call: Duration::from_millis(ms),
    }
}

#[test]
fn affine_computes_from_its_model_and_checks_it() {
    let model = f32s(&[2.0, 1.0]);
    let p = Inference::load("affine", &plugin("affine.wat"), model, limits(100, 16)).unwrap();
    let out = p
        .infer(&Tensor {
            bytes: f32s(&[0.0, 1.5, -3.0, 10.0]),
            shape: vec![2, 2],
            dtype: 0,
        })
        .unwrap();
    assert_eq!(floats(&out.bytes), vec![1.0, 4.0, -5.0, 21.0]);
    assert_eq!(out.shape, vec![2, 2]);
    // Not f32: the plugin's own error code.
    let err = p
        .infer(&Tensor {
            bytes: vec![1, 2],
            shape: vec![2],
            dtype: 3,
        })
        .unwrap_err();
    assert_eq!(err.kind, FailKind::Error);
    assert!(err.message.contains("'affine'"), "{}", err.message);
    // A large tensor makes the allocator grow memory.
    let big: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
    let out = p
        .infer(&Tensor {
            bytes: f32s(&big),
            shape: vec![100_000],
            dtype: 0,
        })
        .unwrap();
    assert_eq!(floats(&out.bytes)[99_999], 199_999.0);
    // A model of the wrong size is refused by init.
    let e = Inference::load(
        "affine",
        &plugin("affine.wat"),
        vec![1, 2, 3],
        limits(100, 16),
    )
    .err()
    .unwrap();
    assert!(e.contains("init refused"), "{e}");
}

#[test]
fn misbehaving_inference_fails_its_call_only() {
    let p = Inference::load("bad", &plugin("misbehave.wat"), Vec::new(), limits(50, 4)).unwrap();
    let call = |v: f32| {
        p.infer(&Tensor {
            bytes: f32s(&[v, 0.5]),
            shape: vec![2],
            dtype: 0,
        })
    };
    let started = Instant::now();
    assert_eq!(call(1.0).unwrap_err().kind, FailKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(call(2.0).unwrap_err().kind, FailKind::Memory);
    let view = call(3.0).unwrap_err();
    assert_eq!(view.kind, FailKind::View, "{}", view.message);
    assert_eq!(call(4.0).unwrap_err().kind, FailKind::Trap);
    // And it still answers.
    assert_eq!(floats(&call(7.0).unwrap().bytes), vec![7.0, 0.5]);
}

fn request(headers: &[(&str, &str)], body: &str) -> Exchange {
    let mut x = Exchange::default();
    x.maps[REQUEST_HEADERS] = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    x.request_body = body.as_bytes().to_vec();
    x.properties = vec![
        ("request.path".into(), b"/v1/chat/completions".to_vec()),
        ("sluice.model".into(), b"gpt-4o".to_vec()),
    ];
    x
}

fn header<'a>(x: &'a Exchange, map: usize, name: &str) -> Option<&'a [u8]> {
    x.maps[map]
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

#[tokio::test]
async fn sdk_filter_runs_unchanged() {
    let config = "add_response_header=x-added:yes; deny_header=x-block; rewrite_model=small; count=hits; echo_properties=1";
    let f = Filter::load(
        "sdk",
        &plugin("sdk_filter.wasm"),
        config.as_bytes(),
        limits(100, 32),
        2,
    )
    .unwrap();
    // Passes, with its model rewritten and headers added.
    let mut x = request(
        &[(":path", "/v1/chat/completions")],
        r#"{"model":"gpt-4o","n":1}"#,
    );
    let mut s = f.open().unwrap();
    assert_eq!(s.request_headers(&mut x, false).unwrap(), Flow::Continue);
    assert_eq!(s.request_body(&mut x, true).unwrap(), Flow::Continue);
    assert_eq!(x.request_body, br#"{"model":"small","n":1}"#);
    x.maps[RESPONSE_HEADERS].push((":status".into(), b"200".to_vec()));
    assert_eq!(s.response_headers(&mut x, false).unwrap(), Flow::Continue);
    assert_eq!(header(&x, RESPONSE_HEADERS, "x-added"), Some(&b"yes"[..]));
    assert_eq!(
        header(&x, RESPONSE_HEADERS, "x-seen-model"),
        Some(&b"gpt-4o"[..])
    );
    assert_eq!(header(&x, RESPONSE_HEADERS, "x-seen-key"), Some(&b"-"[..]));
    let first: u64 = std::str::from_utf8(header(&x, RESPONSE_HEADERS, "x-request-count").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    s.finish(&mut x);
    // Counted across instances through shared data.
    let mut y = request(&[], "{}");
    let mut s = f.open().unwrap();
    s.request_headers(&mut y, true).unwrap();
    s.response_headers(&mut y, true).unwrap();
    assert_eq!(
        header(&y, RESPONSE_HEADERS, "x-request-count"),
        Some((first + 1).to_string().as_bytes())
    );
    drop(s);
    // Denied with a local response.
    let mut z = request(&[("x-block", "1")], "{}");
    let mut s = f.open().unwrap();
    assert_eq!(s.request_headers(&mut z, false).unwrap(), Flow::Pause);
    let local = z.local.take().unwrap();
    assert_eq!(local.status, 403);
    assert!(String::from_utf8_lossy(&local.body).contains("x-block"));
    assert!(
        local
            .headers
            .iter()
            .any(|(k, v)| k == "x-denied-by" && v == b"sdk-filter")
    );
}

#[tokio::test]
async fn a_filter_refusing_its_configuration_does_not_load() {
    let e = Filter::load(
        "sdk",
        &plugin("sdk_filter.wasm"),
        b"nonsense=1",
        limits(100, 32),
        1,
    )
    .err()
    .unwrap();
    assert!(e.contains("proxy_on_configure"), "{e}");
}

#[tokio::test]
async fn misbehaving_filter_fails_its_request_and_is_replaced() {
    let f = Filter::load("hdr", &plugin("header_filter.wat"), b"", limits(50, 2), 1).unwrap();
    for (value, kind) in [
        ("loop", FailKind::Timeout),
        ("grow", FailKind::Memory),
        ("trap", FailKind::Trap),
    ] {
        let mut x = request(&[("x-misbehave", value)], "");
        let mut s = f.open().unwrap();
        let e = s.request_headers(&mut x, true).unwrap_err();
        assert_eq!(e.kind, kind, "{value}: {}", e.message);
        // A good request right after gets a fresh instance.
        let mut ok = request(&[], "");
        let mut s = f.open().unwrap();
        assert_eq!(s.request_headers(&mut ok, true).unwrap(), Flow::Continue);
        s.response_headers(&mut ok, true).unwrap();
        assert_eq!(
            header(&ok, RESPONSE_HEADERS, "x-wasm-filter"),
            Some(&b"on"[..])
        );
    }
}
