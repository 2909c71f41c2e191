//! What the relay process and the machine cost, read from `/proc` (Linux only).
//!
//! `/proc/<pid>/stat` gives user and system CPU time in clock ticks (fields 14 and 15; the
//! command name in field 2 may contain spaces and parentheses, so fields are counted from the
//! last `)`), and `/proc/<pid>/status` gives `VmHWM`, the peak resident set size. The scenario
//! samples at the start and end of the measured window; CPU per event is the difference divided
//! by the events delivered. Peak RSS is the process's high-water mark, so it covers start-up too.
//!
//! The first line of `/proc/stat` (`cpu  user nice system idle iowait irq softirq steal …`, in
//! ticks summed over every core) tells how busy the whole machine was over the same window: a
//! run that leaves cores idle while it waits (for a sync, say) is bound by latency, not by CPU,
//! and only this shows it, since the processes' own CPU cannot count time nobody spent.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

/// One reading of a process's cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User plus system CPU time, in seconds.
    pub cpu_secs: f64,
    /// Peak resident set size so far, in bytes.
    pub peak_rss_bytes: u64,
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Parses the contents of `/proc/<pid>/stat` into CPU seconds.
pub fn parse_stat(stat: &str) -> Result<f64> {
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("no ')' after the command name"))?;
    // After ")": field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("expected at least {} fields, found {}", i + 1, fields.len()))?
            .parse::<u64>()
            .with_context(|| format!("field {} is not a number", i + 3))
    };
    Ok((tick(11)? + tick(12)?) as f64 / clock_ticks_per_sec())
}

/// Parses the contents of `/proc/<pid>/status` into the peak RSS in bytes.
pub fn parse_status(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow!("no VmHWM line"))?;
    let kib: u64 = line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("expected `VmHWM: N kB`, found {line:?}"))?;
    Ok(kib * 1024)
}

/// The machine's CPU time so far, in ticks summed over every core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineSample {
    /// user, nice, system, irq, softirq and steal.
    pub busy: u64,
    /// Idle while some task waited for a disk.
    pub iowait: u64,
    /// Everything, idle included.
    pub total: u64,
}

/// What the machine did between two samples, in percent of all its cores' time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineShare {
    pub busy_pct: f64,
    pub iowait_pct: f64,
}

impl MachineSample {
    /// The share of `later - self` that was busy, and that was idle waiting for a disk;
    /// `None` if no time passed.
    pub fn share_until(self, later: MachineSample) -> Option<MachineShare> {
        let total = later.total.checked_sub(self.total).filter(|t| *t > 0)? as f64;
        let part = |a: u64, b: u64| 100.0 * b.saturating_sub(a) as f64 / total;
        Some(MachineShare {
            busy_pct: part(self.busy, later.busy),
            iowait_pct: part(self.iowait, later.iowait),
        })
    }
}

/// Parses the contents of `/proc/stat` (its `cpu ` line).
pub fn parse_machine(stat: &str) -> Result<MachineSample> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no `cpu ` line"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("expected numbers after `cpu`, found {line:?}"))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = ticks[..] else {
        return Err(anyhow!(
            "expected at least 8 fields after `cpu`, found {}",
            ticks.len()
        ));
    };
    let busy = user + nice + system + irq + softirq + steal;
    Ok(MachineSample {
        busy,
        iowait,
        total: busy + idle + iowait,
    })
}

/// Samples the whole machine now.
pub fn machine() -> Result<MachineSample> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine(&stat)
}

/// Samples process `pid` now.
pub fn sample(pid: u32) -> Result<Sample> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(dir.join("stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(dir.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(Sample {
        cpu_secs: parse_stat(&stat)?,
        peak_rss_bytes: parse_status(&status)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let stat = "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 \
                    100 1000000 500 18446744073709551615";
        let cpu = parse_stat(stat).expect("parses");
        assert!((cpu - 300.0 / clock_ticks_per_sec()).abs() < 1e-9);
        assert!(parse_stat("1234 (x) S 1").is_err());
    }

    #[test]
    fn parses_status_vmhwm() {
        let status = "Name:\tsluice\nVmPeak:\t  9000 kB\nVmHWM:\t    3456 kB\nVmRSS:\t 3000 kB\n";
        assert_eq!(parse_status(status).expect("parses"), 3456 * 1024);
        assert!(parse_status("Name: x\n").is_err());
    }

    #[test]
    fn parses_the_machine_line_and_shares_a_window() {
        let before = "cpu  100 0 50 800 40 0 10 0 0 0\ncpu0 50 0 25 400 20 0 5 0 0 0\n";
        let after = "cpu  160 0 90 860 80 0 30 20 0 0\nintr 1\n";
        let (b, a) = (
            parse_machine(before).expect("parses"),
            parse_machine(after).expect("parses"),
        );
        assert_eq!((b.busy, b.iowait, b.total), (160, 40, 1000));
        let share = b.share_until(a).expect("time passed");
        // 140 busy, 40 iowait and 60 idle ticks out of 240.
        assert!((share.busy_pct - 100.0 * 140.0 / 240.0).abs() < 1e-9);
        assert!((share.iowait_pct - 100.0 * 40.0 / 240.0).abs() < 1e-9);
        assert!(b.share_until(b).is_none());
        assert!(parse_machine("cpu  1 2 3\n").is_err());
        assert!(parse_machine("cpu  1 x 3 4 5 6 7 8\n").is_err());
        assert!(parse_machine("intr 5\n").is_err());
        assert!(machine().is_ok());
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.peak_rss_bytes > 0);
        assert!(s.cpu_secs >= 0.0);
    }
}
