//! The host side of the proxy-wasm ABI v0.2.1: the functions a filter
//! imports (module `env`, plus the few of `wasi_snapshot_preview1` the
//! SDKs link). Imports the host does not provide are linked as functions
//! that answer `UNIMPLEMENTED` (never a trap at load or call).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Engine, Linker, Memory, Module, TypedFunc, Val, ValType};

use crate::filter::{Exchange, Fields, LocalResponse};
use crate::sandbox::{Fence, Fenced};

pub(crate) const OK: i32 = 0;
pub(crate) const NOT_FOUND: i32 = 1;
pub(crate) const BAD_ARGUMENT: i32 = 2;
const SERIALIZATION_FAILURE: i32 = 3;
const INVALID_MEMORY_ACCESS: i32 = 6;
const CAS_MISMATCH: i32 = 8;
const INTERNAL_FAILURE: i32 = 10;
pub(crate) const UNIMPLEMENTED: i32 = 12;
const WASI_SUCCESS: i32 = 0;
const WASI_BADF: i32 = 8;
const WASI_FAULT: i32 = 21;
const WASI_NOTSUP: i32 = 58;

/// Shared data (`proxy_{get,set}_shared_data`) across every filter and
/// instance of the process, capped at this many bytes of keys and values.
const SHARED_CAP: usize = 16 << 20;

#[derive(Default)]
struct Shared {
    map: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    bytes: usize,
}

static SHARED: LazyLock<Mutex<Shared>> = LazyLock::new(Default::default);

/// What a filter instance's store holds.
pub(crate) struct Host {
    pub(crate) fence: Fence,
    pub(crate) plugin: Arc<str>,
    pub(crate) config: Arc<[u8]>,
    pub(crate) memory: Option<Memory>,
    pub(crate) malloc: Option<TypedFunc<i32, i32>>,
    /// The request being filtered by the current call.
    pub(crate) exchange: Exchange,
    /// The tick period the root context asked for.
    pub(crate) tick: Option<Duration>,
}

impl Fenced for Host {
    fn fence(&mut self) -> &mut Fence {
        &mut self.fence
    }
}

type C<'a> = Caller<'a, Host>;
type R = wasmtime::Result<i32>;

fn memory(c: &C<'_>) -> Option<Memory> {
    c.data().memory
}

