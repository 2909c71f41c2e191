//! What the relay process costs, read from `/proc` (Linux only).
//!
//! `/proc/<pid>/stat` gives user and system CPU time in clock ticks (fields 14 and 15; the
//! command name in field 2 may contain spaces and parentheses, so fields are counted from the
//! last `)`), and `/proc/<pid>/status` gives `VmHWM`, the peak resident set size. The scenario
//! samples at the start and end of the measured window; CPU per event is the difference divided
//! by the events delivered. Peak RSS is the process's high-water mark, so it covers start-up too.

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
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.peak_rss_bytes > 0);
        assert!(s.cpu_secs >= 0.0);
    }
}
