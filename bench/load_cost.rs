//! Where a proxy spends, per request, what the other does not (issue 21): system calls by kind
//! (`strace -c` attached to every thread for one closed-loop round — strace slows the proxy a
//! great deal, so only its counts are used), and, in a round without strace, user and system
//! CPU time (from /proc) with context switches and page faults (`perf stat` software events:
//! this VM offers no hardware counters, so no cycles or instructions).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Every thread of these processes.
pub fn threads(pids: &[u32]) -> Vec<u32> {
    let mut tids = Vec::new();
    for pid in pids {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            tids.extend(
                tasks
                    .flatten()
                    .filter_map(|t| t.file_name().to_string_lossy().parse::<u32>().ok()),
            );
        }
    }
    tids
}

/// `strace -c` on every thread of `pids`, writing its summary to `out` when stopped.
pub fn strace(pids: &[u32], out: &Path) -> Child {
    let mut command = Command::new("strace");
    command.args(["-c", "-f", "-q", "-o"]).arg(out);
    for tid in threads(pids) {
        command.args(["-p", &tid.to_string()]);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (installed by bench/harness.sh)")
}

/// `perf stat` software events over `pids`, written to `out` when stopped.
pub fn perf_stat(pids: &[u32], out: &Path) -> Child {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "context-switches,cpu-migrations,page-faults",
            "-o",
        ])
        .arg(out)
        .args(["-p", &list.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf (installed by bench/harness.sh)")
}

/// Stops a tracer the way it writes its summary (SIGINT) and waits for it.
pub fn stop(mut tracer: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &tracer.id().to_string()])
        .status();
    let _ = tracer.wait();
}

/// Waits until a tracer has attached (it cannot say so; the counts of a round it missed the
/// start of would be low, so the harness gives it this long).
pub const ATTACH: std::time::Duration = std::time::Duration::from_millis(500);

/// Calls by system call from an `strace -c` summary.
pub fn strace_counts(summary: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in summary.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "% time  seconds  usecs/call  calls  [errors]  syscall"
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue;
        }
        let Some(name) = fields.last() else { continue };
        if *name == "total" {
            continue;
        }
        if let Ok(calls) = fields[3].parse::<u64>() {
            counts.insert((*name).to_owned(), calls);
        }
    }
    counts
}

/// (context switches, CPU migrations, page faults) from `perf stat -x,` output.
pub fn perf_counts(output: &str) -> (u64, u64, u64) {
    let count = |event: &str| {
        output
            .lines()
            .find(|l| l.split(',').nth(2).is_some_and(|e| e.starts_with(event)))
            .and_then(|l| l.split(',').next()?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        count("context-switches"),
        count("cpu-migrations"),
        count("page-faults"),
    )
}

/// User and system CPU seconds of these processes, all threads (from /proc).
pub fn user_system(pids: &[u32]) -> (f64, f64) {
    let mut user = 0.0;
    let mut system = 0.0;
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        user += fields[11].parse::<f64>().unwrap_or(0.0) / 100.0;
        system += fields[12].parse::<f64>().unwrap_or(0.0) / 100.0;
    }
    (user, system)
}

/// The stages a trackgate process runs on, by its threads' names: the proxy threads
/// (`proxy:…`), the inspection worker (inspection and rules), the outbox writer, the tokio
/// runtime (delivery, the admin listener) and anything else.
fn stage_of(thread: &str) -> &'static str {
    match thread {
        t if t.starts_with("proxy") => "proxy",
        t if t.starts_with("trackgate-inspe") => "inspect + rules",
        t if t.starts_with("trackgate-outbo") => "outbox",
        t if t.starts_with("tokio-rt-worker") => "runtime (delivery)",
        _ => "other",
    }
}

/// CPU seconds so far of each thread of `pid`, with its stage (see [`stage_of`]), from each
/// thread's `schedstat` (nanoseconds on the CPU: finer than `stat`'s clock ticks).
pub fn cpu_by_thread(pid: u32) -> BTreeMap<u32, (&'static str, f64)> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        threads.insert(tid, (stage_of(comm.trim()), ns / 1e9));
    }
    threads
}

