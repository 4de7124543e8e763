//! Crossing the boundary: panics caught, pointers checked, strings made.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use crate::{SLUICE_ERR_INVALID, SLUICE_ERR_NULL, SLUICE_ERR_PANIC, SluiceGateway};

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

pub(crate) fn set_error(message: &str) {
    let c = nul_terminated(message.as_bytes());
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(ptr::null(), |c| c.as_ptr()))
}

fn panicked(p: Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("sluice panicked: {what}")
}

/// Runs `f`; a panic becomes [`SLUICE_ERR_PANIC`].
pub(crate) fn guard(f: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        set_error(&panicked(p));
        SLUICE_ERR_PANIC
    })
}

/// Runs `f`; a panic becomes null.
pub(crate) fn guard_ptr<T>(f: impl FnOnce() -> *mut T) -> *mut T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        set_error(&panicked(p));
        ptr::null_mut()
    })
}

/// `data` as a C string: interior NULs (never in JSON) become spaces.
pub(crate) fn nul_terminated(data: &[u8]) -> CString {
    match CString::new(data) {
        Ok(c) => c,
        Err(e) => {
            let mut v = e.into_vec();
            for b in &mut v {
                if *b == 0 {
                    *b = b' ';
                }
            }
            CString::new(v).unwrap_or_default()
        }
    }
}

/// `data` as a C string the caller frees with `sluice_string_free`.
pub(crate) fn to_c_string(data: &[u8]) -> *mut c_char {
    nul_terminated(data).into_raw()
}

/// Writes a new string to `*out` when `out` is not null.
///
/// # Safety
/// `out` is null or writable.
pub(crate) unsafe fn put(out: *mut *mut c_char, message: &str) {
    if !out.is_null() {
        // SAFETY: not null, and writable (the caller's word).
        unsafe { *out = to_c_string(message.as_bytes()) };
    }
}

/// `len` bytes at `p` (`p` not null; an empty slice when `len` is 0).
///
/// # Safety
/// `p` points to `len` readable bytes that outlive the slice.
pub(crate) unsafe fn bytes<'a>(p: *const c_char, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: `p` is not null and points to `len` readable bytes (the caller's word).
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

/// A NUL-terminated UTF-8 string (`None`, with the error set, otherwise).
///
/// # Safety
/// `p` is not null and NUL-terminated, and outlives the result.
pub(crate) unsafe fn c_str<'a>(p: *const c_char) -> Option<&'a str> {
    // SAFETY: not null and NUL-terminated (the caller's word).
    let s = unsafe { CStr::from_ptr(p) };
    match s.to_str() {
        Ok(s) => Some(s),
        Err(e) => {
            set_error(&format!("not UTF-8: {e}"));
            None
        }
    }
}

/// The gateway behind `gw` (`None`, with the error set, when null).
///
/// # Safety
/// `gw` is null or came from `sluice_gateway_new` and is not freed.
pub(crate) unsafe fn gateway<'a>(gw: *const SluiceGateway) -> Option<&'a SluiceGateway> {
    if gw.is_null() {
        set_error("gw is null");
        return None;
    }
    // SAFETY: a live gateway from Box::into_raw (the caller's word).
    Some(unsafe { &*gw })
}

/// A call's gateway, path and body, checked.
///
/// # Safety
/// Each pointer is null or valid as the public functions document.
pub(crate) unsafe fn call_args<'a>(
    gw: *const SluiceGateway,
    path: *const c_char,
    body: *const c_char,
    len: usize,
) -> Result<(&'a SluiceGateway, &'a str, &'a [u8]), i32> {
    // SAFETY: passed on from the caller.
    let g = unsafe { gateway(gw) }.ok_or(SLUICE_ERR_NULL)?;
    if path.is_null() || body.is_null() {
        set_error(if path.is_null() {
            "path is null"
        } else {
            "request_json is null"
        });
        return Err(SLUICE_ERR_NULL);
    }
    // SAFETY: not null and NUL-terminated (the caller's word).
    let path = unsafe { c_str(path) }.ok_or(SLUICE_ERR_INVALID)?;
    // SAFETY: not null; `len` readable bytes (the caller's word).
    let body = unsafe { bytes(body, len) };
    Ok((g, path, body))
}
