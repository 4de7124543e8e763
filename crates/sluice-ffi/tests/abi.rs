//! The C ABI from Rust: null checks, errors, many threads on one gateway.
//! (The C example runs it from C, under AddressSanitizer:
//! tests/e2e/test_embed_c_node.py.)

use std::ffi::{CStr, c_char, c_void};
use std::ptr;

use sluice::*;

const CONFIG: &str = r#"
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 4

[[models]]
name = "mock-1"
targets = [{ provider = "mock" }]
"#;

struct Gw(*mut SluiceGateway);
// SAFETY: the ABI promises one gateway may be used from many threads.
unsafe impl Send for Gw {}
// SAFETY: as above.
unsafe impl Sync for Gw {}

fn new_gateway(config: &str) -> Result<Gw, String> {
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: `config` is `len` readable bytes; `err` is writable.
    let gw = unsafe { sluice_gateway_new(config.as_ptr().cast(), config.len(), &mut err) };
    if gw.is_null() {
        // SAFETY: the library set a string it owns; freed once below.
        let m = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: returned by the library, freed once.
        unsafe { sluice_string_free(err) };
        return Err(m);
    }
    Ok(Gw(gw))
}

fn chat(gw: &Gw, body: &str) -> (i32, String) {
    let mut out: *mut c_char = ptr::null_mut();
    // SAFETY: a live gateway; `body` is `len` readable bytes; `out` is writable.
    let status = unsafe { sluice_chat(gw.0, body.as_ptr().cast(), body.len(), &mut out) };
    if out.is_null() {
        return (status, String::new());
    }
    // SAFETY: a NUL-terminated string from the library, freed once below.
    let s = unsafe { CStr::from_ptr(out) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: returned by the library, freed once.
    unsafe { sluice_string_free(out) };
    (status, s)
}

const HELLO: &str = r#"{"model":"mock-1","messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn many_threads_share_one_gateway() {
    let gw = new_gateway(CONFIG).expect("gateway");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    (0..10)
                        .map(|_| chat(&gw, HELLO))
                        .filter(|(st, body)| *st == 200 && body.contains("chat.completion"))
                        .count()
                })
            })
            .collect();
        let ok: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert_eq!(ok, 160);
    });
    // SAFETY: from sluice_gateway_new, freed once, no call running.
    unsafe { sluice_gateway_free(gw.0) };
}

#[test]
fn nulls_are_refused_and_errors_keep_their_status() {
    let gw = new_gateway(CONFIG).expect("gateway");
    let mut out: *mut c_char = ptr::null_mut();
    // SAFETY: null pointers are what is being checked.
    unsafe {
        assert_eq!(
            sluice_chat(ptr::null(), HELLO.as_ptr().cast(), HELLO.len(), &mut out),
            SLUICE_ERR_NULL
        );
        assert_eq!(sluice_chat(gw.0, ptr::null(), 0, &mut out), SLUICE_ERR_NULL);
        assert_eq!(
            sluice_chat(gw.0, HELLO.as_ptr().cast(), HELLO.len(), ptr::null_mut()),
            SLUICE_ERR_NULL
        );
        assert_eq!(
            sluice_chat_stream(
                gw.0,
                HELLO.as_ptr().cast(),
                HELLO.len(),
                None,
                ptr::null_mut()
            ),
            SLUICE_ERR_NULL
        );
        assert_eq!(sluice_gateway_serve(gw.0, ptr::null()), SLUICE_ERR_NULL);
        assert!(!sluice_last_error().is_null());
        sluice_string_free(ptr::null_mut());
        sluice_gateway_free(ptr::null_mut());
    }
    let (status, body) = chat(
        &gw,
        r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    );
    assert_eq!(status, 404);
    assert!(body.contains("model_not_found"), "{body}");
    let (status, body) = chat(&gw, "{not json");
    assert_eq!(status, 400, "{body}");
    // SAFETY: a NUL-terminated address; a live gateway.
    unsafe {
        assert_eq!(
            sluice_gateway_serve(gw.0, c"not an address".as_ptr()),
            SLUICE_ERR_INVALID
        );
        assert_eq!(
            sluice_gateway_serve(gw.0, c"127.0.0.1:0".as_ptr()),
            SLUICE_OK
        );
        assert_eq!(
            sluice_gateway_serve(gw.0, c"127.0.0.1:0".as_ptr()),
            SLUICE_ERR_STATE
        );
        let addr = sluice_gateway_address(gw.0);
        assert!(!addr.is_null());
        assert!(
            CStr::from_ptr(addr)
                .to_string_lossy()
                .starts_with("127.0.0.1:")
        );
        sluice_string_free(addr);
        assert_eq!(sluice_gateway_stop(gw.0), SLUICE_OK);
        assert!(sluice_gateway_address(gw.0).is_null());
        sluice_gateway_free(gw.0);
    }
}

#[test]
fn a_bad_configuration_is_located() {
    let e = new_gateway("[[models]]\nname = \"x\"\ntargets = [{ provider = \"nope\" }]\n")
        .err()
        .expect("refused");
    assert!(e.contains("<config>:3:"), "{e}");
}

unsafe extern "C" fn count(_chunk: *const c_char, len: usize, user_data: *mut c_void) -> i32 {
    // SAFETY: user_data is the &mut usize passed below, used on this thread only.
    let n = unsafe { &mut *user_data.cast::<usize>() };
    *n += 1;
    assert!(len > 0);
    i32::from(*n >= 2)
}

#[test]
fn a_stream_stops_when_the_callback_says_so() {
    let gw = new_gateway(CONFIG).expect("gateway");
    let mut n = 0usize;
    // SAFETY: a live gateway; the callback gets a pointer to `n`, alive for the call.
    let status = unsafe {
        sluice_chat_stream(
            gw.0,
            HELLO.as_ptr().cast(),
            HELLO.len(),
            Some(count),
            (&raw mut n).cast(),
        )
    };
    assert_eq!(status, SLUICE_CANCELLED);
    assert_eq!(n, 2);
    // SAFETY: from sluice_gateway_new, freed once.
    unsafe { sluice_gateway_free(gw.0) };
}

#[test]
fn reload_swaps_the_configuration() {
    let gw = new_gateway(CONFIG).expect("gateway");
    let two = r#"{"model":"mock-2","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(chat(&gw, two).0, 404);
    let more =
        format!("{CONFIG}\n[[models]]\nname = \"mock-2\"\ntargets = [{{ provider = \"mock\" }}]\n");
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: a live gateway; `more` is `len` readable bytes; `err` is writable.
    let rc = unsafe { sluice_gateway_reload(gw.0, more.as_ptr().cast(), more.len(), &mut err) };
    assert_eq!(rc, SLUICE_OK);
    assert!(err.is_null());
    assert_eq!(chat(&gw, two).0, 200);
    let bad = "[[models]]\nname = \"x\"\ntargets = [{ provider = \"nope\" }]\n";
    // SAFETY: as above.
    let rc = unsafe { sluice_gateway_reload(gw.0, bad.as_ptr().cast(), bad.len(), &mut err) };
    assert_eq!(rc, SLUICE_ERR_INVALID);
    // SAFETY: set by the library on failure; freed once.
    let m = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: returned by the library, freed once.
    unsafe { sluice_string_free(err) };
    assert!(m.contains("nope"), "{m}");
    assert_eq!(chat(&gw, two).0, 200);
    // SAFETY: from sluice_gateway_new, freed once.
    unsafe { sluice_gateway_free(gw.0) };
}
