//! Memory and CPU of processes, read from Linux `/proc`: peak RSS of the processes under
//! test, and CPU time of every process so the report can say what kept the machine busy.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Memory figures of `/proc/PID/status`, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident set size now.
    pub rss_kib: Option<u64>,
    /// `VmHWM`: the peak resident set size over the process's life.
    pub hwm_kib: Option<u64>,
}

/// Reads `VmRSS` and `VmHWM` from the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Memory {
    let kib = |value: &str| {
        value
            .trim()
            .strip_suffix("kB")
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let mut memory = Memory::default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            memory.rss_kib = kib(v);
        } else if let Some(v) = line.strip_prefix("VmHWM:") {
            memory.hwm_kib = kib(v);
        }
    }
    memory
}

/// The command name and user + system CPU time (clock ticks, all threads) from the text
/// of `/proc/PID/stat`. The name is in parentheses and may itself hold spaces or
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After ")": state is field 3 of the man page, utime 14, stime 15.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in clock ticks summed
/// over all CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    pub total: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Number of CPUs (`cpuN` lines).
    pub cpus: usize,
}

/// Parses the text of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<MachineCpu> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let values: Vec<u64> = first
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already counted in user and nice.
    let total = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    let cpus = lines
        .filter(|l| l.starts_with("cpu") && l[3..].starts_with(|c: char| c.is_ascii_digit()))
        .count()
        .max(1);
    Some(MachineCpu { total, idle, cpus })
}

/// CPU times of the machine and of every process at one moment.
#[derive(Debug, Default, Clone)]
pub struct CpuSnapshot {
    pub machine: MachineCpu,
    /// pid → (command name, user + system ticks).
    pub processes: HashMap<u32, (String, u64)>,
}

impl CpuSnapshot {
    /// Reads `/proc/stat` and `/proc/*/stat`. Processes that vanish while being read are
    /// skipped; off Linux the snapshot is empty.
    pub fn take() -> CpuSnapshot {
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t))
            .unwrap_or_default();
        let mut processes = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
                    .ok()
                    .and_then(|t| parse_stat(&t))
                {
                    processes.insert(pid, stat);
                }
            }
        }
        CpuSnapshot { machine, processes }
    }
}

/// CPU use between two snapshots. Percentages of processes are of one CPU (as `top`
/// shows them: 200% is two CPUs busy); the machine's are of all CPUs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuUsage {
    pub cpus: usize,
    /// Share of all CPUs that was busy, 0–100.
    pub machine_busy_pct: f64,
    /// Named processes and groups by command name, busiest first.
    pub top: Vec<ProcessCpu>,
}

/// CPU use of one process or group of processes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessCpu {
    /// Role (`postwire api`, `postwire worker`, `bench`) or command name.
    pub name: String,
    /// Percent of one CPU.
    pub cpu_pct: f64,
}

impl CpuUsage {
    /// CPU used between `before` and `after`. `label` names a process (e.g. "api") or
    /// returns `None` to group it under its command name.
    pub fn between(
        before: &CpuSnapshot,
        after: &CpuSnapshot,
        label: impl Fn(u32) -> Option<String>,
    ) -> CpuUsage {
        let total = after.machine.total.saturating_sub(before.machine.total);
        let idle = after.machine.idle.saturating_sub(before.machine.idle);
        let cpus = after.machine.cpus.max(1);
        if total == 0 {
            return CpuUsage {
                cpus,
                ..CpuUsage::default()
            };
        }
        // Ticks of one CPU over the interval.
        let per_cpu = total as f64 / cpus as f64;
        let mut groups: BTreeMap<String, u64> = BTreeMap::new();
        for (pid, (comm, ticks)) in &after.processes {
            // A process started in the interval spent all its time in it.
            let used = match before.processes.get(pid) {
                Some((_, t)) => ticks.saturating_sub(*t),
                None => *ticks,
            };
            if used > 0 {
                let name = label(*pid).unwrap_or_else(|| group_name(comm).to_owned());
                *groups.entry(name).or_default() += used;
            }
        }
        let mut top: Vec<ProcessCpu> = groups
            .into_iter()
            .map(|(name, ticks)| ProcessCpu {
                name,
                cpu_pct: round1(ticks as f64 * 100.0 / per_cpu),
            })
            .collect();
        top.sort_by(|a, b| {
            b.cpu_pct
                .total_cmp(&a.cpu_pct)
                .then_with(|| a.name.cmp(&b.name))
        });
        CpuUsage {
            cpus,
            machine_busy_pct: round1((total - idle.min(total)) as f64 * 100.0 / total as f64),
            top,
        }
    }
}

