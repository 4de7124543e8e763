//! The timing loop the micro benchmarks share.

use std::time::Instant;

/// Mean ns per call of `f` over `n` calls, after `n / 10` warm-up calls.
pub fn time(n: u32, mut f: impl FnMut(u32)) -> f64 {
    for i in 0..n / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}