/// Bytes the module points at, copied out; `None` when out of bounds.
fn read(c: &C<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(c)?;
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(c).get(p..p.checked_add(l)?).map(<[u8]>::to_vec)
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> bool {
    match memory(c) {
        Some(m) => m.write(c, ptr as u32 as usize, bytes).is_ok(),
        None => false,
    }
}

fn put_u32(c: &mut C<'_>, ptr: i32, v: u32) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

/// Hands `bytes` to the module: memory from its allocator, the address and
/// size written where it asked.
fn give(c: &mut C<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> R {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let Some(alloc) = c.data().malloc.clone() else {
            return Ok(INTERNAL_FAILURE);
        };
        let p = alloc.call(&mut *c, bytes.len() as i32)?;
        if p == 0 || !write(c, p, bytes) {
            return Ok(INVALID_MEMORY_ACCESS);
        }
        p
    };
    if put_u32(c, ret_ptr, ptr as u32) && put_u32(c, ret_len, bytes.len() as u32) {
        Ok(OK)
    } else {
        Ok(INVALID_MEMORY_ACCESS)
    }
}

fn text(c: &C<'_>, ptr: i32, len: i32) -> Option<String> {
    read(c, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Serializes a map as the ABI says: a count, the sizes, then each key and
/// value followed by a NUL.
pub(crate) fn serialize(fields: &Fields) -> Vec<u8> {
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    for (k, v) in fields {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

pub(crate) fn deserialize(bytes: &[u8]) -> Option<Fields> {
    if bytes.len() <= 1 {
        return Some(Vec::new());
    }
    let u32_at = |i: usize| -> Option<usize> {
        let b = bytes.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0)?;
    let mut at = 4usize.checked_add(n.checked_mul(8)?)?;
    let mut out = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        let (kl, vl) = (u32_at(4 + 8 * i)?, u32_at(8 + 8 * i)?);
        let k = bytes.get(at..at.checked_add(kl)?)?;
        at += kl + 1;
        let v = bytes.get(at..at.checked_add(vl)?)?;
        at += vl + 1;
        out.push((String::from_utf8_lossy(k).to_ascii_lowercase(), v.to_vec()));
    }
    Some(out)
}

fn map<'a>(c: &'a mut C<'_>, id: i32) -> Option<&'a mut Fields> {
    c.data_mut().exchange.maps.get_mut(id as u32 as usize)
}

/// The map `id`, to change it (marked as changed).
fn map_mut<'a>(c: &'a mut C<'_>, id: i32) -> Option<&'a mut Fields> {
    let x = &mut c.data_mut().exchange;
    let i = id as u32 as usize;
    *x.changed.get_mut(i)? = true;
    x.maps.get_mut(i)
}

fn buffer<'a>(c: &'a C<'_>, id: i32) -> Option<&'a [u8]> {
    let h = c.data();
    Some(match id {
        0 => &h.exchange.request_body,
        1 => &h.exchange.response_body,
        6 => &[],
        7 => &h.config,
        _ => return None,
    })
}

pub(crate) fn linker(engine: &Engine, module: &Module) -> wasmtime::Result<Linker<Host>> {
    let mut l = Linker::new(engine);
    logging(&mut l)?;
    buffers(&mut l)?;
    headers(&mut l)?;
    properties(&mut l)?;
    streams(&mut l)?;
    shared(&mut l)?;
    wasi(&mut l)?;
    stub_the_rest(&mut l, module)?;
    Ok(l)
}

fn logging(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |c: C<'_>, level: i32, p: i32, n: i32| -> R {
            let Some(msg) = text(&c, p, n) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let plugin = &*c.data().plugin;
            match level {
                0 => tracing::trace!(plugin, "{msg}"),
                1 => tracing::debug!(plugin, "{msg}"),
                2 => tracing::info!(plugin, "{msg}"),
                3 => tracing::warn!(plugin, "{msg}"),
                _ => tracing::error!(plugin, "{msg}"),
            }
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ret: i32| -> R {
            let level = if tracing::enabled!(tracing::Level::TRACE) {
                0
            } else if tracing::enabled!(tracing::Level::DEBUG) {
                1
            } else {
                2
            };
            Ok(if put_u32(&mut c, ret, level) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> R {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let ok = write(&mut c, ret, &(now.as_nanos() as u64).to_le_bytes());
            Ok(if ok { OK } else { INVALID_MEMORY_ACCESS })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> R {
            let ms = ms as u32;
            c.data_mut().tick = (ms > 0).then(|| Duration::from_millis(ms.into()));
            Ok(OK)
        },
    )?;
    Ok(())
}

fn buffers(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, id: i32, start: i32, max: i32, rp: i32, rs: i32| -> R {
            let Some(buf) = buffer(&c, id) else {
                return Ok(NOT_FOUND);
            };
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(max as u32 as usize).min(buf.len());
            let bytes = buf[start..end].to_vec();
            give(&mut c, &bytes, rp, rs)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, id: i32, rs: i32, rflags: i32| -> R {
            let Some(len) = buffer(&c, id).map(<[u8]>::len) else {
                return Ok(NOT_FOUND);
            };
            let ok = put_u32(&mut c, rs, len as u32) && put_u32(&mut c, rflags, 0);
            Ok(if ok { OK } else { INVALID_MEMORY_ACCESS })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, id: i32, start: i32, size: i32, p: i32, n: i32| -> R {
            let Some(value) = read(&c, p, n) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let x = &mut c.data_mut().exchange;
            let buf = match id {
                0 => &mut x.request_body,
                1 => &mut x.response_body,
                _ => return Ok(NOT_FOUND),
            };
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(size as u32 as usize).min(buf.len());
            buf.splice(start..end, value);
            Ok(OK)
        },
    )?;
    Ok(())
}

fn find(fields: &Fields, key: &str) -> Option<usize> {
    fields.iter().position(|(k, _)| k.eq_ignore_ascii_case(key))
}

fn headers(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, m: i32, rs: i32| -> R {
            let Some(f) = map(&mut c, m) else {
                return Ok(NOT_FOUND);
            };
            let size = serialize(f).len() as u32;
            Ok(if put_u32(&mut c, rs, size) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, m: i32, rp: i32, rs: i32| -> R {
            let Some(f) = map(&mut c, m) else {
                return Ok(NOT_FOUND);
            };
            let bytes = serialize(f);
            give(&mut c, &bytes, rp, rs)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, m: i32, p: i32, n: i32| -> R {
            let Some(bytes) = read(&c, p, n) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let Some(fields) = deserialize(&bytes) else {
                return Ok(SERIALIZATION_FAILURE);
            };
            match map_mut(&mut c, m) {
                Some(f) => *f = fields,
                None => return Ok(NOT_FOUND),
            }
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, m: i32, kp: i32, kn: i32, rp: i32, rs: i32| -> R {
            let Some(key) = text(&c, kp, kn) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let Some(f) = map(&mut c, m) else {
                return Ok(NOT_FOUND);
            };
            let Some(i) = find(f, &key) else {
                return Ok(NOT_FOUND);
            };
            let value = f[i].1.clone();
            give(&mut c, &value, rp, rs)
        },
    )?;
    for (name, replace) in [
        ("proxy_add_header_map_value", false),
        ("proxy_replace_header_map_value", true),
    ] {
        l.func_wrap(
            "env",
            name,
            move |mut c: C<'_>, m: i32, kp: i32, kn: i32, vp: i32, vn: i32| -> R {
                let (Some(key), Some(value)) = (text(&c, kp, kn), read(&c, vp, vn)) else {
                    return Ok(INVALID_MEMORY_ACCESS);
                };
                let Some(f) = map_mut(&mut c, m) else {
                    return Ok(NOT_FOUND);
                };
                let key = key.to_ascii_lowercase();
                match find(f, &key) {
                    Some(i) if replace => {
                        f[i].1 = value;
                        let mut n = 0;
                        f.retain(|(k, _)| {
                            *k != key || {
                                n += 1;
                                n == 1
                            }
                        });
                    }
                    _ => f.push((key, value)),
                }
                Ok(OK)
            },
        )?;
    }
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, m: i32, kp: i32, kn: i32| -> R {
            let Some(key) = text(&c, kp, kn) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let Some(f) = map_mut(&mut c, m) else {
                return Ok(NOT_FOUND);
            };
            f.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
            Ok(OK)
        },
    )?;
    Ok(())
}

fn properties(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pn: i32, rp: i32, rs: i32| -> R {
            let Some(path) = read(&c, pp, pn) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let path = String::from_utf8_lossy(&path).replace('\0', ".");
            let h = c.data();
            let value = match path.as_str() {
                "plugin_name" => Some(h.plugin.as_bytes().to_vec()),
                "plugin_root_id" | "plugin_vm_id" => Some(Vec::new()),
                _ => h
                    .exchange
                    .properties
                    .iter()
                    .find(|(k, _)| *k == path)
                    .map(|(_, v)| v.clone()),
            };
            match value {
                Some(v) => give(&mut c, &v, rp, rs),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pn: i32, vp: i32, vn: i32| -> R {
            let (Some(path), Some(value)) = (read(&c, pp, pn), read(&c, vp, vn)) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let path = String::from_utf8_lossy(&path).replace('\0', ".");
            let props = &mut c.data_mut().exchange.properties;
            match props.iter_mut().find(|(k, _)| *k == path) {
                Some(slot) => slot.1 = value,
                None => props.push((path, value)),
            }
            Ok(OK)
        },
    )?;
    Ok(())
}

fn streams(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dp: i32,
         dn: i32,
         bp: i32,
         bn: i32,
         hp: i32,
         hn: i32,
         _grpc: i32|
         -> R {
            let (Some(details), Some(body), Some(headers)) =
                (text(&c, dp, dn), read(&c, bp, bn), read(&c, hp, hn))
            else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let Some(headers) = deserialize(&headers) else {
                return Ok(SERIALIZATION_FAILURE);
            };
            let status = status as u32;
            if !(200..=599).contains(&status) {
                return Ok(BAD_ARGUMENT);
            }
            c.data_mut().exchange.local = Some(LocalResponse {
                status: status as u16,
                headers,
                body,
                details,
            });
            Ok(OK)
        },
    )?;
    for name in [
        "proxy_continue_stream",
        "proxy_close_stream",
        "proxy_set_effective_context",
    ] {
        l.func_wrap("env", name, |_: C<'_>, _: i32| -> R { Ok(OK) })?;
    }
    l.func_wrap("env", "proxy_done", |_: C<'_>| -> R { Ok(OK) })?;
    Ok(())
}

fn shared(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kn: i32, rp: i32, rs: i32, rcas: i32| -> R {
            let Some(key) = read(&c, kp, kn) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let found = SHARED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map
                .get(&key)
                .cloned();
            let Some((value, cas)) = found else {
                return Ok(NOT_FOUND);
            };
            let status = give(&mut c, &value, rp, rs)?;
            if status == OK && !put_u32(&mut c, rcas, cas) {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            Ok(status)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |c: C<'_>, kp: i32, kn: i32, vp: i32, vn: i32, cas: i32| -> R {
            let (Some(key), Some(value)) = (read(&c, kp, kn), read(&c, vp, vn)) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let mut s = SHARED.lock().unwrap_or_else(|p| p.into_inner());
            let old = s.map.get(&key).map(|(v, c)| (v.len(), *c));
            if let Some((_, current)) = old
                && cas != 0
                && cas as u32 != current
            {
                return Ok(CAS_MISMATCH);
            }
            let bytes = s.bytes - old.map_or(0, |(n, _)| n + key.len()) + key.len() + value.len();
            if bytes > SHARED_CAP {
                return Ok(INTERNAL_FAILURE);
            }
            s.bytes = bytes;
            let next = old.map_or(1, |(_, c)| c.wrapping_add(1).max(1));
            s.map.insert(key, (value, next));
            Ok(OK)
        },
    )?;
    Ok(())
}

fn wasi(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    const W: &str = "wasi_snapshot_preview1";
    l.func_wrap(
        W,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, ret: i32| -> R {
            if fd != 1 && fd != 2 {
                return Ok(WASI_BADF);
            }
            let mut text = Vec::new();
            for i in 0..n.clamp(0, 1024) {
                let Some(iov) = read(&c, iovs + 8 * i, 8) else {
                    return Ok(WASI_FAULT);
                };
                let (p, len) = (
                    i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]),
                    i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]),
                );
                let Some(b) = read(&c, p, len) else {
                    return Ok(WASI_FAULT);
                };
                text.extend_from_slice(&b);
            }
            let plugin = &*c.data().plugin;
            let msg = String::from_utf8_lossy(&text);
            if fd == 2 {
                tracing::warn!(plugin, "{}", msg.trim_end());
            } else {
                tracing::info!(plugin, "{}", msg.trim_end());
            }
            let ok = put_u32(&mut c, ret, text.len() as u32);
            Ok(if ok { WASI_SUCCESS } else { WASI_FAULT })
        },
    )?;
    l.func_wrap(
        W,
        "clock_time_get",
        |mut c: C<'_>, _id: i32, _p: i64, ret: i32| -> R {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let ok = write(&mut c, ret, &(now.as_nanos() as u64).to_le_bytes());
            Ok(if ok { WASI_SUCCESS } else { WASI_FAULT })
        },
    )?;
    l.func_wrap(W, "random_get", |mut c: C<'_>, p: i32, n: i32| -> R {
        let mut bytes = vec![0u8; n as u32 as usize];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        Ok(if write(&mut c, p, &bytes) {
            WASI_SUCCESS
        } else {
            WASI_FAULT
        })
    })?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        l.func_wrap(W, name, |mut c: C<'_>, a: i32, b: i32| -> R {
            let ok = put_u32(&mut c, a, 0) && put_u32(&mut c, b, 0);
            Ok(if ok { WASI_SUCCESS } else { WASI_FAULT })
        })?;
    }
    for name in ["environ_get", "args_get"] {
        l.func_wrap(W, name, |_: C<'_>, _: i32, _: i32| -> R {
            Ok(WASI_SUCCESS)
        })?;
    }
    l.func_wrap(
        W,
        "proc_exit",
        |_: C<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the plugin exited with code {code}"
            )))
        },
    )?;
    Ok(())
}

