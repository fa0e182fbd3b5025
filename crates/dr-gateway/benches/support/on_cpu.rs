//! A process's time on CPU at nanosecond resolution, shared by the benches that
//! include it (`#[path = "support/on_cpu.rs"] mod on_cpu;`).
//!
//! why: `utime + stime` in `/proc/<pid>/stat` counts 10 ms ticks, too coarse for a
//! few seconds of work split into per-event figures; each thread's `schedstat`
//! counts the nanoseconds it ran, system calls included.

/// Nanoseconds on CPU summed over the process's current threads; `None` when the
/// kernel keeps no schedstats. Blind to threads that exited in between: the
/// benches' servers keep theirs for the whole measure.
pub(crate) fn threads_on_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0;
    for task in tasks.flatten() {
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        sum += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}
