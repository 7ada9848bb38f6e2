//! Letting the allocator give freed memory back on every thread that serves traffic.

use std::time::Duration;

/// How often an otherwise idle thread lets the allocator return freed memory.
const MEMORY_HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Larger than mimalloc v3's largest size class (512 KiB), so it gets a page of its own.
const WHOLE_PAGE: usize = 1 << 20;

/// mimalloc (the binary's allocator) returns freed pages to the system (purges them) only from
/// inside a later free of a whole page on the same thread, once its purge delay (1 s) has
/// passed. A gateway that just closed 10 000 idle connections and then sees no traffic would
/// otherwise keep their memory for good. Freeing one allocation that is larger than mimalloc's
/// largest size class releases a whole page, which runs the purge; the buffer is never written,
/// so it costs at most the page's own header in resident memory. Safe Rust cannot call
/// `mi_collect`, and `unsafe_code` is forbidden. Run on every runtime that serves connections
/// (each proxy thread has its own heap); with another allocator it is one allocation a second.
pub async fn give_back_freed_memory() {
    let mut tick = tokio::time::interval(MEMORY_HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        drop(std::hint::black_box(Vec::<u8>::with_capacity(WHOLE_PAGE)));
    }
}
