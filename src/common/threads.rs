//! Where blocking and background work runs: threads that yield to the traffic, and blocking
//! work taken off tokio's workers.

/// How much nicer than the process the threads that work behind the traffic (inspection, the
/// outbox writer) run: a gateway started at niceness 0 runs them at 10.
pub const BEHIND_TRAFFIC_STEP: i32 = 10;

/// The lowest priority there is.
const NICENESS_LOWEST: i32 = 19;

/// The niceness a thread that starts at `start` runs behind the traffic with.
pub fn behind_traffic(start: i32) -> i32 {
    start
        .saturating_add(BEHIND_TRAFFIC_STEP)
        .min(NICENESS_LOWEST)
}

/// Lowers the calling thread's scheduling priority by [`BEHIND_TRAFFIC_STEP`] (to at most
/// niceness 19), so that on a busy core the proxy's workers run first: traffic is never slowed
/// by inspecting it (docs/architecture.md §2.1). When inspection then falls behind, its bounded
/// queue drops copies and counts them. Relative to where the thread starts, so a gateway
/// started with `nice` keeps the same distance between its proxy workers and the rest.
/// Only a time-shared thread is lowered (under a realtime policy the same call would set a
/// realtime priority). Lowering one's own priority needs no privilege; if the system refuses
/// anyway (a seccomp profile), the thread runs at its start priority and the refusal is logged.
pub fn run_behind_traffic(thread: &str) {
    use thread_priority::{ThreadPriority, ThreadSchedulePolicy};
    if !matches!(
        thread_priority::thread_schedule_policy(),
        Ok(ThreadSchedulePolicy::Normal(_))
    ) {
        tracing::debug!(
            thread,
            "not a time-shared thread; its priority is left as it is"
        );
        return;
    }
    let start = std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| niceness_from_stat(&stat))
        .unwrap_or(0);
    let target = behind_traffic(start);
    if target == start {
        return;
    }
    let lowered = crossplatform_value(target)
        .ok_or_else(|| format!("no priority value gives niceness {target}"))
        .and_then(|value| {
            thread_priority::set_current_thread_priority(ThreadPriority::Crossplatform(value))
                .map_err(|e| match e {
                    thread_priority::Error::OS(code) => {
                        std::io::Error::from_raw_os_error(code).to_string()
                    }
                    other => other.to_string(),
                })
        });
    if let Err(error) = lowered {
        tracing::warn!(thread, %error, "cannot lower this thread's priority; it competes with traffic");
    }
}

/// The thread-priority value that sets `niceness` for a time-shared thread: the crate maps
/// 0..=99 onto niceness 19..=-20 (`(39 × (1 − p/99)) as i8 − 20`).
fn crossplatform_value(niceness: i32) -> Option<thread_priority::ThreadPriorityValue> {
    (0u8..=99)
        .find(|p| ((39.0 * (1.0 - f32::from(*p) / 99.0)) as i32) - 20 == niceness)
        .and_then(|p| thread_priority::ThreadPriorityValue::try_from(p).ok())
}

/// The niceness in a `/proc/…/stat` line (field 19 of proc(5); the name in field 2 may hold
/// spaces and parentheses, so fields are counted from its closing one).
pub fn niceness_from_stat(stat: &str) -> Option<i32> {
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    after_name.split(' ').nth(19 - 3)?.parse().ok()
}

/// Runs blocking work (building a directory of possibly millions of rows, a redb commit)
/// without holding up the other tasks on this tokio worker.
pub fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// A tokio runtime of its own for background work that does I/O (the catch-up sweep), its
/// worker threads [behind the traffic](run_behind_traffic): what the sweep decides and parses
/// never takes a proxy worker's core while traffic wants it. Stopped without waiting when
/// dropped (its tasks are told to stop first, through their own channels).
#[derive(Debug)]
pub struct BehindTraffic {
    handle: tokio::runtime::Handle,
    /// Taken when dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl BehindTraffic {
    /// `name` names the threads (the kernel keeps 15 bytes of it).
    pub fn start(name: &'static str, workers: usize) -> std::io::Result<BehindTraffic> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(name)
            .on_thread_start(move || run_behind_traffic(name))
            .enable_all()
            .build()?;
        Ok(BehindTraffic {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for BehindTraffic {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Not `drop`: that blocks, and this may run inside another runtime.
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_traffic_is_ten_nicer_than_the_start_and_never_past_19() {
        assert_eq!(behind_traffic(0), 10);
        assert_eq!(behind_traffic(5), 15);
        assert_eq!(behind_traffic(12), 19);
        assert_eq!(behind_traffic(19), 19);
        assert_eq!(behind_traffic(-5), 5);
        for niceness in -20..=19 {
            assert!(crossplatform_value(niceness).is_some(), "{niceness}");
        }
    }
}
