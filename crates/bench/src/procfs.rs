//! Memory and CPU of processes, read from Linux `/proc` through the `procfs` crate: peak
//! RSS of the processes under test, and CPU time of every process so the report can say
//! what kept the machine busy. Off Linux every figure is simply missing.

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

/// Machine-wide CPU time from `/proc/stat`, in clock ticks summed over all CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    /// All ticks, busy or not.
    pub total: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Number of CPUs (`cpuN` lines).
    pub cpus: usize,
}

/// CPU times of the machine and of every process at one moment.
#[derive(Debug, Default, Clone)]
pub struct CpuSnapshot {
    /// The whole machine.
    pub machine: MachineCpu,
    /// pid → (command name, user + system ticks).
    pub processes: HashMap<u32, (String, u64)>,
}

impl CpuSnapshot {
    /// Reads `/proc/stat` and `/proc/*/stat`. Processes that vanish while being read are
    /// skipped; off Linux the snapshot is empty.
    pub fn take() -> CpuSnapshot {
        CpuSnapshot {
            machine: sys::machine_cpu().unwrap_or_default(),
            processes: sys::process_cpu(),
        }
    }
}

/// Reads the memory figures of one process; `None` once it has gone (or off Linux).
pub fn memory_of(pid: u32) -> Option<Memory> {
    sys::memory_of(pid)
}

/// The reads themselves. `procfs` builds only on Linux (and Android), so the rest of
/// the world gets a stand-in with no figures rather than a bench that will not build.
#[cfg(target_os = "linux")]
mod sys {
    use std::collections::HashMap;

    // `::` because this module shares the crate's name.
    use ::procfs::process::{all_processes, Process};
    use ::procfs::{CurrentSI, KernelStats};

    use super::{MachineCpu, Memory};

    /// `VmRSS` and `VmHWM` of `pid`; `None` once it has gone.
    pub fn memory_of(pid: u32) -> Option<Memory> {
        let status = Process::new(i32::try_from(pid).ok()?).ok()?.status().ok()?;
        // Both figures are in kB already; kernel threads have neither.
        Some(Memory {
            rss_kib: status.vmrss,
            hwm_kib: status.vmhwm,
        })
    }

    /// The machine's CPU ticks from `/proc/stat`.
    pub fn machine_cpu() -> Option<MachineCpu> {
        KernelStats::current().ok().map(|stats| machine_of(&stats))
    }

    /// The sums the report needs. Guest time is left out of the total because the
    /// kernel already counts it in user and nice.
    pub fn machine_of(stats: &KernelStats) -> MachineCpu {
        let t = &stats.total;
        let iowait = t.iowait.unwrap_or(0);
        let optional = [t.irq, t.softirq, t.steal].map(|v| v.unwrap_or(0));
        MachineCpu {
            total: t.user + t.nice + t.system + t.idle + iowait + optional.iter().sum::<u64>(),
            idle: t.idle + iowait,
            cpus: stats.cpu_time.len().max(1),
        }
    }

    /// pid → (command name, user + system ticks) of every process still there.
    pub fn process_cpu() -> HashMap<u32, (String, u64)> {
        let Ok(all) = all_processes() else {
            return HashMap::new();
        };
        // Any error means the process exited between listing and reading: skip it.
        all.flatten()
            .filter_map(|process| process.stat().ok())
            .filter_map(|stat| {
                let pid = u32::try_from(stat.pid).ok()?;
                Some((pid, (stat.comm, stat.utime + stat.stime)))
            })
            .collect()
    }
}

/// No `/proc` to read: every figure is missing.
#[cfg(not(target_os = "linux"))]
mod sys {
    use std::collections::HashMap;

    use super::{MachineCpu, Memory};

    pub fn memory_of(_pid: u32) -> Option<Memory> {
        None
    }

    pub fn machine_cpu() -> Option<MachineCpu> {
        None
    }

    pub fn process_cpu() -> HashMap<u32, (String, u64)> {
        HashMap::new()
    }
}

/// CPU use between two snapshots. Percentages of processes are of one CPU (as `top`
/// shows them: 200% is two CPUs busy); the machine's are of all CPUs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuUsage {
    /// Number of CPUs of the machine.
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

    #[test]
    #[cfg(target_os = "linux")]
    fn machine_totals_leave_guest_time_out() {
        use ::procfs::{ExplicitSystemInfo, FromReadSI, KernelStats};

        let system = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: true,
        };
        // guest (7) is already part of user (100).
        let text = "cpu  100 5 50 800 20 1 2 3 7 0\ncpu0 50 2 25 400 10 1 1 1 0 0\n\
                    cpu1 50 3 25 400 10 0 1 2 0 0\nctxt 99\nbtime 1\nprocesses 5\n";
        let stats = KernelStats::from_read(text.as_bytes(), &system).unwrap();
        assert_eq!(
            sys::machine_of(&stats),
            MachineCpu {
                total: 981,
                idle: 820,
                cpus: 2
            }
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_this_process() {
        let me = std::process::id();
        let memory = memory_of(me).expect("our own /proc entry");
        assert!(memory.rss_kib.is_some_and(|kib| kib > 0), "{memory:?}");
        assert!(memory.hwm_kib >= memory.rss_kib, "{memory:?}");

        let snapshot = CpuSnapshot::take();
        assert!(snapshot.processes.contains_key(&me));
        assert!(snapshot.machine.total > 0);
        assert!(snapshot.machine.cpus >= 1);
    }
}
