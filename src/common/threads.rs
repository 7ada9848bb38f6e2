//! Where blocking and background work runs: threads that yield to the traffic, and blocking
//! work taken off tokio's workers.

/// The niceness of the threads that work behind the traffic (inspection, the outbox writer).
pub const BEHIND_TRAFFIC_NICENESS: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`BEHIND_TRAFFIC_NICENESS`], so that on a
/// busy core the proxy's workers run first: traffic is never slowed by inspecting it
/// (docs/architecture.md §2.1). When inspection then falls behind, its bounded queue drops
/// copies and counts them.
/// Only a time-shared thread is lowered (under a realtime policy the same call would set a
/// realtime priority), and never raised: a gateway started at a higher niceness keeps it.
/// Lowering one's own priority needs no privilege; if the system refuses anyway (a seccomp
/// profile), the thread runs at normal priority and the refusal is logged.
pub fn run_behind_traffic(thread: &str) {
    use thread_priority::{ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy};
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
    let current = std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| niceness_from_stat(&stat));
    if current.is_some_and(|nice| nice >= BEHIND_TRAFFIC_NICENESS) {
        return;
    }
    // thread-priority maps 0..=99 onto niceness 19..=-20: 22 is niceness 10.
    let lowered = ThreadPriorityValue::try_from(22u8)
        .map_err(|e| e.to_owned())
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
