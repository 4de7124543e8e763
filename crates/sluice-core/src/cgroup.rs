//! What the process's cgroup allows: CPU quota and memory limits (v2,
//! with v1 read too), falling back to the host. Sluice sizes its worker
//! threads and its memory-bound defaults from it at start, and watches
//! memory use against it to shed new work before the OOM killer acts.
//!
//! `SLUICE_CGROUP_ROOT=DIR` reads the cgroup files from `DIR` instead of
//! the process's own cgroup (for tests and for odd mounts).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Limits found at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// 2, 1, or 0 when no cgroup was found.
    pub version: u8,
    /// The directory memory is read from (and CPU, on v2).
    pub memory_dir: Option<PathBuf>,
    /// CPU quota in cores (`cpu.max`, `cpu.cfs_quota_us / cpu.cfs_period_us`).
    pub cpu_cores: Option<f64>,
    /// `memory.max` (`memory.limit_in_bytes` on v1).
    pub memory_max: Option<u64>,
    /// `memory.high` (`memory.soft_limit_in_bytes` on v1).
    pub memory_high: Option<u64>,
    /// CPUs this process may run on (affinity).
    pub host_cpus: usize,
    /// `MemTotal` of `/proc/meminfo`.
    pub host_memory: u64,
}

/// Memory use now, for the pressure watch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// `memory.current` less `inactive_file` (the working set: page cache
    /// the kernel can drop is not counted).
    pub working_set: u64,
    /// `memory.events` `high`: times the cgroup was throttled at
    /// `memory.high` (v2 only).
    pub high_events: u64,
    /// `memory.pressure` `some avg10` (v2 only), percent.
    pub psi_some_avg10: Option<f64>,
}

/// Values at or past this are "no limit" (v1 writes a page-rounded i64::MAX).
const UNLIMITED: u64 = 1 << 60;

impl Limits {
    /// The limits of this process's cgroup.
    pub fn detect() -> Self {
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let host_memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| meminfo_total(&m))
            .unwrap_or(0);
        if let Some(root) = std::env::var_os("SLUICE_CGROUP_ROOT") {
            return Self::from_dirs(
                &[PathBuf::from(&root)],
                &[PathBuf::from(root)],
                host_cpus,
                host_memory,
            );
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let (mem, cpu) = own_dirs(&own, Path::new("/sys/fs/cgroup"));
        Self::from_dirs(&mem, &cpu, host_cpus, host_memory)
    }

    /// Reads limits from the cgroup directories given innermost first (the
    /// process's own, then its ancestors): the tightest limit wins.
    pub fn from_dirs(
        memory: &[PathBuf],
        cpu: &[PathBuf],
        host_cpus: usize,
        host_memory: u64,
    ) -> Self {
        let v2 = memory
            .first()
            .is_some_and(|d| d.join("memory.max").exists() || d.join("cpu.max").exists());
        let v1 = !v2
            && memory
                .first()
                .is_some_and(|d| d.join("memory.limit_in_bytes").exists());
        let version = if v2 {
            2
        } else if v1 {
            1
        } else {
            0
        };
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (mut memory_max, mut memory_high, mut cpu_cores) = (None, None, None::<f64>);
        for d in memory {
            let (max, high) = if v2 {
                (
                    read_limit(&d.join("memory.max")),
                    read_limit(&d.join("memory.high")),
                )
            } else {
                (
                    read_limit(&d.join("memory.limit_in_bytes")),
                    read_limit(&d.join("memory.soft_limit_in_bytes")),
                )
            };
            memory_max = min(memory_max, max);
            memory_high = min(memory_high, high);
        }
        let cpu_dirs = if v2 { memory } else { cpu };
        for d in cpu_dirs {
            let quota = if v2 {
                read(&d.join("cpu.max")).and_then(|s| cpu_max(&s))
            } else {
                let q =
                    read(&d.join("cpu.cfs_quota_us")).and_then(|s| s.trim().parse::<i64>().ok());
                let p =
                    read(&d.join("cpu.cfs_period_us")).and_then(|s| s.trim().parse::<i64>().ok());
                match (q, p) {
                    (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                    _ => None,
                }
            };
            if let Some(q) = quota {
                cpu_cores = Some(cpu_cores.map_or(q, |c| c.min(q)));
            }
        }
        Self {
            version,
            memory_dir: (version > 0).then(|| memory[0].clone()),
            cpu_cores,
            memory_max,
            memory_high,
            host_cpus,
            host_memory,
        }
    }

    /// Worker threads: the CPU quota rounded up, within the CPUs the
    /// process may run on.
    pub fn workers(&self) -> usize {
        let host = self.host_cpus.max(1);
        self.cpu_cores
            .map_or(host, |c| (c.ceil() as usize).clamp(1, host))
    }

    /// The memory the process should plan to stay within: the lower of
    /// `memory.high` and `memory.max`, else the host's memory.
    pub fn memory_budget(&self) -> Option<u64> {
        match (self.memory_high, self.memory_max) {
            (Some(h), Some(m)) => Some(h.min(m)),
            (a, b) => a
                .or(b)
                .or((self.host_memory > 0).then_some(self.host_memory)),
        }
    }

    /// The limit memory pressure is measured against: `memory.high` when
    /// set (the kernel throttles there), else `memory.max`.
    pub fn pressure_limit(&self) -> Option<u64> {
        self.memory_high.or(self.memory_max)
    }

    /// The file whose single number is the cgroup's whole memory use
    /// (`memory.current`, `memory.usage_in_bytes`): one small read, cheap
    /// enough to look at between the full [`usage`](Self::usage) reads.
    pub fn current_file(&self) -> Option<PathBuf> {
        let d = self.memory_dir.as_ref()?;
        Some(d.join(if self.version == 2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        }))
    }

