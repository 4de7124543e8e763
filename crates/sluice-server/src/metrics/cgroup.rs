//! `sluice_cgroup_*`: what the cgroup allows, memory use against it, and
//! the requests shed under memory pressure.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_core::cgroup::{Limits, Usage};

#[derive(Default)]
pub struct CgroupMetrics {
    version: Gauge,
    cpu_limit_cores: Gauge<f64, AtomicU64>,
    workers: Gauge,
    memory_max_bytes: Gauge,
    memory_high_bytes: Gauge,
    memory_working_set_bytes: Gauge,
    memory_high_events: Gauge,
    memory_pressure: Gauge<f64, AtomicU64>,
    shedding_gauge: Gauge,
    shed_requests: Counter,
}

impl CgroupMetrics {
    pub fn register(&self, r: &mut Registry) {
        let sub = r.sub_registry_with_prefix("cgroup");
        sub.register(
            "version",
            "The cgroup version read at start (2, 1; 0 = none found)",
            self.version.clone(),
        );
        sub.register(
            "cpu_limit_cores",
            "CPU quota in cores (cpu.max); the CPUs the process may use when there is none",
            self.cpu_limit_cores.clone(),
        );
        sub.register(
            "workers",
            "Worker threads sized from the CPU quota at start",
            self.workers.clone(),
        );
        sub.register(
            "memory_max_bytes",
            "memory.max (memory.limit_in_bytes on v1); the host's memory when unlimited",
            self.memory_max_bytes.clone(),
        );
        sub.register(
            "memory_high_bytes",
            "memory.high (memory.soft_limit_in_bytes on v1); 0 when unset",
            self.memory_high_bytes.clone(),
        );
        sub.register(
            "memory_working_set_bytes",
            "memory.current less inactive page cache",
            self.memory_working_set_bytes.clone(),
        );
        sub.register(
            "memory_high_events",
            "memory.events high: times the cgroup was throttled at memory.high",
            self.memory_high_events.clone(),
        );
        sub.register(
            "memory_pressure_some_avg10",
            "memory.pressure some avg10 (percent of time stalled on memory)",
            self.memory_pressure.clone(),
        );
        sub.register(
            "shedding",
            "1 while new requests are refused with 503 under memory pressure",
            self.shedding_gauge.clone(),
        );
        sub.register(
            "shed_requests",
            "Requests refused with 503 under memory pressure",
            self.shed_requests.clone(),
        );
    }

    /// What start found.
    pub fn limits(&self, l: &Limits, workers: usize) {
        self.version.set(i64::from(l.version));
        self.cpu_limit_cores
            .set(l.cpu_cores.unwrap_or(l.host_cpus as f64));
        self.workers.set(workers as i64);
        self.memory_max_bytes
            .set(l.memory_max.unwrap_or(l.host_memory) as i64);
        self.memory_high_bytes
            .set(l.memory_high.unwrap_or(0) as i64);
    }

    pub fn usage(&self, u: &Usage) {
        self.memory_working_set_bytes.set(u.working_set as i64);
        self.memory_high_events.set(u.high_events as i64);
        self.memory_pressure.set(u.psi_some_avg10.unwrap_or(0.0));
    }

    pub fn set_shedding(&self, on: bool) {
        crate::pressure::set_shedding(on);
        self.shedding_gauge.set(i64::from(on));
    }

    /// True (and counted) when a new request must be refused.
    pub fn shed(&self) -> bool {
        let on = crate::pressure::shedding();
        if on {
            self.shed_requests.inc();
        }
        on
    }

    pub fn is_shedding(&self) -> bool {
        crate::pressure::shedding()
    }
}
