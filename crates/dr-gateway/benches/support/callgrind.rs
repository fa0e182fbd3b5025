//! Counting instructions with `valgrind --tool=callgrind`, shared by the benches that
//! include it (`#[path = "support/callgrind.rs"] mod callgrind;`).
//!
//! A bench runs the same workload twice, short and long, counting from the end of
//! its warm-up ([`start_counting`]); `(long - short) / units` is the cost of one unit
//! with shutdown cancelled out. The per-function
//! breakdown is the same difference taken per function (each function's own
//! instructions, from `callgrind_annotate`), so it shows where one unit's instructions
//! go, not where start-up's do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Set (to anything) to keep every run's profile on disk for `callgrind_annotate`
/// (e.g. `--inclusive=yes`); the path of each is printed.
pub(crate) const KEEP_PROFILES: &str = "DR_BENCH_KEEP_PROFILES";

/// Whether valgrind can be run.
pub(crate) fn installed() -> bool {
    Command::new("valgrind").arg("--version").output().is_ok()
}

/// Where a run's profile goes (in the temp directory; removed by [`Profile::finish`]).
pub(crate) fn out_file(bench: &str, label: &str, units: u64) -> PathBuf {
    // why: a number per run, so the repeats of a mode keep their own profiles.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "{bench}-{}-{label}-{units}-{run}.callgrind",
        std::process::id()
    ))
}

/// `valgrind --tool=callgrind` writing to `out`, running `args`, counting nothing
/// until [`start_counting`] (start-up and warm-up are left out).
///
/// why: start-up's cost differs by millions of instructions from one run to the
/// next (the metrics recorder's clock calibrates by spinning for a stretch of wall
/// time, which valgrind stretches by a different amount each run), and that does
/// not cancel out between a short and a long run: it made one event's count vary
/// from 150 k to 270 k instructions.
pub(crate) fn command(out: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg("--instr-atstart=no")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .args(args);
    command
}

/// Turns counting on in the callgrind run of process `pid` (valgrind runs the
/// program in its own process, so a child's id or, from inside, this process's);
/// returns once callgrind confirmed it.
pub(crate) fn start_counting(pid: u32) -> Result<(), String> {
    let output = Command::new("callgrind_control")
        .arg("--instr=on")
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("cannot run callgrind_control: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && stdout.contains("OK") {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control did not turn counting on in {pid}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// One finished callgrind run: its instruction count and its profile on disk.
#[derive(Debug)]
pub(crate) struct Profile {
    pub(crate) instructions: u64,
    file: PathBuf,
}

impl Profile {
    /// Reads the count from a finished run's output ("==1234== Collected : 123").
    pub(crate) fn from_output(output: &Output, file: PathBuf, what: &str) -> Result<Self, String> {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let _ = std::fs::remove_file(&file);
            return Err(format!("the {what} run failed:\n{stderr}"));
        }
        let instructions = stderr
            .lines()
            .find_map(|l| {
                l.split_once("Collected :")
                    .map(|(_, n)| n.trim().to_owned())
            })
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no instruction count in callgrind's output:\n{stderr}"))?;
        Ok(Self { instructions, file })
    }

    /// Removes the profile from disk, unless [`KEEP_PROFILES`] is set.
    pub(crate) fn finish(self) {
        if std::env::var_os(KEEP_PROFILES).is_some() {
            println!("  profile kept: {}", self.file.display());
            return;
        }
        let _ = std::fs::remove_file(&self.file);
    }

    /// Each function's own instructions.
    fn self_cost(&self) -> Result<HashMap<String, i64>, String> {
        let output = Command::new("callgrind_annotate")
            .args(["--threshold=100", "--inclusive=no", "--auto=no"])
            .arg(&self.file)
            .output()
            .map_err(|e| format!("cannot run callgrind_annotate: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut costs = HashMap::new();
        // Lines of the function table: "17,645,447 (15.16%)  file:function [object]".
        for line in text.lines().skip_while(|l| !l.contains("file:function")) {
            let line = line.trim_start();
            let Some((count, rest)) = line.split_once(' ') else {
                continue;
            };
            let Ok(count) = count.replace(',', "").parse::<i64>() else {
                continue;
            };
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('(') {
                Some(r) => r.split_once(')').map_or(r, |(_, after)| after),
                None => rest,
            };
            let name = rest.trim();
            // "file:function [object]" → "function" (the object path is noise here).
            let name = name.rsplit_once(" [").map_or(name, |(n, _)| n);
            let name = name.split_once(':').map_or(name, |(file, function)| {
                if file.contains('/') || file == "???" {
                    function
                } else {
                    name
                }
            });
            *costs.entry(name.to_owned()).or_insert(0) += count;
        }
        if costs.is_empty() {
            return Err(format!(
                "callgrind_annotate printed no functions for {}",
                self.file.display()
            ));
        }
        Ok(costs)
    }
}

/// The run (per-unit cost, short profile, long profile) with the median cost; the
/// other runs' profiles are removed.
pub(crate) fn median_run(mut runs: Vec<(f64, Profile, Profile)>) -> (f64, Profile, Profile) {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = runs.remove(runs.len() / 2);
    for (_, short, long) in runs {
        short.finish();
        long.finish();
    }
    median
}

/// The `top` functions by own instructions per unit between a short and a long run:
/// one line each, "instructions per unit  share  function".
pub(crate) fn breakdown(
    short: &Profile,
    long: &Profile,
    units: u64,
    top: usize,
) -> Result<String, String> {
    let (short_costs, long_costs) = (short.self_cost()?, long.self_cost()?);
    let mut per_unit: Vec<(String, f64)> = long_costs
        .into_iter()
        .map(|(name, long)| {
            let short = short_costs.get(&name).copied().unwrap_or(0);
            (name, (long - short) as f64 / units as f64)
        })
        .collect();
    per_unit.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = (long.instructions as f64 - short.instructions as f64) / units as f64;
    Ok(per_unit
        .iter()
        .take(top)
        .map(|(name, cost)| {
            let name: String = name.chars().take(140).collect();
            format!("{cost:>9.0}  {:>5.1} %  {name}", cost / total * 100.0)
        })
        .collect::<Vec<_>>()
        .join("\n"))
}