/// Every other function the module imports: `UNIMPLEMENTED` (or WASI's
/// `NOTSUP`) for a single i32 result, zeros otherwise.
fn stub_the_rest(l: &mut Linker<Host>, module: &Module) -> wasmtime::Result<()> {
    let missing: Vec<_> = module
        .imports()
        .filter_map(|i| {
            Some((
                i.module().to_owned(),
                i.name().to_owned(),
                i.ty().func()?.clone(),
            ))
        })
        .collect();
    for (m, name, ty) in missing {
        // Defining a name the host already has fails: that import is real.
        let status = if m == "wasi_snapshot_preview1" {
            WASI_NOTSUP
        } else {
            UNIMPLEMENTED
        };
        let results: Vec<ValType> = ty.results().collect();
        let plugin_module = m.clone();
        let plugin_name = name.clone();
        let _ = l.func_new(&m, &name, ty, move |_c, _args, out| {
            tracing::debug!(import = %format!("{plugin_module}.{plugin_name}"), "unimplemented host call");
            for (slot, t) in out.iter_mut().zip(&results) {
                *slot = match t {
                    ValType::I32 if results.len() == 1 => Val::I32(status),
                    t => Val::default_for_ty(t).unwrap_or(Val::I32(0)),
                };
            }
            Ok(())
        });
    }
    Ok(())
}