/// Kernel threads such as `kworker/1:1H-kblockd` or `jbd2/vda1-8` are grouped by the
/// part before the `/` (their names change as they pick up work).
fn group_name(comm: &str) -> &str {
    comm.split('/').next().unwrap_or(comm)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Reads the memory figures of one process; `None` once it has gone.
pub fn memory_of(pid: u32) -> Option<Memory> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .map(|t| parse_status(&t))
}

/// Samples `VmRSS` of some processes in the background and keeps each one's maximum.
pub struct RssSampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<HashMap<u32, u64>>,
}

impl RssSampler {
    /// Starts sampling `pids` every `every`.
    pub fn start(pids: Vec<u32>, every: Duration) -> RssSampler {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peaks: HashMap<u32, u64> = HashMap::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                for &pid in &pids {
                    if let Some(rss) = memory_of(pid).and_then(|m| m.rss_kib) {
                        let peak = peaks.entry(pid).or_default();
                        *peak = (*peak).max(rss);
                    }
                }
            }
            peaks
        });
        RssSampler { stop, task }
    }

    /// Stops sampling; returns each process's peak in KiB: the larger of the sampled
    /// `VmRSS` and the kernel's `VmHWM` (when the process is still there).
    pub async fn finish(self) -> HashMap<u32, u64> {
        let _ = self.stop.send(true);
        let mut peaks = self.task.await.unwrap_or_default();
        for (pid, peak) in peaks.iter_mut() {
            if let Some(hwm) = memory_of(*pid).and_then(|m| m.hwm_kib) {
                *peak = (*peak).max(hwm);
            }
        }
        peaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpostwire\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  123456 kB\nVmSize:\t  120000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n\
        RssAnon:\t   30000 kB\nThreads:\t5\n";

    #[test]
    fn status_gives_rss_and_high_water_mark() {
        assert_eq!(
            parse_status(STATUS),
            Memory {
                rss_kib: Some(40960),
                hwm_kib: Some(51200)
            }
        );
        // Kernel threads have no Vm lines.
        assert_eq!(parse_status("Name:\tkthreadd\n"), Memory::default());
    }

    #[test]
    fn stat_gives_name_and_cpu_ticks_even_with_odd_names() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    150 25 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(("tokio (rt) 1".to_owned(), 175)));
        assert_eq!(parse_stat("12 (short) S 1 2"), None);
    }

    #[test]
    fn proc_stat_gives_total_idle_and_cpu_count() {
        let text = "cpu  100 5 50 800 20 1 2 3 7 0\ncpu0 50 2 25 400 10 1 1 1 0 0\n\
                    cpu1 50 3 25 400 10 0 1 2 0 0\nintr 1 2 3\nctxt 99\n";
        assert_eq!(
            parse_proc_stat(text),
            Some(MachineCpu {
                total: 981,
                idle: 820,
                cpus: 2
            })
        );
        assert_eq!(parse_proc_stat("intr 1\n"), None);
    }

    #[test]
    fn usage_labels_groups_and_sorts() {
        let snap = |total, idle, procs: &[(u32, &str, u64)]| CpuSnapshot {
            machine: MachineCpu {
                total,
                idle,
                cpus: 2,
            },
            processes: procs
                .iter()
                .map(|(p, c, t)| (*p, (c.to_string(), *t)))
                .collect(),
        };
        let before = snap(
            1000,
            600,
            &[
                (1, "postgres", 10),
                (2, "postwire", 5),
                (6, "kworker/1:2H-kblockd", 2),
            ],
        );
        // 200 ticks over 2 CPUs = 100 ticks of one CPU; 50 idle → 75% busy.
        let after = snap(
            1200,
            650,
            &[
                (1, "postgres", 70),
                (2, "postwire", 45),
                (3, "postgres", 20),
                (4, "sleepy", 0),
                (5, "kworker/0:1-events", 10),
                (6, "kworker/1:2H+kblockd", 10),
            ],
        );
        let usage = CpuUsage::between(&before, &after, |pid| {
            (pid == 2).then(|| "postwire api".to_owned())
        });
        assert_eq!(usage.machine_busy_pct, 75.0);
        let top: Vec<(String, f64)> = usage.top.into_iter().map(|p| (p.name, p.cpu_pct)).collect();
        assert_eq!(
            top,
            vec![
                ("postgres".to_owned(), 80.0),
                ("postwire api".to_owned(), 40.0),
                ("kworker".to_owned(), 18.0)
            ]
        );
    }
}