    /// Memory use now (zeros without a cgroup).
    pub fn usage(&self) -> Usage {
        let Some(d) = &self.memory_dir else {
            return Usage::default();
        };
        let (current, stat_key) = if self.version == 2 {
            (read_u64(&d.join("memory.current")), "inactive_file")
        } else {
            (
                read_u64(&d.join("memory.usage_in_bytes")),
                "total_inactive_file",
            )
        };
        let inactive = read(&d.join("memory.stat"))
            .and_then(|s| keyed(&s, stat_key))
            .unwrap_or(0);
        Usage {
            working_set: current.unwrap_or(0).saturating_sub(inactive),
            high_events: read(&d.join("memory.events"))
                .and_then(|s| keyed(&s, "high"))
                .unwrap_or(0),
            psi_some_avg10: read(&d.join("memory.pressure")).and_then(|s| psi_some_avg10(&s)),
        }
    }
}

/// The budget the configuration's memory-bound defaults are fitted to,
/// set once by the server binary at start (an embedding host sets none:
/// its defaults stay as documented).
static BUDGET: OnceLock<u64> = OnceLock::new();

/// Sets the memory budget defaults are fitted to. Later calls are ignored.
pub fn set_memory_budget(bytes: u64) {
    let _ = BUDGET.set(bytes);
}

/// A default fitted to the budget: at most `default`, at most the number of
/// `item_bytes` items that fit in `1/share` of the budget, at least `floor`.
pub fn fit(default: u64, item_bytes: u64, share: u64, floor: u64) -> u64 {
    match BUDGET.get() {
        Some(b) => fit_to(*b, default, item_bytes, share, floor),
        None => default,
    }
}

pub fn fit_to(budget: u64, default: u64, item_bytes: u64, share: u64, floor: u64) -> u64 {
    (budget / share.max(1) / item_bytes.max(1)).clamp(floor.min(default), default)
}

/// The cgroup directories of this process (memory, cpu), innermost first,
/// from `/proc/self/cgroup` and the mount at `root`.
fn own_dirs(proc_self_cgroup: &str, root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut v2_path = None;
    let (mut mem_v1, mut cpu_v1) = (None, None);
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            v2_path = Some(path);
        }
        for c in ctrls.split(',') {
            match c {
                "memory" => mem_v1 = Some(path),
                "cpu" => cpu_v1 = Some((ctrls, path)),
                _ => {}
            }
        }
    }
    let chain = |mount: PathBuf, path: &str| -> Vec<PathBuf> {
        let mut out = Vec::new();
        let rel = path.trim_start_matches('/');
        let mut dir = mount.join(rel);
        if !dir.exists() {
            // A cgroup namespace or a bind mount: the mount is our cgroup.
            return vec![mount];
        }
        loop {
            out.push(dir.clone());
            if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
                break;
            }
        }
        out
    };
    if root.join("cgroup.controllers").exists() {
        let dirs = chain(root.to_owned(), v2_path.unwrap_or("/"));
        return (dirs.clone(), dirs);
    }
    let mem = mem_v1
        .map(|p| chain(root.join("memory"), p))
        .unwrap_or_default();
    let cpu = cpu_v1
        .map(|(ctrls, p)| {
            let m = if root.join(ctrls).exists() {
                root.join(ctrls)
            } else {
                root.join("cpu")
            };
            chain(m, p)
        })
        .unwrap_or_default();
    (mem, cpu)
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

pub fn read_u64(p: &Path) -> Option<u64> {
    read(p).and_then(|s| s.trim().parse().ok())
}

/// A byte limit: `max` (v2) and huge values (v1) are no limit.
fn read_limit(p: &Path) -> Option<u64> {
    read_u64(p).filter(|v| *v < UNLIMITED)
}

/// `cpu.max`: `max 100000` (no quota) or `QUOTA PERIOD`.
fn cpu_max(s: &str) -> Option<f64> {
    let mut it = s.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// The value of `key` in a `key value` per line file (`memory.stat`,
/// `memory.events`).
fn keyed(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn psi_some_avg10(s: &str) -> Option<f64> {
    let line = s.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

fn meminfo_total(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests;