/// CPU seconds by stage between two [`cpu_by_thread`] readings. A thread that started in
/// between counts from zero; one that ended in between is lost (its time went with it).
pub fn stage_seconds(
    before: &BTreeMap<u32, (&'static str, f64)>,
    after: &BTreeMap<u32, (&'static str, f64)>,
) -> BTreeMap<&'static str, f64> {
    let mut stages = BTreeMap::new();
    for (tid, &(stage, seconds)) in after {
        let earlier = before.get(tid).map_or(0.0, |&(_, s)| s);
        *stages.entry(stage).or_insert(0.0) += (seconds - earlier).max(0.0);
    }
    stages
}

/// What one proxy spent per request.
pub struct Cost {
    /// Calls per request by system call (the strace round).
    pub syscalls: BTreeMap<String, f64>,
    pub user_us: f64,
    pub system_us: f64,
    pub context_switches: f64,
    pub migrations: f64,
    pub page_faults: f64,
    pub errors: u64,
}

/// Two closed-loop rounds through `proxy`: one under strace (counts only), one under
/// `perf stat` with CPU time from /proc. With `tls`, through the proxy's TLS listener.
pub fn measure(
    driver: &tokio::runtime::Runtime,
    proxy: &super::Proxy,
    tls: Option<&std::sync::Arc<tokio_rustls::TlsConnector>>,
    requests: &std::sync::Arc<Vec<super::Request>>,
    length: std::time::Duration,
    dir: &Path,
) -> Cost {
    let address = match tls {
        Some(_) => proxy.tls.expect("a TLS target has a TLS listener"),
        None => proxy.plain,
    };
    let round = || {
        driver.block_on(super::load(
            address,
            tls.cloned(),
            requests.clone(),
            length,
            None,
        ))
    };
    let traced = dir.join(format!("strace-{}.txt", address.port()));
    let tracer = strace(&proxy.pids, &traced);
    std::thread::sleep(ATTACH);
    let under_strace = round();
    stop(tracer);
    super::quiet(proxy);
    let summary = std::fs::read_to_string(&traced).unwrap_or_default();
    let per = |n: u64, requests: u64| n as f64 / requests.max(1) as f64;
    let syscalls = strace_counts(&summary)
        .into_iter()
        .map(|(name, calls)| (name, per(calls, under_strace.requests)))
        .collect();

    let counted = dir.join(format!("perf-{}.txt", address.port()));
    let tracer = perf_stat(&proxy.pids, &counted);
    std::thread::sleep(ATTACH);
    let (user0, system0) = user_system(&proxy.pids);
    let out = round();
    super::quiet(proxy);
    let (user1, system1) = user_system(&proxy.pids);
    stop(tracer);
    let (switches, migrations, faults) =
        perf_counts(&std::fs::read_to_string(&counted).unwrap_or_default());
    profile(proxy, tls.is_some(), &round);
    let n = out.requests.max(1) as f64;
    Cost {
        syscalls,
        user_us: (user1 - user0) * 1e6 / n,
        system_us: (system1 - system0) * 1e6 / n,
        context_switches: switches as f64 / n,
        migrations: migrations as f64 / n,
        page_faults: faults as f64 / n,
        errors: under_strace.errors + out.errors,
    }
}

/// With `TRACKGATE_BENCH_PROFILE=DIR`, one more round under `perf record` with DWARF call
/// graphs (the release build keeps no frame pointers), to `DIR/<target>.perf.data`: where the
/// user time goes (`perf report -i … --no-children`); `-tls` is added to a TLS round's name.
fn profile(proxy: &super::Proxy, tls: bool, round: &dyn Fn() -> super::Outcome) {
    let Ok(dir) = std::env::var("TRACKGATE_BENCH_PROFILE") else {
        return;
    };
    let name = proxy.name.replace(' ', "-") + if tls { "-tls" } else { "" };
    let out = Path::new(&dir).join(format!("{name}.perf.data"));
    let list: Vec<String> = proxy.pids.iter().map(u32::to_string).collect();
    let recorder = Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
        .arg(&out)
        .args(["-p", &list.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf (installed by bench/harness.sh)");
    std::thread::sleep(ATTACH);
    round();
    stop(recorder);
    super::quiet(proxy);
}

/// The side-by-side table: every figure per request, the first target (nginx) as the base.
/// `transport` names the listeners the rounds went through.
pub fn print(transport: &str, costs: &[(&str, Cost)]) {
    let Some((_, base)) = costs.first() else {
        return;
    };
    println!(
        "\n### Per request, side by side, {transport} (one closed-loop round each; syscalls from a round under strace)\n"
    );
    let header: Vec<String> = costs.iter().map(|(n, _)| n.to_string()).collect();
    println!("| per request | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(costs.len()));
    let row = |label: &str, f: &dyn Fn(&Cost) -> f64, digits: usize| {
        let first = f(base);
        let cells: Vec<String> = costs
            .iter()
            .enumerate()
            .map(|(i, (_, c))| {
                let v = f(c);
                if i > 0 && first > 0.0 {
                    format!("{v:.digits$} ({:.2}×)", v / first)
                } else {
                    format!("{v:.digits$}")
                }
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row("user CPU µs", &|c| c.user_us, 1);
    row("system CPU µs", &|c| c.system_us, 1);
    row("context switches", &|c| c.context_switches, 2);
    row("CPU migrations", &|c| c.migrations, 3);
    row("page faults", &|c| c.page_faults, 3);
    row("system calls, all", &|c| c.syscalls.values().sum(), 2);
    let mut kinds: Vec<&String> = costs
        .iter()
        .flat_map(|(_, c)| c.syscalls.iter())
        .filter(|(_, per)| **per >= 0.01)
        .map(|(name, _)| name)
        .collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        row(kind, &|c| c.syscalls.get(kind).copied().unwrap_or(0.0), 3);
    }
    let errors: u64 = costs.iter().map(|(_, c)| c.errors).sum();
    println!(
        "\n(errors in these rounds: {errors}; this VM has no hardware counters, so no cycles: CPU time is split into user and system from /proc)"
    );
}
