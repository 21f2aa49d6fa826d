//! CPU time of this process's threads, from `/proc/self/task/<tid>/stat` (utime + stime).
//!
//! The benchmarks run the daemon in-process on its own runtime whose threads are named
//! [`DAEMON_THREADS`]; everything else (the benchmark's clients) runs on other threads. So one
//! reading splits the process's CPU time into "the daemon" and "the clients", as
//! `/proc/<pid>/stat` would for a daemon in a process of its own.

use std::time::Duration;

/// Thread name of the daemon's runtime in a benchmark (`comm` holds at most 15 bytes).
pub const DAEMON_THREADS: &str = "tenantd-daemon";

/// Linux reports utime/stime in clock ticks of `USER_HZ`, 100 on every Linux architecture
/// tenantd builds for.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time used so far by the daemon's threads and by all other threads of this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// Threads named [`DAEMON_THREADS`].
    pub daemon: Duration,
    /// Every other thread (the benchmark's clients).
    pub clients: Duration,
}

impl CpuTimes {
    /// Reads every thread of this process now. Threads that ended meanwhile are not counted,
    /// so a benchmark keeps its runtimes alive across a measurement.
    pub fn now() -> Result<Self, super::BenchError> {
        let mut times = CpuTimes::default();
        let tasks = std::fs::read_dir("/proc/self/task").map_err(super::err)?;
        for task in tasks {
            let path = task.map_err(super::err)?.path().join("stat");
            // A thread may end between listing and reading: it is simply not counted.
            let Ok(stat) = std::fs::read_to_string(&path) else { continue };
            let (name, ticks) = parse_stat(&stat)
                .ok_or_else(|| super::BenchError(format!("cannot parse {}", path.display())))?;
            let spent = Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND);
            if name == DAEMON_THREADS {
                times.daemon += spent;
            } else {
                times.clients += spent;
            }
        }
        Ok(times)
    }

    /// CPU time spent since `earlier`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            daemon: self.daemon.saturating_sub(earlier.daemon),
            clients: self.clients.saturating_sub(earlier.clients),
        }
    }
}

/// CPU time used so far by the PostgreSQL processes `pids` of a server on this machine, or
/// `None` when one of them is not a local `postgres` process (the server is elsewhere).
pub fn postgres_cpu(pids: &[i32]) -> Option<Duration> {
    let mut spent = Duration::ZERO;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, ticks) = parse_stat(&stat)?;
        if name != "postgres" {
            return None;
        }
        spent += Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND);
    }
    Some(spent)
}

/// `comm` and utime + stime (fields 14 and 15) of one `stat` line. `comm` sits between the
/// first `(` and the last `)`, and may itself hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?;
    // After ")": field 3 (state) onwards; utime is field 14, stime field 15.
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

/// A runtime for a benchmark's in-process daemon, on threads named [`DAEMON_THREADS`]
/// (two workers, like `tenantd serve` on this machine's two cores).
pub fn daemon_runtime() -> Result<tokio::runtime::Runtime, super::BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(DAEMON_THREADS)
        .enable_all()
        .build()
        .map_err(super::err)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (tenantd-daemon) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 2 0 100 0 0";
        assert_eq!(super::parse_stat(line), Some(("tenantd-daemon", 281)));
        let odd = "7 (a) b (c) R 1 2 3 4 5 6 7 8 9 10 5 6 0 0";
        assert_eq!(super::parse_stat(odd), Some(("a) b (c", 11)));
        assert_eq!(super::parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_spends_cpu() {
        let before = super::CpuTimes::now().unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(std::hint::black_box(x), 1);
        let spent = super::CpuTimes::now().unwrap().since(&before);
        assert!(spent.clients > std::time::Duration::ZERO, "{spent:?}");
    }
}
