//! USDT probes (SystemTap SDT notes): what `bpftrace`, `perf` and `gdb` see
//! in a running gateway without a restart or a code change.
//!
//! Every probe is provider `sluice`. A probe site is one `nop` and an ELF
//! note; its arguments are evaluated only while a tracer is attached (the
//! probe's semaphore is non-zero), so an unobserved process pays a load
//! and a branch per site. Strings are passed as a pointer and a length
//! (`str(arg0, arg1)` in bpftrace); they are not NUL-terminated. Durations
//! are microseconds.
//!
//! | probe | arguments |
//! |---|---|
//! | `request_start` | route, route_len |
//! | `request_end` | route, route_len, model, model_len, status, latency_us |
//! | `upstream_attempt` | model, model_len, provider, provider_len, attempt (1 = first), outcome (0 success, 1 failure, 2 neutral) |
//! | `breaker` | model, model_len, provider, provider_len, state (1 opened, 0 closed) |
//! | `agent_connect` | agent_id, agent_id_len, groups (count) |
//! | `agent_disconnect` | agent_id, agent_id_len, reason, reason_len, evicted (0/1) |

use probe::probe_lazy;

/// A request reached a route.
#[inline]
pub fn request_start(route: &str) {
    probe_lazy!(sluice, request_start, route.as_ptr(), route.len());
}

/// A request was answered (or cancelled: status 499).
#[inline]
pub fn request_end(route: &str, model: &str, status: u16, latency_us: u64) {
    probe_lazy!(
        sluice,
        request_end,
        route.as_ptr(),
        route.len(),
        model.as_ptr(),
        model.len(),
        status,
        latency_us
    );
}

/// One upstream attempt settled on its target.
#[inline]
pub fn upstream_attempt(model: &str, provider: &str, attempt: u32, outcome: u8) {
    probe_lazy!(
        sluice,
        upstream_attempt,
        model.as_ptr(),
        model.len(),
        provider.as_ptr(),
        provider.len(),
        attempt,
        outcome
    );
}

/// A target's circuit breaker opened (`open = true`) or closed.
#[inline]
pub fn breaker(model: &str, provider: &str, open: bool) {
    probe_lazy!(
        sluice,
        breaker,
        model.as_ptr(),
        model.len(),
        provider.as_ptr(),
        provider.len(),
        u8::from(open)
    );
}

/// An agent's session began on the hub.
#[inline]
pub fn agent_connect(agent_id: &str, groups: usize) {
    probe_lazy!(
        sluice,
        agent_connect,
        agent_id.as_ptr(),
        agent_id.len(),
        groups
    );
}

/// An agent's session ended.
#[inline]
pub fn agent_disconnect(agent_id: &str, reason: &str, evicted: bool) {
    probe_lazy!(
        sluice,
        agent_disconnect,
        agent_id.as_ptr(),
        agent_id.len(),
        reason.as_ptr(),
        reason.len(),
        u8::from(evicted)
    );
}
