//! Limits read from recorded cgroup files (v2 and v1, as the kernel writes
//! them), and the fitting of defaults.

use super::*;

fn dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-cgroup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for (f, text) in files {
        std::fs::write(d.join(f), text).unwrap();
    }
    d
}

const GIB: u64 = 1 << 30;

#[test]
fn v2_limits_usage_and_pressure() {
    let d = dir(
        "v2",
        &[
            ("cgroup.controllers", "cpuset cpu io memory pids\n"),
            ("cpu.max", "150000 100000\n"),
            ("memory.max", "536870912\n"),
            ("memory.high", "402653184\n"),
            ("memory.current", "300000000\n"),
            (
                "memory.stat",
                "anon 200000000\nfile 100000000\nactive_file 40000000\ninactive_file 60000000\n",
            ),
            (
                "memory.events",
                "low 0\nhigh 17\nmax 2\noom 0\noom_kill 0\n",
            ),
            (
                "memory.pressure",
                "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=4\n",
            ),
        ],
    );
    let l = Limits::from_dirs(
        std::slice::from_ref(&d),
        std::slice::from_ref(&d),
        8,
        16 * GIB,
    );
    assert_eq!(l.version, 2);
    assert_eq!(l.cpu_cores, Some(1.5));
    assert_eq!(l.workers(), 2, "1.5 cores round up");
    assert_eq!(l.memory_max, Some(512 << 20));
    assert_eq!(l.memory_high, Some(384 << 20));
    assert_eq!(l.memory_budget(), Some(384 << 20));
    assert_eq!(l.pressure_limit(), Some(384 << 20));
    let u = l.usage();
    assert_eq!(
        u.working_set, 240_000_000,
        "inactive page cache is not counted"
    );
    assert_eq!(u.high_events, 17);
    assert_eq!(u.psi_some_avg10, Some(12.5));
}

#[test]
fn v2_without_limits_falls_back_to_the_host() {
    let d = dir(
        "v2-none",
        &[
            ("cpu.max", "max 100000\n"),
            ("memory.max", "max\n"),
            ("memory.high", "max\n"),
        ],
    );
    let l = Limits::from_dirs(
        std::slice::from_ref(&d),
        std::slice::from_ref(&d),
        4,
        8 * GIB,
    );
    assert_eq!(l.version, 2);
    assert_eq!(
        (l.cpu_cores, l.memory_max, l.memory_high),
        (None, None, None)
    );
    assert_eq!(l.workers(), 4);
    assert_eq!(l.memory_budget(), Some(8 * GIB));
    assert_eq!(l.pressure_limit(), None);
}

#[test]
fn the_tightest_ancestor_wins() {
    let inner = dir(
        "v2-inner",
        &[("memory.max", "max\n"), ("cpu.max", "400000 100000\n")],
    );
    let outer = dir(
        "v2-outer",
        &[
            ("memory.max", "1073741824\n"),
            ("cpu.max", "50000 100000\n"),
        ],
    );
    let l = Limits::from_dirs(
        &[inner.clone(), outer.clone()],
        &[inner, outer],
        8,
        16 * GIB,
    );
    assert_eq!(l.memory_max, Some(GIB));
    assert_eq!(l.cpu_cores, Some(0.5));
    assert_eq!(l.workers(), 1);
}

#[test]
fn v1_limits_and_usage() {
    let mem = dir(
        "v1-mem",
        &[
            ("memory.limit_in_bytes", "268435456\n"),
            ("memory.soft_limit_in_bytes", "9223372036854771712\n"),
            ("memory.usage_in_bytes", "100000000\n"),
            ("memory.stat", "cache 10\ntotal_inactive_file 1000000\n"),
        ],
    );
    let cpu = dir(
        "v1-cpu",
        &[
            ("cpu.cfs_quota_us", "250000\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ],
    );
    let l = Limits::from_dirs(&[mem], &[cpu], 2, 24 * GIB);
    assert_eq!(l.version, 1);
    assert_eq!(l.memory_max, Some(256 << 20));
    assert_eq!(l.memory_high, None, "an unlimited soft limit");
    assert_eq!(l.cpu_cores, Some(2.5));
    assert_eq!(l.workers(), 2, "never more than the CPUs it may run on");
    let u = l.usage();
    assert_eq!(u.working_set, 99_000_000);
    assert_eq!((u.high_events, u.psi_some_avg10), (0, None));
}

#[test]
fn v1_without_a_quota() {
    let cpu = dir(
        "v1-noquota",
        &[
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ],
    );
    let mem = dir(
        "v1-nolimit",
        &[("memory.limit_in_bytes", "9223372036854771712\n")],
    );
    let l = Limits::from_dirs(&[mem], &[cpu], 2, 24 * GIB);
    assert_eq!((l.cpu_cores, l.memory_max), (None, None));
    assert_eq!(l.memory_budget(), Some(24 * GIB));
}

#[test]
fn own_cgroup_from_proc_self_cgroup() {
    // A v2 mount: the unified line names the process's cgroup.
    let root = dir("mount-v2", &[("cgroup.controllers", "memory\n")]);
    std::fs::create_dir_all(root.join("kubepods/pod1/c1")).unwrap();
    let (mem, cpu) = own_dirs("0::/kubepods/pod1/c1\n", &root);
    assert_eq!(
        mem,
        [
            root.join("kubepods/pod1/c1"),
            root.join("kubepods/pod1"),
            root.join("kubepods"),
            root.clone()
        ]
    );
    assert_eq!(mem, cpu);
    // Inside a cgroup namespace the path is not under the mount: the mount
    // itself is the cgroup.
    let (mem, _) = own_dirs("0::/../../elsewhere\n", &root);
    assert_eq!(mem, std::slice::from_ref(&root));
    // v1 (and hybrid): the memory and cpu controllers' own lines.
    let v1 = dir("mount-v1", &[]);
    std::fs::create_dir_all(v1.join("memory/a/b")).unwrap();
    std::fs::create_dir_all(v1.join("cpu,cpuacct/a")).unwrap();
    let (mem, cpu) = own_dirs("5:memory:/a/b\n3:cpu,cpuacct:/a\n0::/a\n", &v1);
    assert_eq!(
        mem,
        [
            v1.join("memory/a/b"),
            v1.join("memory/a"),
            v1.join("memory")
        ]
    );
    assert_eq!(cpu, [v1.join("cpu,cpuacct/a"), v1.join("cpu,cpuacct")]);
}

#[test]
fn defaults_fit_the_budget() {
    // 256 MiB: a quarter for connections at 16 KiB each.
    assert_eq!(fit_to(256 << 20, 65_536, 16 << 10, 4, 256), 4096);
    // Plenty of memory: the documented default.
    assert_eq!(fit_to(64 * GIB, 65_536, 16 << 10, 4, 256), 65_536);
    // Very little: the floor.
    assert_eq!(fit_to(1 << 20, 65_536, 16 << 10, 4, 256), 256);
    // A floor above the default is the default.
    assert_eq!(fit_to(1 << 20, 100, 16 << 10, 4, 256), 100);
    assert_eq!(
        meminfo_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
        Some(24_576_000 * 1024)
    );
    assert_eq!(cpu_max("max"), None);
    assert_eq!(cpu_max("50000"), Some(0.5));
}
