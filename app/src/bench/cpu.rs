//! CPU time from Linux's `/proc`, without libc: this process, one of its threads, and every
//! process of a given name (the local `postgres` or `redis-server`).
//!
//! `/proc/<pid>/stat` gives `utime` and `stime` (fields 14 and 15) in clock ticks, for the
//! whole process including its exited threads; `/proc/thread-self/stat` gives the same for
//! the calling thread. The tick length comes from `getconf CLK_TCK` (100 Hz when that cannot
//! run). Elsewhere than on Linux every reading is `None`.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Clock ticks per second.
fn ticks_per_sec() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// Clock ticks as milliseconds.
pub(crate) fn ticks_to_ms(ticks: u64) -> f64 {
    ticks as f64 * 1000.0 / ticks_per_sec() as f64
}

/// The command name and `utime + stime` (ticks) of a `stat` line.
fn parse_stat(line: &str) -> Option<(&str, u64)> {
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split at the last ')'.
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?;
    let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn ticks_of(path: &str) -> Option<u64> {
    let line = std::fs::read_to_string(path).ok()?;
    parse_stat(&line).map(|(_, t)| t)
}

/// This process's CPU time so far (all threads, exited ones included), in ticks.
pub(crate) fn process_ticks() -> Option<u64> {
    ticks_of("/proc/self/stat")
}

/// The calling thread's CPU time so far, in ticks.
pub(crate) fn thread_ticks() -> Option<u64> {
    ticks_of("/proc/thread-self/stat")
}

/// CPU ticks of every running process whose command name is in `names`, by pid.
#[derive(Debug, Clone, Default)]
pub(crate) struct Named {
    by_pid: HashMap<u32, (String, u64)>,
}

impl Named {
    /// Reads `/proc` now.
    pub(crate) fn now(names: &[&str]) -> Self {
        let mut by_pid = HashMap::new();
        if names.is_empty() {
            return Self { by_pid };
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self { by_pid };
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(line) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some((comm, ticks)) = parse_stat(&line)
                && names.contains(&comm)
            {
                by_pid.insert(pid, (comm.to_owned(), ticks));
            }
        }
        Self { by_pid }
    }

    /// Ticks spent since `earlier`, per name (processes that started since count whole;
    /// processes that exited since are lost), and how many processes were seen.
    pub(crate) fn since(&self, earlier: &Named) -> HashMap<String, (u64, u64)> {
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        for (pid, (comm, ticks)) in &self.by_pid {
            let before = earlier.by_pid.get(pid).map_or(0, |(_, t)| *t);
            let e = out.entry(comm.clone()).or_default();
            e.0 += ticks.saturating_sub(before);
            e.1 += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_the_command_and_user_plus_system_ticks() {
        let line = "4242 (redis-server) S 1 4242 4242 0 -1 4194560 250 0 0 0 123 45 0 0 20 0 \
                    5 0 1000 100000 2000 18446744073709551615";
        assert_eq!(parse_stat(line), Some(("redis-server", 168)));
        let odd = "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat(odd), Some(("a (b) c", 30)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_and_this_thread_have_readable_cpu_times() {
        assert!(process_ticks().is_some());
        assert!(thread_ticks().is_some());
        assert_eq!(ticks_to_ms(ticks_per_sec()), 1000.0);
    }

    #[test]
    fn deltas_count_new_processes_whole() {
        let before = Named {
            by_pid: HashMap::from([(1, ("postgres".to_owned(), 10))]),
        };
        let after = Named {
            by_pid: HashMap::from([
                (1, ("postgres".to_owned(), 15)),
                (2, ("postgres".to_owned(), 7)),
            ]),
        };
        assert_eq!(after.since(&before)["postgres"], (12, 2));
    }
}
