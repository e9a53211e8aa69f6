//! The `process_*` series of Prometheus client libraries, which dashboards
//! expect of every exporter: resident memory, CPU seconds, start time, open
//! and maximum file descriptors. Read from `/proc` at each scrape; absent on
//! systems without it (a missing series is better than a wrong 0).

use std::fs;

use super::Exposition;

/// What `/proc` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessFigures {
    /// User + system CPU time, in seconds.
    pub(crate) cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub(crate) resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub(crate) virtual_bytes: u64,
    /// Start of the process, in epoch seconds.
    pub(crate) start_time_seconds: f64,
    /// Open file descriptors.
    pub(crate) open_fds: u64,
    /// The soft limit on open file descriptors (`None`: unlimited).
    pub(crate) max_fds: Option<u64>,
}

/// The most memory this process has had resident so far, in bytes
/// (`VmHWM`; `getrusage` would count the memory of the process that started
/// this one, which the kernel carries across `exec`).
pub(crate) fn peak_resident_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    peak_from_status(&status)
}

fn peak_from_status(status: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Reads the figures of this process, `None` without `/proc`.
pub(crate) fn read() -> Option<ProcessFigures> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let boot = fs::read_to_string("/proc/stat").ok()?;
    let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let open_fds = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    parse(
        &stat,
        &boot,
        &limits,
        open_fds,
        u64::try_from(ticks).ok()?,
        u64::try_from(page).ok()?,
    )
}

/// The figures from the text of `/proc/self/stat`, `/proc/stat` and
/// `/proc/self/limits`, with the clock ticks per second and the page size.
pub(crate) fn parse(
    stat: &str,
    boot: &str,
    limits: &str,
    open_fds: u64,
    ticks: u64,
    page: u64,
) -> Option<ProcessFigures> {
    if ticks == 0 {
        return None;
    }
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses: the fields that follow start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let utime = field(14)?;
    let stime = field(15)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let rss_pages = field(24)?;
    let btime = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .and_then(|soft| soft.parse::<u64>().ok());
    Some(ProcessFigures {
        cpu_seconds: (utime + stime) as f64 / ticks as f64,
        resident_bytes: rss_pages * page,
        virtual_bytes: vsize,
        start_time_seconds: btime as f64 + start_ticks as f64 / ticks as f64,
        open_fds,
        max_fds,
    })
}

/// Appends the `process_*` families.
pub(super) fn render(out: &mut Exposition, p: &ProcessFigures) {
    out.family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds",
    );
    out.sample("process_cpu_seconds_total", &[], p.cpu_seconds);
    out.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        p.resident_bytes,
    );
    out.gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        p.virtual_bytes,
    );
    out.family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the epoch in seconds",
    );
    out.sample("process_start_time_seconds", &[], p.start_time_seconds);
    out.gauge(
        "process_open_fds",
        "Number of open file descriptors",
        p.open_fds,
    );
    if let Some(max) = p.max_fds {
        out.gauge(
            "process_max_fds",
            "Maximum number of open file descriptors",
            max,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_read_from_vmhwm() {
        let status = "Name:\tx\nVmPeak:\t  900 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(super::peak_from_status(status), Some(20 << 20));
        assert_eq!(super::peak_from_status("Name:\tx\n"), None);
        assert!(super::peak_resident_bytes().is_some_and(|b| b > 0));
    }

    const STAT: &str = "4242 (a (strange) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
        250 50 0 0 20 0 3 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    const BOOT: &str = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units\n\
        Max cpu time              unlimited            unlimited            seconds\n\
        Max open files            1024                 524288               files\n";

    #[test]
    fn figures_are_read_from_proc_text() {
        let p = parse(STAT, BOOT, LIMITS, 9, 100, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, 2560 * 4096);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.start_time_seconds, 1_700_000_123.45);
        assert_eq!(p.open_fds, 9);
        assert_eq!(p.max_fds, Some(1024));
        assert!(parse("garbage", BOOT, LIMITS, 1, 100, 4096).is_none());
        assert!(parse(STAT, "no btime", LIMITS, 1, 100, 4096).is_none());
    }

    #[test]
    fn this_process_has_sane_figures() {
        let p = read().expect("/proc is readable on Linux");
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.open_fds >= 3, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0,
            "{p:?}"
        );
    }
}
