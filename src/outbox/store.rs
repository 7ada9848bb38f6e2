//! The embedded outbox on redb: one writer thread that commits every operation (enqueue,
//! settle, retry, skip) in groups — up to N operations or T ms per fsync — and an in-memory
//! schedule of what is due, rebuilt from the file at start.
//!
//! Tables: `pending` (seq → record), `pending_keys` (key → seq, for dedup), `delivered`
//! (key → time) with `delivered_at` (time, key) for pruning the window, `dead` (seq → dead
//! letter) with `dead_keys`, and `meta` (the next sequence number).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::Notify;
use uuid::Uuid;

use super::known::{Found, KnownKeys};
use super::{
    DeadLetter, Outbox, OutboxError, OutboxMetrics, OutboxSettings, Record, Settlement, Stats,
    as_stored, dedup_key,
};
use crate::common::time::now_ms;
use crate::rules::Decision;

const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
const PENDING_KEYS: TableDefinition<u128, u64> = TableDefinition::new("pending_keys");
const DELIVERED: TableDefinition<u128, u64> = TableDefinition::new("delivered");
const DELIVERED_AT: TableDefinition<(u64, u128), ()> = TableDefinition::new("delivered_at");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
const DEAD_KEYS: TableDefinition<u128, u64> = TableDefinition::new("dead_keys");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Longest error text kept with a record.
const MAX_ERROR: usize = 4096;

enum Op {
    /// A new record, already encoded by the caller (with seq 0: the table key is the seq).
    Enqueue {
        key: Uuid,
        at: u64,
        encoded: Vec<u8>,
        /// For a regarding update: the email whose create it may be folded into.
        relinks: Option<Uuid>,
    },
    Settle(Box<Record>, Settlement),
    Progress {
        seq: u64,
        progress: u8,
    },
    Retry(Uuid, SyncSender<Result<(), OutboxError>>),
    Skip(Uuid, SyncSender<Result<(), OutboxError>>),
    Flush(SyncSender<()>),
}

/// What is due when, kept in memory so delivery never scans the file.
#[derive(Default)]
struct Schedule {
    /// (next attempt, seq) of unclaimed pending records.
    due: BTreeSet<(u64, u64)>,
    /// seq → (next attempt, enqueued) of every pending record, claimed or not.
    pending: BTreeMap<u64, (u64, u64)>,
    claimed: HashMap<u64, u64>,
    /// Attempts, last error and progress of records retried but maybe not committed yet, so
    /// a claim that reads the file before the commit still sees them.
    retried: HashMap<u64, (u32, String, u8)>,
    dead: u64,
}

impl Schedule {
    /// Age of the oldest waiting record (the lowest seq was enqueued first).
    fn oldest_age_seconds(&self) -> f64 {
        self.pending
            .values()
            .next()
            .map(|(_, enqueued)| now_ms().saturating_sub(*enqueued) as f64 / 1000.0)
            .unwrap_or(0.0)
    }
}

struct Shared {
    db: Database,
    path: PathBuf,
    schedule: Mutex<Schedule>,
    wakeup: Arc<Notify>,
    metrics: OutboxMetrics,
    settings: OutboxSettings,
    /// Enqueues sent to the writer and not yet taken: `submit` refuses beyond `queue`. The
    /// channel itself is unbounded so that settlements (bounded by what delivery has claimed)
    /// never block an async worker.
    queued: AtomicUsize,
    /// Keys read from the file before, answered from memory while they surely hold.
    known: KnownKeys,
    /// Read transactions `known` began (tests check the memory answers without one).
    #[cfg(test)]
    reads: std::sync::atomic::AtomicU64,
    /// Tests make commits fail (a full disk, an I/O error) to exercise the recovery.
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicBool,
}

/// The redb outbox. Cloning shares it.
#[derive(Clone)]
pub struct RedbOutbox {
    shared: Arc<Shared>,
    ops: Sender<Op>,
}

impl std::fmt::Debug for RedbOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbOutbox")
            .field("path", &self.shared.path)
            .finish()
    }
}

trait StoreResult<T> {
    fn store(self, path: &Path) -> Result<T, OutboxError>;
}

impl<T, E: Into<redb::Error>> StoreResult<T> for Result<T, E> {
    fn store(self, path: &Path) -> Result<T, OutboxError> {
        self.map_err(|e| match e.into() {
            redb::Error::DatabaseAlreadyOpen => OutboxError::InUse {
                path: path.display().to_string(),
            },
            source => OutboxError::Store {
                path: path.display().to_string(),
                source,
            },
        })
    }
}

fn cut(mut text: String) -> String {
    if text.len() > MAX_ERROR {
        let mut end = MAX_ERROR;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl RedbOutbox {
    /// Opens (or creates) the outbox file and starts its writer thread.
    pub fn open(
        path: &Path,
        settings: OutboxSettings,
        metrics: OutboxMetrics,
    ) -> Result<RedbOutbox, OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| OutboxError::Store {
                path: path.display().to_string(),
                source: redb::Error::Io(e),
            })?;
        }
        let mut db = Database::create(path).store(path)?;
        // Free pages left by a drained backlog are reused but never returned; compacting at
        // start gives them back to the file system (no transaction is open yet).
        if let Err(error) = db.compact() {
            tracing::warn!(%error, "outbox compaction skipped");
        }
        let schedule = {
            let txn = db.begin_write().store(path)?;
            let mut schedule = Schedule::default();
            {
                // Create every table, so readers never meet a missing one.
                txn.open_table(PENDING_KEYS).store(path)?;
                txn.open_table(DELIVERED).store(path)?;
                txn.open_table(DELIVERED_AT).store(path)?;
                txn.open_table(DEAD_KEYS).store(path)?;
                txn.open_table(META).store(path)?;
                let pending = txn.open_table(PENDING).store(path)?;
                for entry in pending.iter().store(path)? {
                    let (seq, value) = entry.store(path)?;
                    let record: Record = serde_json::from_slice(value.value())?;
                    schedule
                        .pending
                        .insert(seq.value(), (record.next_attempt_ms, record.enqueued_ms));
                    schedule.due.insert((record.next_attempt_ms, seq.value()));
                }
                schedule.dead = txn.open_table(DEAD).store(path)?.len().store(path)?;
            }
            txn.commit().store(path)?;
            schedule
        };
        metrics.depth.set(schedule.pending.len() as i64);
        metrics.dead_letters.set(schedule.dead as i64);
        let (ops, receiver) = mpsc::channel();
        let shared = Arc::new(Shared {
            db,
            path: path.to_path_buf(),
            schedule: Mutex::new(schedule),
            wakeup: Arc::new(Notify::new()),
            metrics,
            known: KnownKeys::new(settings.delivered_window),
            settings,
            queued: AtomicUsize::new(0),
            #[cfg(test)]
            reads: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicBool::new(false),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("trackgate-outbox".into())
            .spawn(move || {
                crate::common::run_behind_traffic("trackgate-outbox");
                writer.run(receiver)
            })
            .map_err(OutboxError::Thread)?;
        Ok(RedbOutbox { shared, ops })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn ask(
        &self,
        op: impl FnOnce(SyncSender<Result<(), OutboxError>>) -> Op,
    ) -> Result<(), OutboxError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.ops.send(op(tx)).map_err(|_| OutboxError::WriterGone)?;
        rx.recv().map_err(|_| OutboxError::WriterGone)?
    }

    /// The first `limit` rows of a seq-keyed table, decoded.
    fn list<T>(
        &self,
        table: TableDefinition<u64, &[u8]>,
        limit: usize,
        decode: impl Fn(u64, &[u8]) -> Result<T, OutboxError>,
    ) -> Result<Vec<T>, OutboxError> {
        let path = &self.shared.path;
        self.read(|txn| {
            let table = txn.open_table(table).store(path)?;
            let mut out = Vec::new();
            for entry in table.iter().store(path)?.take(limit) {
                let (seq, v) = entry.store(path)?;
                out.push(decode(seq.value(), v.value())?);
            }
            Ok(out)
        })
    }

    fn read<T>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let txn = self.shared.db.begin_read().store(&self.shared.path)?;
        read(&txn)
    }
}

impl Shared {
    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        // A panic while holding the lock leaves a consistent schedule: every change is a
        // single insert or remove.
        self.schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer loop: gather a group, commit it, publish the result.
    fn run(self: Arc<Self>, ops: Receiver<Op>) {
        let mut last_prune = Instant::now();
        loop {
            let first = match ops.recv_timeout(Duration::from_secs(1)) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    self.refresh_gauges();
                    if last_prune.elapsed() > self.settings.prune_interval {
                        last_prune = Instant::now();
                        self.commit(Vec::new(), true);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let group = self.gather(first, &ops);
            let taken = group
                .iter()
                .filter(|op| matches!(op, Op::Enqueue { .. }))
                .count();
            self.queued.fetch_sub(taken, Ordering::Relaxed);
            // The delivered-id window is pruned under steady load too, not only when idle.
            let prune = last_prune.elapsed() > self.settings.prune_interval;
            if prune {
                last_prune = Instant::now();
            }
            self.commit(group, prune);
        }
    }

    /// The group that starts with `first`: what else arrives within `group_interval`, up to
    /// `group_records`. The writer naps through the interval once and then takes what has
    /// gathered, rather than waking for each operation as it arrives: every wake-up costs the
    /// sending thread a system call and both threads a context switch, on the cores the proxy
    /// needs. A group that fills during the nap waits for its end; a backlog that already
    /// fills a group is taken at once, without a nap, so throughput under load is unchanged.
    fn gather(&self, first: Op, ops: &Receiver<Op>) -> Vec<Op> {
        let limit = self.settings.group_records.max(1);
        let mut group = vec![first];
        group.extend(ops.try_iter().take(limit - group.len()));
        if group.len() < limit {
            std::thread::sleep(self.settings.group_interval);
            group.extend(ops.try_iter().take(limit - group.len()));
        }
        group
    }

    fn refresh_gauges(&self) {
        let s = self.schedule();
        self.metrics.depth.set(s.pending.len() as i64);
        self.metrics.in_flight.set(s.claimed.len() as i64);
        self.metrics.dead_letters.set(s.dead as i64);
        self.metrics.oldest_pending_age.set(s.oldest_age_seconds());
    }

    fn commit(&self, group: Vec<Op>, prune: bool) {
        let started = Instant::now();
        let count = group.len();
        let settled: Vec<u64> = group
            .iter()
            .filter_map(|op| match op {
                Op::Settle(record, _) => Some(record.seq),
                _ => None,
            })
            .collect();
        let mut after = Vec::new();
        let mut replies = Vec::new();
        let outcome = self.apply(group, prune, &mut after, &mut replies);
        match outcome {
            Ok(committed) => {
                if committed {
                    self.metrics.commits.inc();
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batch_records.observe(count as f64);
                }
                let mut s = self.schedule();
                for change in after {
                    change.publish(&mut s, &self.metrics);
                }
                drop(s);
                for (reply, result) in replies {
                    reply.send(result);
                }
            }
            Err(error) => {
                // Nothing of the group is on disk: enqueues are lost (counted), settled records
                // stay claimed until restart, when they are offered again.
                tracing::error!(%error, operations = count, "outbox commit failed");
                // Settled and held records were not changed on disk: back in line.
                let mut s = self.schedule();
                for change in after {
                    match change {
                        Change::Queued { revived: false, .. } => self.metrics.enqueued("failed"),
                        Change::Folded { seq } => {
                            self.metrics.enqueued("failed");
                            release(&mut s, seq);
                        }
                        _ => {}
                    }
                }
                for seq in settled {
                    if s.claimed.remove(&seq).is_some()
                        && let Some(&(next, _)) = s.pending.get(&seq)
                    {
                        s.due.insert((next, seq));
                    }
                }
                drop(s);
                for (reply, _) in replies {
                    reply.send(Err(OutboxError::WriterGone));
                }
            }
        }
        self.refresh_gauges();
        self.wakeup.notify_one();
    }

    /// Applies one group in one write transaction: each operation in order, then the next
    /// sequence number and, when due, the pruning of the delivered window. Commits; or aborts a
    /// group that changed nothing. Returns whether it committed.
    fn apply(
        &self,
        group: Vec<Op>,
        prune: bool,
        after: &mut Vec<Change>,
        replies: &mut Vec<(Reply, Result<(), OutboxError>)>,
    ) -> Result<bool, OutboxError> {
        let path = &self.path;
        let now = now_ms();
        let _group = self.known.group(now);
        // Only a group of new decisions (and flushes) can turn out to change nothing.
        let only_enqueues = !prune
            && group
                .iter()
                .all(|op| matches!(op, Op::Enqueue { .. } | Op::Flush(_)));
        let txn = self.db.begin_write().store(path)?;
        {
            let pending_count = self.schedule().pending.len() as u64;
            let mut tables = Tables::open(&txn, path, now, pending_count)?;
            for op in group {
                match op {
                    Op::Enqueue {
                        key,
                        at,
                        encoded,
                        relinks,
                    } => {
                        let folded = match relinks {
                            Some(email) => self.fold(&mut tables, key, email, &encoded)?,
                            None => None,
                        };
                        let change = match folded {
                            Some(change) => change,
                            None => tables.enqueue(key, at, &encoded, self.settings.max_pending)?,
                        };
                        after.push(change);
                    }
                    Op::Settle(record, settlement) => {
                        after.push(tables.settle(record, settlement)?);
                    }
                    Op::Progress { seq, progress } => tables.progress(seq, progress)?,
                    Op::Retry(key, reply) => {
                        let result = found(tables.retry(key)?, after, "dead-letter", key);
                        replies.push((Reply(reply), result));
                    }
                    Op::Skip(key, reply) => {
                        let result = found(tables.skip(key)?, after, "pending or dead-letter", key);
                        replies.push((Reply(reply), result));
                    }
                    Op::Flush(reply) => after.push(Change::Flushed(reply)),
                }
            }
            tables.finish()?;
            if prune {
                let window = self.settings.delivered_window.as_millis() as u64;
                self.known.pruning(now);
                tables.prune(now.saturating_sub(window))?;
            }
        }
        // A group of duplicates (the same mail seen again, the common case) changed nothing:
        // no commit, so no fsync. Flushes stay correct, as everything before the group is
        // already committed.
        if only_enqueues
            && !after
                .iter()
                .any(|c| matches!(c, Change::Queued { .. } | Change::Folded { .. }))
        {
            txn.abort().store(path)?;
            return Ok(false);
        }
        #[cfg(test)]
        if self.fail_commits.load(Ordering::Relaxed) {
            return Err(OutboxError::WriterGone);
        }
        txn.commit().store(path)?;
        Ok(true)
    }

    /// Folds a regarding update into its email's create while that create waits untouched
    /// (unclaimed, no step confirmed): the email is then created under the new record and
    /// closed once, instead of created, closed, reopened, re-linked and closed again. The
    /// create is held out of line until the group is committed, so no delivery reads it
    /// half-changed. `None`: stored as a record of its own (delivery then re-links the
    /// delivered email).
    fn fold(
        &self,
        tables: &mut Tables<'_>,
        key: Uuid,
        email: Uuid,
        encoded: &[u8],
    ) -> Result<Option<Change>, OutboxError> {
        let Some(seq) = tables.pending_seq(email)? else {
            return Ok(None);
        };
        if tables.known(key)? || !self.hold(seq) {
            return Ok(None);
        }
        let relink = decode(0, encoded)?;
        match tables.fold(seq, relink.decision) {
            Ok(true) => Ok(Some(Change::Folded { seq })),
            outcome => {
                self.release(seq);
                outcome.map(|_| None)
            }
        }
    }

    /// Takes a waiting record out of line, as a claim does; false when delivery has it or
    /// already confirmed a step of it. A record the group itself stored is not in line yet
    /// (nobody can claim it before the commit): nothing to hold.
    fn hold(&self, seq: u64) -> bool {
        let mut s = self.schedule();
        let started = s.retried.get(&seq).is_some_and(|r| r.2 != 0);
        let Some(&(next, _)) = s.pending.get(&seq) else {
            return true;
        };
        if started || s.claimed.contains_key(&seq) {
            return false;
        }
        s.due.remove(&(next, seq));
        s.claimed.insert(seq, next);
        true
    }

    /// Puts a held record back in line.
    fn release(&self, seq: u64) {
        release(&mut self.schedule(), seq);
    }

    /// Whether a record with this key is pending, delivered (within the window) or a dead
    /// letter: from memory when an earlier read said so and it surely still holds, else read
    /// from the last commit. Records still on their way to the writer are not seen here; the
    /// writer checks again.
    fn known(&self, key: Uuid) -> Result<bool, OutboxError> {
        let k = key.as_u128();
        let now = now_ms();
        if self.known.contains(k, now) {
            return Ok(true);
        }
        let read_ms = self.known.read_time(now);
        match self.find(k)? {
            Some(found) => {
                self.known.remember(k, found, read_ms);
                Ok(true)
            }
            None => {
                self.known.forget(k);
                Ok(false)
            }
        }
    }

    /// Where the last commit holds a key, if anywhere.
    fn find(&self, k: u128) -> Result<Option<Found>, OutboxError> {
        #[cfg(test)]
        self.reads.fetch_add(1, Ordering::Relaxed);
        let path = &self.path;
        let txn = self.db.begin_read().store(path)?;
        if txn
            .open_table(PENDING_KEYS)
            .store(path)?
            .get(k)
            .store(path)?
            .is_some()
        {
            return Ok(Some(Found::Pending));
        }
        if let Some(at) = txn.open_table(DELIVERED).store(path)?.get(k).store(path)? {
            return Ok(Some(Found::Delivered { at_ms: at.value() }));
        }
        let dead = txn.open_table(DEAD_KEYS).store(path)?.get(k).store(path)?;
        Ok(dead.map(|_| Found::Dead))
    }
}

/// Every table, opened in one write transaction, and what a group moves as it goes: the next
/// sequence number and the pending count (for `max_pending`). Each method applies one kind of
/// operation and returns the change to publish once the group is committed.
struct Tables<'t> {
    path: &'t Path,
    /// The group's one timestamp: delivered, skipped, failed and retried records share it.
    now: u64,
    next_seq: u64,
    pending_count: u64,
    pending: redb::Table<'t, u64, &'static [u8]>,
    pending_keys: redb::Table<'t, u128, u64>,
    delivered: redb::Table<'t, u128, u64>,
    delivered_at: redb::Table<'t, (u64, u128), ()>,
    dead: redb::Table<'t, u64, &'static [u8]>,
    dead_keys: redb::Table<'t, u128, u64>,
    meta: redb::Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(
        txn: &'t redb::WriteTransaction,
        path: &'t Path,
        now: u64,
        pending_count: u64,
    ) -> Result<Tables<'t>, OutboxError> {
        let pending = txn.open_table(PENDING).store(path)?;
        let pending_keys = txn.open_table(PENDING_KEYS).store(path)?;
        let delivered = txn.open_table(DELIVERED).store(path)?;
        let delivered_at = txn.open_table(DELIVERED_AT).store(path)?;
        let dead = txn.open_table(DEAD).store(path)?;
        let dead_keys = txn.open_table(DEAD_KEYS).store(path)?;
        let meta = txn.open_table(META).store(path)?;
        let next_seq = meta
            .get("next_seq")
            .store(path)?
            .map(|v| v.value())
            .unwrap_or(1);
        Ok(Tables {
            path,
            now,
            next_seq,
            pending_count,
            pending,
            pending_keys,
            delivered,
            delivered_at,
            dead,
            dead_keys,
            meta,
        })
    }

    /// Whether this key is pending, delivered (within the window) or dead.
    fn known(&self, key: Uuid) -> Result<bool, OutboxError> {
        let (path, k) = (self.path, key.as_u128());
        Ok(self.pending_keys.get(k).store(path)?.is_some()
            || self.delivered.get(k).store(path)?.is_some()
            || self.dead_keys.get(k).store(path)?.is_some())
    }

    /// The seq of the pending record with this key.
    fn pending_seq(&self, key: Uuid) -> Result<Option<u64>, OutboxError> {
        let found = self.pending_keys.get(key.as_u128()).store(self.path)?;
        Ok(found.map(|v| v.value()))
    }

    /// Gives a pending create the regarding of a later update of the same email; false when
    /// the record is gone or a step of it was confirmed.
    fn fold(&mut self, seq: u64, relink: Decision) -> Result<bool, OutboxError> {
        let path = self.path;
        let Some(stored) = self.pending.get(seq).store(path)? else {
            return Ok(false);
        };
        let mut record = decode(seq, stored.value())?;
        drop(stored);
        if record.progress != 0 || record.decision.update_regarding {
            return Ok(false);
        }
        record.decision.regarding = relink.regarding;
        record.decision.regarding_source = relink.regarding_source;
        record.decision.correlation = None;
        self.pending
            .insert(seq, serde_json::to_vec(&record)?.as_slice())
            .store(path)?;
        Ok(true)
    }

    /// Stores a new record under the next seq, unless its key is already pending, delivered or
    /// dead (a duplicate), or the outbox is full (refused).
    fn enqueue(
        &mut self,
        key: Uuid,
        at: u64,
        encoded: &[u8],
        max_pending: u64,
    ) -> Result<Change, OutboxError> {
        let path = self.path;
        let k = key.as_u128();
        if self.known(key)? {
            return Ok(Change::Duplicate);
        }
        if self.pending_count >= max_pending {
            return Ok(Change::Refused);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending_count += 1;
        self.pending.insert(seq, encoded).store(path)?;
        self.pending_keys.insert(k, seq).store(path)?;
        Ok(Change::Queued {
            seq,
            next: at,
            enqueued: at,
            revived: false,
        })
    }

    /// Keeps the steps a pending record's delivery has confirmed (nothing when it is gone).
    fn progress(&mut self, seq: u64, progress: u8) -> Result<(), OutboxError> {
        let path = self.path;
        let Some(stored) = self.pending.get(seq).store(path)? else {
            return Ok(());
        };
        let mut record = decode(seq, stored.value())?;
        drop(stored);
        if record.progress | progress == record.progress {
            return Ok(());
        }
        record.progress |= progress;
        self.pending
            .insert(seq, serde_json::to_vec(&record)?.as_slice())
            .store(path)?;
        Ok(())
    }

    /// Records how a delivery attempt ended: delivered (into the dedup window), retried later
    /// (attempts and error kept), or dead. A record skipped while in flight is only released.
    fn settle(
        &mut self,
        record: Box<Record>,
        settlement: Settlement,
    ) -> Result<Change, OutboxError> {
        let (path, now) = (self.path, self.now);
        let seq = record.seq;
        if self.pending.get(seq).store(path)?.is_none() {
            // Skipped while in flight.
            return Ok(Change::Released { seq });
        }
        match settlement {
            Settlement::Delivered => {
                self.pending.remove(seq).store(path)?;
                self.pending_keys.remove(record.key.as_u128()).store(path)?;
                self.delivered
                    .insert(record.key.as_u128(), now)
                    .store(path)?;
                self.delivered_at
                    .insert((now, record.key.as_u128()), ())
                    .store(path)?;
                self.pending_count = self.pending_count.saturating_sub(1);
                Ok(Change::Removed {
                    seq,
                    result: "delivered",
                })
            }
            Settlement::Retry {
                at_ms,
                counted,
                error,
            } => {
                // The stored decision, not delivery's copy of it: a regarding update may have
                // been folded into the record since it was claimed.
                let Some(stored) = self.pending.get(seq).store(path)? else {
                    return Ok(Change::Released { seq });
                };
                let mut r = decode(seq, stored.value())?;
                drop(stored);
                r.attempts = record.attempts + u32::from(counted);
                r.progress |= record.progress;
                r.next_attempt_ms = at_ms;
                r.last_error = Some(cut(error));
                self.pending
                    .insert(seq, serde_json::to_vec(&r)?.as_slice())
                    .store(path)?;
                Ok(Change::Rescheduled)
            }
            Settlement::Dead {
                status,
                response,
                error,
            } => {
                self.pending.remove(seq).store(path)?;
                self.pending_keys.remove(record.key.as_u128()).store(path)?;
                let key = record.key.as_u128();
                let letter = DeadLetter {
                    record: *record,
                    failed_ms: now,
                    status,
                    response: response.map(cut),
                    error: cut(error),
                };
                self.dead
                    .insert(seq, serde_json::to_vec(&letter)?.as_slice())
                    .store(path)?;
                self.dead_keys.insert(key, seq).store(path)?;
                self.pending_count = self.pending_count.saturating_sub(1);
                Ok(Change::Dead { seq })
            }
        }
    }

    /// Puts a dead letter back in line under its old seq, due now with no attempts counted.
    /// `None` when there is no such dead letter (a key without its letter is dropped too,
    /// committed as every group with a retry is).
    fn retry(&mut self, key: Uuid) -> Result<Option<Change>, OutboxError> {
        let path = self.path;
        let k = key.as_u128();
        let seq = self.dead_keys.remove(k).store(path)?.map(|v| v.value());
        let letter = match seq {
            Some(seq) => self.dead.remove(seq).store(path)?.map(|l| (seq, l)),
            None => None,
        };
        let Some((seq, letter)) = letter else {
            return Ok(None);
        };
        let letter: DeadLetter = serde_json::from_slice(letter.value())?;
        let mut record = letter.record;
        record.attempts = 0;
        record.next_attempt_ms = self.now;
        self.pending
            .insert(seq, serde_json::to_vec(&record)?.as_slice())
            .store(path)?;
        self.pending_keys.insert(k, seq).store(path)?;
        self.pending_count += 1;
        Ok(Some(Change::Queued {
            seq,
            next: self.now,
            enqueued: record.enqueued_ms,
            revived: true,
        }))
    }

    /// Drops a pending record or a dead letter as if delivered: its key joins the dedup window,
    /// so the same mail is not queued again. `None` when the key is neither.
    fn skip(&mut self, key: Uuid) -> Result<Option<Change>, OutboxError> {
        let (path, now) = (self.path, self.now);
        let k = key.as_u128();
        let change = if let Some(seq) = self.pending_keys.remove(k).store(path)?.map(|v| v.value())
        {
            self.pending.remove(seq).store(path)?;
            self.pending_count = self.pending_count.saturating_sub(1);
            Change::Removed {
                seq,
                result: "skipped",
            }
        } else if let Some(seq) = self.dead_keys.remove(k).store(path)?.map(|v| v.value()) {
            self.dead.remove(seq).store(path)?;
            Change::Undead
        } else {
            return Ok(None);
        };
        self.delivered.insert(k, now).store(path)?;
        self.delivered_at.insert((now, k), ()).store(path)?;
        Ok(Some(change))
    }

    /// Stores the next sequence number the group leaves.
    fn finish(&mut self) -> Result<(), OutboxError> {
        self.meta
            .insert("next_seq", self.next_seq)
            .store(self.path)?;
        Ok(())
    }

    /// Forgets delivered keys older than `horizon`, at most 100 000 per group so one commit
    /// stays short.
    fn prune(&mut self, horizon: u64) -> Result<(), OutboxError> {
        let path = self.path;
        let expired: Vec<(u64, u128)> = self
            .delivered_at
            .range(..(horizon, 0u128))
            .store(path)?
            .take(100_000)
            .filter_map(|e| e.ok().map(|(k, _)| k.value()))
            .collect();
        for (at, key) in expired {
            self.delivered_at.remove((at, key)).store(path)?;
            self.delivered.remove(key).store(path)?;
        }
        Ok(())
    }
}

/// Puts a record the writer held back in line, due when it was.
fn release(s: &mut Schedule, seq: u64) {
    if let Some(next) = s.claimed.remove(&seq) {
        s.due.insert((next, seq));
    }
}

/// A new [`Record`] as stored, its decision borrowed (same fields, same encoding).
#[derive(serde::Serialize)]
struct NewRecord<'a> {
    seq: u64,
    key: Uuid,
    enqueued_ms: u64,
    attempts: u32,
    next_attempt_ms: u64,
    decision: &'a Decision,
}

/// A pending record; new ones are stored with seq 0 (the table key is the seq).
fn decode(seq: u64, bytes: &[u8]) -> Result<Record, OutboxError> {
    let mut record: Record = serde_json::from_slice(bytes)?;
    record.seq = seq;
    Ok(record)
}

/// A caller waiting for its operation's commit.
struct Reply(SyncSender<Result<(), OutboxError>>);

impl Reply {
    fn send(self, result: Result<(), OutboxError>) {
        let _ = self.0.send(result);
    }
}

/// An operator's action on one record: its change when the record was there, else which
/// list it was looked for in.
fn found(
    change: Option<Change>,
    after: &mut Vec<Change>,
    what: &'static str,
    key: Uuid,
) -> Result<(), OutboxError> {
    let change = change.ok_or(OutboxError::NotFound { what, id: key })?;
    after.push(change);
    Ok(())
}

/// What a committed operation changes in the in-memory schedule.
enum Change {
    /// A record now pending: new, or a dead letter put back (`revived`).
    Queued {
        seq: u64,
        next: u64,
        enqueued: u64,
        revived: bool,
    },
    Duplicate,
    Refused,
    Rescheduled,
    Removed {
        seq: u64,
        result: &'static str,
    },
    Released {
        seq: u64,
    },
    /// A regarding update given to its waiting create, which goes back in line.
    Folded {
        seq: u64,
    },
    Dead {
        seq: u64,
    },
    Undead,
    Flushed(SyncSender<()>),
}

impl Change {
    fn publish(self, s: &mut Schedule, metrics: &OutboxMetrics) {
        match self {
            Change::Queued {
                seq,
                next,
                enqueued,
                revived,
            } => {
                s.pending.insert(seq, (next, enqueued));
                s.due.insert((next, seq));
                if revived {
                    s.dead = s.dead.saturating_sub(1);
                } else {
                    metrics.enqueued("stored");
                }
            }
            Change::Duplicate => metrics.enqueued("duplicate"),
            Change::Refused => metrics.enqueued("refused"),
            // The schedule changed when the retry was settled (see `settle`).
            Change::Rescheduled => metrics.settled("retry"),
            Change::Removed { seq, result } => {
                if let Some((next, _)) = s.pending.remove(&seq) {
                    s.due.remove(&(next, seq));
                }
                s.claimed.remove(&seq);
                s.retried.remove(&seq);
                metrics.settled(result);
            }
            Change::Released { seq } => {
                s.claimed.remove(&seq);
            }
            Change::Folded { seq } => {
                release(s, seq);
                metrics.enqueued("folded");
            }
            Change::Dead { seq } => {
                s.pending.remove(&seq);
                s.claimed.remove(&seq);
                s.retried.remove(&seq);
                s.dead += 1;
                metrics.settled("dead");
            }
            Change::Undead => s.dead = s.dead.saturating_sub(1),
            Change::Flushed(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

impl Outbox for RedbOutbox {
    fn submit(&self, decision: &Decision) -> bool {
        let refuse = || {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.metrics.enqueued("refused");
            false
        };
        let at = now_ms();
        let key = dedup_key(decision, at);
        // Most decisions offered are for mail already stored or delivered: answered from a read
        // transaction, they cost no encoding, no trip to the writer and no commit. (A read that
        // fails falls through to the writer, which checks again.)
        match self.shared.known(key) {
            Ok(true) => {
                self.shared.metrics.enqueued("duplicate");
                return true;
            }
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, "outbox lookup failed; the writer decides"),
        }
        if self.shared.queued.fetch_add(1, Ordering::Relaxed) >= self.shared.settings.queue {
            return refuse();
        }
        // Encoded here, on the caller's thread and from the borrowed decision, so the single
        // writer only writes bytes.
        let decision = as_stored(decision);
        let record = NewRecord {
            seq: 0,
            key,
            enqueued_ms: at,
            attempts: 0,
            next_attempt_ms: at,
            decision: &decision,
        };
        let encoded = match serde_json::to_vec(&record) {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, "cannot encode an outbox record");
                return refuse();
            }
        };
        let relinks = decision.crm_id.filter(|_| decision.update_regarding);
        let op = Op::Enqueue {
            key,
            at,
            encoded,
            relinks,
        };
        if self.ops.send(op).is_err() {
            return refuse();
        }
        true
    }

    fn flush(&self) -> Result<(), OutboxError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.ops
            .send(Op::Flush(tx))
            .map_err(|_| OutboxError::WriterGone)?;
        rx.recv().map_err(|_| OutboxError::WriterGone)
    }

    fn claim_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Record>, OutboxError> {
        let claimed: Vec<u64> = {
            let mut s = self.shared.schedule();
            let mut seqs = Vec::new();
            while seqs.len() < limit {
                match s.due.first().copied() {
                    Some((next, seq)) if next <= now_ms => {
                        s.due.remove(&(next, seq));
                        s.claimed.insert(seq, next);
                        seqs.push(seq);
                    }
                    _ => break,
                }
            }
            seqs
        };
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let path = &self.shared.path;
        self.read(|txn| {
            let pending = txn.open_table(PENDING).store(path)?;
            let mut records = Vec::with_capacity(claimed.len());
            let mut gone = Vec::new();
            for seq in claimed {
                match pending.get(seq).store(path)? {
                    Some(value) => records.push(decode(seq, value.value())?),
                    None => gone.push(seq),
                }
            }
            let mut s = self.shared.schedule();
            for seq in gone {
                s.claimed.remove(&seq);
            }
            for record in &mut records {
                if let Some((attempts, error, progress)) = s.retried.get(&record.seq) {
                    record.progress |= progress;
                    if *attempts > record.attempts {
                        record.attempts = *attempts;
                        record.last_error = Some(error.clone());
                    }
                }
            }
            Ok(records)
        })
    }

    fn settle(&self, record: &Record, settlement: Settlement) {
        if let Settlement::Retry {
            at_ms,
            counted,
            error,
        } = &settlement
        {
            // Back in line at once, in order: waiting for the commit would let later records
            // overtake it. If the commit never happens the file still holds it as pending.
            let mut s = self.shared.schedule();
            if s.claimed.remove(&record.seq).is_some()
                && let Some(entry) = s.pending.get_mut(&record.seq)
            {
                entry.0 = *at_ms;
                s.due.insert((*at_ms, record.seq));
                let attempts = record.attempts + u32::from(*counted);
                s.retried
                    .insert(record.seq, (attempts, error.clone(), record.progress));
            }
        }
        if self
            .ops
            .send(Op::Settle(Box::new(record.clone()), settlement))
            .is_err()
        {
            // Stopping: the record stays pending in the file and is offered again at start.
            tracing::warn!("outbox writer stopped before a settlement was recorded");
        }
    }

    fn progress(&self, record: &Record, progress: u8) {
        let op = Op::Progress {
            seq: record.seq,
            progress,
        };
        if self.ops.send(op).is_err() {
            // Stopping: the next start repeats the confirmed steps, which are idempotent.
            tracing::debug!("outbox writer stopped before a delivery's progress was kept");
        }
    }

    fn next_due_ms(&self) -> Option<u64> {
        self.shared.schedule().due.first().map(|(next, _)| *next)
    }

    fn wakeup(&self) -> Arc<Notify> {
        self.shared.wakeup.clone()
    }

    fn stats(&self) -> Result<Stats, OutboxError> {
        let path = &self.shared.path;
        let (pending, in_flight, dead, oldest) = {
            let s = self.shared.schedule();
            let oldest = s.oldest_age_seconds();
            (
                s.pending.len() as u64,
                s.claimed.len() as u64,
                s.dead,
                oldest,
            )
        };
        let (delivered_keys, next_seq) = self.read(|txn| {
            let delivered = txn.open_table(DELIVERED).store(path)?.len().store(path)?;
            let next = txn
                .open_table(META)
                .store(path)?
                .get("next_seq")
                .store(path)?
                .map(|v| v.value())
                .unwrap_or(1);
            Ok((delivered, next))
        })?;
        Ok(Stats {
            pending,
            in_flight,
            dead,
            delivered_keys,
            oldest_pending_age_seconds: oldest,
            next_seq,
            file_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        })
    }

    fn pending(&self, limit: usize) -> Result<Vec<Record>, OutboxError> {
        self.list(PENDING, limit, decode)
    }

    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, OutboxError> {
        self.list(DEAD, limit, |_, bytes| Ok(serde_json::from_slice(bytes)?))
    }

    fn retry(&self, key: Uuid) -> Result<(), OutboxError> {
        self.ask(|reply| Op::Retry(key, reply))
    }

    fn skip(&self, key: Uuid) -> Result<(), OutboxError> {
        self.ask(|reply| Op::Skip(key, reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(n: u128) -> Decision {
        serde_json::from_value(serde_json::json!({
            "verdict": "track", "reason": "filter_all", "observation": "message_seen",
            "operation": "GetItem", "direction": "incoming",
            "crm_id": Uuid::from_u128(n), "explanation": ["dropped before storing"],
        }))
        .unwrap()
    }

    fn open(path: &Path) -> RedbOutbox {
        open_with(path, OutboxSettings::default())
    }

    fn open_with(path: &Path, settings: OutboxSettings) -> RedbOutbox {
        // The previous instance's writer thread closes the file as it exits.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut registry = prometheus_client::registry::Registry::default();
            match RedbOutbox::open(
                path,
                settings.clone(),
                OutboxMetrics::register(&mut registry),
            ) {
                Ok(o) => return o,
                Err(OutboxError::InUse { .. }) if Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn the_same_decision_is_stored_once_and_a_delivered_one_is_not_queued_again() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        assert!(outbox.submit(&decision(1)));
        assert!(outbox.submit(&decision(1)));
        assert!(outbox.submit(&decision(2)));
        outbox.flush().unwrap();
        assert_eq!(outbox.stats().unwrap().pending, 2);
        let claimed = outbox.claim_due(now_ms(), 10).unwrap();
        assert_eq!(claimed.len(), 2);
        assert_eq!((claimed[0].seq, claimed[1].seq), (1, 2), "oldest first");
        assert!(claimed[0].decision.explanation.is_empty());
        assert!(
            outbox.claim_due(now_ms(), 10).unwrap().is_empty(),
            "claimed once"
        );
        outbox.settle(&claimed[0], Settlement::Delivered);
        outbox.flush().unwrap();
        assert!(outbox.submit(&decision(1)));
        outbox.flush().unwrap();
        let stats = outbox.stats().unwrap();
        assert_eq!((stats.pending, stats.delivered_keys), (1, 1));
    }

    /// How many offers (or settlements) the metrics counted with `result`.
    fn counted(
        family: &prometheus_client::metrics::family::Family<
            crate::outbox::ResultLabels,
            prometheus_client::metrics::counter::Counter,
        >,
        result: &'static str,
    ) -> u64 {
        family
            .get_or_create(&crate::outbox::ResultLabels { result })
            .get()
    }

    #[test]
    fn offers_and_settlements_are_counted_by_result() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        assert!(outbox.submit(&decision(1)));
        outbox.flush().unwrap();
        assert!(outbox.submit(&decision(1)));
        outbox.flush().unwrap();
        let m = &outbox.shared.metrics;
        assert_eq!(counted(&m.enqueued, "stored"), 1);
        assert_eq!(counted(&m.enqueued, "duplicate"), 1);
        let claimed = outbox.claim_due(now_ms(), 10).unwrap();
        outbox.settle(&claimed[0], Settlement::Delivered);
        outbox.flush().unwrap();
        assert_eq!(counted(&m.settled, "delivered"), 1);
        assert_eq!(counted(&m.settled, "dead"), 0);
        assert!(
            format!("{outbox:?}").contains("o.redb"),
            "Debug names the file"
        );
    }

    /// A folder rule's re-link of email `n` to the account `account`.
    fn relink(n: u128, account: u128) -> Decision {
        let mut d = decision(n);
        d.update_regarding = true;
        d.regarding = Some(crate::directory::model::Lookup::new(
            "account",
            Uuid::from_u128(account),
        ));
        d
    }

    fn regarding_of(record: &Record) -> Option<Uuid> {
        record.decision.regarding.as_ref().map(|r| r.id)
    }

    #[test]
    fn a_relink_is_folded_into_its_waiting_create_but_kept_apart_from_a_claimed_one() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        let m = &outbox.shared.metrics;
        outbox.submit(&decision(1));
        outbox.flush().unwrap();
        outbox.submit(&relink(1, 0xa));
        outbox.flush().unwrap();
        let pending = outbox.pending(10).unwrap();
        assert_eq!(pending.len(), 1, "one record: the create, re-linked");
        assert_eq!(regarding_of(&pending[0]), Some(Uuid::from_u128(0xa)));
        assert!(!pending[0].decision.update_regarding);
        assert_eq!(counted(&m.enqueued, "folded"), 1);
        assert_eq!(counted(&m.enqueued, "stored"), 1);

        // Delivery has the create: a later re-link is a record of its own.
        let claimed = outbox.claim_due(now_ms(), 10).unwrap();
        assert_eq!(regarding_of(&claimed[0]), Some(Uuid::from_u128(0xa)));
        outbox.submit(&relink(1, 0xb));
        outbox.flush().unwrap();
        let pending = outbox.pending(10).unwrap();
        assert_eq!(pending.len(), 2);
        assert!(pending[1].decision.update_regarding);
        assert_eq!(regarding_of(&pending[0]), Some(Uuid::from_u128(0xa)));

        // A re-link of an email with nothing waiting (delivered, or never seen) is its own too;
        // and a create with a confirmed step is not changed.
        outbox.settle(&claimed[0], Settlement::Delivered);
        outbox.submit(&decision(2));
        outbox.flush().unwrap();
        let second = outbox.claim_due(now_ms(), 10).unwrap();
        let create = second.iter().find(|r| r.key == Uuid::from_u128(2)).unwrap();
        let mut create = create.clone();
        create.progress = 1;
        outbox.settle(
            &create,
            Settlement::Retry {
                at_ms: now_ms(),
                counted: false,
                error: "503".into(),
            },
        );
        outbox.submit(&relink(2, 0xc));
        outbox.flush().unwrap();
        let create = outbox
            .pending(10)
            .unwrap()
            .into_iter()
            .find(|r| r.key == create.key)
            .unwrap();
        assert_eq!(
            regarding_of(&create),
            None,
            "the create was begun: re-linked after"
        );
        assert_eq!(counted(&m.enqueued, "folded"), 1);
    }

    /// The create and its re-link offered within one group interval.
    #[test]
    fn a_relink_in_the_same_group_as_its_create_is_folded_too() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        let enqueue = |d: &Decision| {
            let key = dedup_key(d, now_ms());
            Op::Enqueue {
                key,
                at: now_ms(),
                encoded: serde_json::to_vec(&NewRecord {
                    seq: 0,
                    key,
                    enqueued_ms: now_ms(),
                    attempts: 0,
                    next_attempt_ms: now_ms(),
                    decision: d,
                })
                .unwrap(),
                relinks: d.crm_id.filter(|_| d.update_regarding),
            }
        };
        outbox
            .shared
            .commit(vec![enqueue(&decision(1)), enqueue(&relink(1, 0xa))], false);
        let pending = outbox.pending(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(regarding_of(&pending[0]), Some(Uuid::from_u128(0xa)));
        let claimed = outbox.claim_due(now_ms(), 10).unwrap();
        assert_eq!(claimed.len(), 1, "in line once the group is committed");
    }

    #[test]
    fn a_retry_settled_after_a_fold_keeps_the_folded_regarding() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        outbox.submit(&decision(1));
        outbox.flush().unwrap();
        let claimed = outbox.claim_due(now_ms(), 10).unwrap();
        // Delivery failed the create and put it back in line at once; the re-link reaches the
        // writer before the retry's settlement does, folds, and the settlement must not undo it.
        {
            let mut s = outbox.shared.schedule();
            release(&mut s, claimed[0].seq);
        }
        let relink = relink(1, 0xa);
        let (mut after, mut replies) = (Vec::new(), Vec::new());
        let group = vec![
            Op::Enqueue {
                key: dedup_key(&relink, now_ms()),
                at: now_ms(),
                encoded: serde_json::to_vec(&NewRecord {
                    seq: 0,
                    key: dedup_key(&relink, now_ms()),
                    enqueued_ms: now_ms(),
                    attempts: 0,
                    next_attempt_ms: now_ms(),
                    decision: &relink,
                })
                .unwrap(),
                relinks: relink.crm_id,
            },
            Op::Settle(
                Box::new(claimed[0].clone()),
                Settlement::Retry {
                    at_ms: now_ms(),
                    counted: true,
                    error: "503".into(),
                },
            ),
        ];
        assert!(
            outbox
                .shared
                .apply(group, false, &mut after, &mut replies)
                .unwrap()
        );
        let pending = outbox.pending(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(regarding_of(&pending[0]), Some(Uuid::from_u128(0xa)));
        assert_eq!(pending[0].attempts, 1, "the retry is counted all the same");
    }

    /// Waits (10 s at most) until `check` holds.
    fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn deliver_one(outbox: &RedbOutbox, n: u128) {
        assert!(outbox.submit(&decision(n)));
        outbox.flush().unwrap();
        let claimed = outbox.claim_due(now_ms(), 10).unwrap();
        outbox.settle(&claimed[0], Settlement::Delivered);
        outbox.flush().unwrap();
    }

    /// A window of `window` pruned at every commit.
    fn pruning_at_every_commit(window: Duration) -> OutboxSettings {
        OutboxSettings {
            delivered_window: window,
            prune_interval: Duration::ZERO,
            ..OutboxSettings::default()
        }
    }

    /// Offers new decisions, one commit each, until no delivered key is left.
    fn load_until_pruned(outbox: &RedbOutbox) {
        let mut n = 100;
        eventually("pruned under load", || {
            n += 1;
            assert!(outbox.submit(&decision(n)));
            outbox.flush().unwrap();
            outbox.stats().unwrap().delivered_keys == 0
        });
    }

    #[test]
    fn delivered_keys_past_the_window_are_forgotten_under_load_and_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let settings = pruning_at_every_commit(Duration::ZERO);
        let outbox = open_with(&dir.path().join("o.redb"), settings.clone());
        deliver_one(&outbox, 1);
        // Steady load: every commit is a chance to prune; the writer is never idle for long.
        load_until_pruned(&outbox);
        drop(outbox);
        // Idle: the writer prunes when it wakes with nothing to do.
        let outbox = open_with(&dir.path().join("idle.redb"), settings);
        deliver_one(&outbox, 2);
        eventually("pruned when idle", || {
            outbox.stats().unwrap().delivered_keys == 0
        });
        // A week's window keeps them.
        let outbox = open(&dir.path().join("week.redb"));
        deliver_one(&outbox, 3);
        assert!(outbox.submit(&decision(4)));
        outbox.flush().unwrap();
        assert_eq!(outbox.stats().unwrap().delivered_keys, 1);
    }

    #[test]
    fn stored_delivered_and_dead_decisions_are_answered_without_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        {
            let outbox = open(&path);
            deliver_one(&outbox, 2);
            for n in [1, 3] {
                assert!(outbox.submit(&decision(n)));
            }
            outbox.flush().unwrap();
            let claimed = outbox.claim_due(now_ms(), 10).unwrap();
            let three = claimed.iter().find(|r| r.seq == 3).unwrap();
            outbox.settle(
                three,
                Settlement::Dead {
                    status: Some(400),
                    response: None,
                    error: "HTTP 400".into(),
                },
            );
            outbox.flush().unwrap();
            let stats = outbox.stats().unwrap();
            assert_eq!((stats.pending, stats.delivered_keys, stats.dead), (1, 1, 1));
        }
        // No room for the writer at all: only what the file already knows is answered.
        let full = open_with(
            &path,
            OutboxSettings {
                queue: 0,
                ..OutboxSettings::default()
            },
        );
        for (n, what) in [(1, "pending"), (2, "delivered"), (3, "dead")] {
            assert!(full.submit(&decision(n)), "a {what} decision is known");
        }
        assert!(!full.submit(&decision(4)), "a new one needs the writer");
        // The writer's own check knows dead keys too.
        let (mut after, mut replies) = (Vec::new(), Vec::new());
        let enqueue = Op::Enqueue {
            key: dedup_key(&decision(3), now_ms()),
            at: now_ms(),
            encoded: b"{}".to_vec(),
            relinks: None,
        };
        let committed = full
            .shared
            .apply(vec![enqueue], false, &mut after, &mut replies)
            .unwrap();
        assert!(!committed);
        assert!(matches!(after[..], [Change::Duplicate]));
    }

    #[test]
    fn attempts_survive_a_restart_and_max_pending_refuses_beyond() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        let limited = OutboxSettings {
            max_pending: 2,
            ..OutboxSettings::default()
        };
        {
            let outbox = open_with(&path, limited.clone());
            for n in 1..=3 {
                outbox.submit(&decision(n));
            }
            outbox.flush().unwrap();
            assert_eq!(outbox.stats().unwrap().pending, 2, "the third was refused");
            for counted in [true, true, false] {
                let claimed = outbox.claim_due(now_ms(), 10).unwrap();
                assert_eq!(claimed.len(), 2);
                for record in &claimed {
                    outbox.settle(
                        record,
                        Settlement::Retry {
                            at_ms: now_ms(),
                            counted,
                            error: "HTTP 503".into(),
                        },
                    );
                }
                outbox.flush().unwrap();
            }
        }
        let outbox = open_with(&path, limited);
        let pending = outbox.pending(10).unwrap();
        assert_eq!(
            pending[0].attempts, 2,
            "two counted attempts, read back from the file"
        );
        assert_eq!(pending[0].last_error.as_deref(), Some("HTTP 503"));
        assert!(
            outbox.submit(&decision(4)),
            "answered, but refused: still full"
        );
        outbox.flush().unwrap();
        assert_eq!(outbox.stats().unwrap().pending, 2);
    }

    #[test]
    fn a_retried_dead_letter_counts_against_max_pending_within_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_with(
            &dir.path().join("o.redb"),
            OutboxSettings {
                max_pending: 1,
                ..OutboxSettings::default()
            },
        );
        assert!(outbox.submit(&decision(1)));
        outbox.flush().unwrap();
        let record = outbox.claim_due(now_ms(), 1).unwrap().remove(0);
        outbox.settle(
            &record,
            Settlement::Dead {
                status: Some(400),
                response: None,
                error: "HTTP 400".into(),
            },
        );
        outbox.flush().unwrap();
        // One group: the dead letter back in line, then a new record, which no longer fits.
        let (reply, _answer) = mpsc::sync_channel(1);
        let group = vec![
            Op::Retry(record.key, reply),
            Op::Enqueue {
                key: dedup_key(&decision(2), now_ms()),
                at: now_ms(),
                encoded: b"{}".to_vec(),
                relinks: None,
            },
        ];
        let (mut after, mut replies) = (Vec::new(), Vec::new());
        outbox
            .shared
            .apply(group, false, &mut after, &mut replies)
            .unwrap();
        assert!(
            matches!(
                after[..],
                [Change::Queued { revived: true, .. }, Change::Refused]
            ),
            "{:?}",
            after.len()
        );
    }

    #[test]
    fn a_retry_waits_until_due_and_delivery_is_woken_by_commits() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        assert_eq!(outbox.next_due_ms(), None, "nothing to do");
        let wakeup = outbox.wakeup();
        let before = now_ms();
        assert!(outbox.submit(&decision(1)));
        outbox.flush().unwrap();
        let due = outbox.next_due_ms().unwrap();
        assert!((before..=now_ms()).contains(&due), "due when enqueued");
        // The commit woke whoever waits for work (the permit is kept until taken).
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), wakeup.notified()).await
            })
            .expect("woken by the commit");
        let record = outbox.claim_due(now_ms(), 10).unwrap().remove(0);
        let later = now_ms() + 60_000;
        outbox.settle(
            &record,
            Settlement::Retry {
                at_ms: later,
                counted: true,
                error: "HTTP 503".into(),
            },
        );
        assert_eq!(outbox.next_due_ms(), Some(later));
        assert!(
            outbox.claim_due(now_ms(), 10).unwrap().is_empty(),
            "not due yet"
        );
        let again = outbox.claim_due(later, 10).unwrap();
        assert_eq!(again.len(), 1, "due then");
        assert_eq!(again[0].attempts, 1);
    }

    #[test]
    fn a_settlement_whose_commit_fails_puts_the_record_back_in_line() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        assert!(outbox.submit(&decision(1)));
        outbox.flush().unwrap();
        let record = outbox.claim_due(now_ms(), 10).unwrap().remove(0);
        // The disk refuses the group that records the delivery.
        outbox.shared.fail_commits.store(true, Ordering::Relaxed);
        let (reply, _answer) = mpsc::sync_channel(1);
        outbox.shared.commit(
            vec![
                Op::Settle(Box::new(record.clone()), Settlement::Delivered),
                Op::Enqueue {
                    key: dedup_key(&decision(2), now_ms()),
                    at: now_ms(),
                    encoded: b"{}".to_vec(),
                    relinks: None,
                },
                Op::Retry(Uuid::from_u128(99), reply),
            ],
            false,
        );
        outbox.shared.fail_commits.store(false, Ordering::Relaxed);
        let again = outbox.claim_due(now_ms(), 10).unwrap();
        assert_eq!(again.len(), 1, "offered again, not stuck as claimed");
        assert_eq!(again[0].seq, record.seq);
        assert_eq!(
            outbox.stats().unwrap().pending,
            1,
            "still pending in the file"
        );
        assert_eq!(
            counted(&outbox.shared.metrics.enqueued, "failed"),
            1,
            "the group's new record is lost with it, and counted"
        );
    }

    #[test]
    fn a_burst_is_committed_in_groups_and_the_gauges_follow() {
        let dir = tempfile::tempdir().unwrap();
        // A group waits a whole second for more: the burst arrives well within it.
        let settings = OutboxSettings {
            group_interval: Duration::from_secs(1),
            ..OutboxSettings::default()
        };
        let outbox = open_with(&dir.path().join("o.redb"), settings);
        for n in 1..=200 {
            assert!(outbox.submit(&decision(n)));
        }
        outbox.flush().unwrap();
        let commits = outbox.shared.metrics.commits.get();
        assert!(commits <= 2, "{commits} commits for 200 records");
        eventually("the depth gauge", || {
            outbox.shared.metrics.depth.get() == 200
        });
        let claimed = outbox.claim_due(now_ms(), 5).unwrap();
        assert_eq!(claimed.len(), 5);
        eventually("the in-flight gauge", || {
            outbox.shared.metrics.in_flight.get() == 5
        });
        // Groups of one record: one commit each, however fast they come.
        let single = open_with(
            &dir.path().join("single.redb"),
            OutboxSettings {
                group_records: 1,
                ..OutboxSettings::default()
            },
        );
        for n in 1..=10 {
            assert!(single.submit(&decision(n)));
        }
        single.flush().unwrap();
        assert_eq!(single.shared.metrics.commits.get(), 10);
    }

    #[test]
    fn the_oldest_pending_age_is_that_of_the_first_enqueued() {
        let mut schedule = Schedule::default();
        assert_eq!(schedule.oldest_age_seconds(), 0.0, "nothing waiting");
        let now = now_ms();
        schedule
            .pending
            .insert(1, (now, now.saturating_sub(90_000)));
        schedule.pending.insert(2, (now, now.saturating_sub(1_000)));
        let age = schedule.oldest_age_seconds();
        assert!((90.0..91.0).contains(&age), "{age}");
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let short = "HTTP 400: bad bind".to_owned();
        assert_eq!(cut(short.clone()), short);
        let exact = "x".repeat(MAX_ERROR);
        assert_eq!(cut(exact.clone()), exact);
        // Two-byte characters straddle the limit: the cut falls before the one cut in half.
        let long = format!("x{}", "é".repeat(MAX_ERROR));
        let kept = cut(long.clone());
        assert_eq!(kept.len(), MAX_ERROR - 1);
        assert!(long.starts_with(&kept));
    }

    #[test]
    fn duplicates_are_answered_without_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        assert!(outbox.submit(&decision(1)));
        outbox.flush().unwrap();
        let commits = outbox.shared.metrics.commits.get();
        assert_eq!(commits, 1, "the first sighting is stored");
        // Seen again and again, pending and then delivered: nothing to write, nothing committed.
        for _ in 0..5 {
            assert!(outbox.submit(&decision(1)));
        }
        outbox.flush().unwrap();
        assert_eq!(outbox.shared.metrics.commits.get(), commits);
        // The writer's own check, for a duplicate that reached it: the group is aborted.
        let (mut after, mut replies) = (Vec::new(), Vec::new());
        let enqueue = Op::Enqueue {
            key: dedup_key(&decision(1), now_ms()),
            at: now_ms(),
            encoded: b"{}".to_vec(),
            relinks: None,
        };
        let committed = outbox
            .shared
            .apply(vec![enqueue], false, &mut after, &mut replies)
            .unwrap();
        assert!(!committed);
        assert!(matches!(after[..], [Change::Duplicate]));
        let claimed = outbox.claim_due(now_ms(), 10).unwrap();
        outbox.settle(&claimed[0], Settlement::Delivered);
        outbox.flush().unwrap();
        let commits = outbox.shared.metrics.commits.get();
        assert!(outbox.submit(&decision(1)));
        outbox.flush().unwrap();
        assert_eq!(outbox.shared.metrics.commits.get(), commits);
        // A duplicate in the same group as a new record is still caught by the writer.
        assert!(outbox.submit(&decision(2)));
        assert!(outbox.submit(&decision(2)));
        outbox.flush().unwrap();
        let stats = outbox.stats().unwrap();
        assert_eq!((stats.pending, stats.delivered_keys), (1, 1));
    }

    #[test]
    fn a_key_read_once_is_answered_from_memory_until_the_window_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let reads = |o: &RedbOutbox| o.shared.reads.load(Ordering::Relaxed);
        let week = open(&dir.path().join("week.redb"));
        deliver_one(&week, 1);
        let before = reads(&week);
        assert!(week.submit(&decision(1)));
        assert_eq!(reads(&week), before + 1, "the first offer reads the file");
        for _ in 0..5 {
            assert!(week.submit(&decision(1)));
        }
        assert_eq!(
            reads(&week),
            before + 1,
            "later offers are answered from memory"
        );
        assert_eq!(counted(&week.shared.metrics.enqueued, "duplicate"), 6);
        drop(week);
        // A short window: the key is remembered as delivered, then pruned, and offered
        // again it is queued again rather than answered from memory.
        let short = open_with(
            &dir.path().join("short.redb"),
            pruning_at_every_commit(Duration::from_millis(1_500)),
        );
        deliver_one(&short, 1);
        let before = reads(&short);
        assert!(short.submit(&decision(1)));
        assert!(short.submit(&decision(1)));
        assert_eq!(counted(&short.shared.metrics.enqueued, "duplicate"), 2);
        assert_eq!(reads(&short), before + 1, "remembered while young");
        load_until_pruned(&short);
        let (pending, before) = (short.stats().unwrap().pending, reads(&short));
        assert!(short.submit(&decision(1)));
        short.flush().unwrap();
        assert_eq!(reads(&short), before + 1, "read again once pruned");
        assert_eq!(short.stats().unwrap().pending, pending + 1);
    }

    #[test]
    fn progress_is_kept_across_a_restart_and_through_an_uncommitted_retry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        {
            let outbox = open(&path);
            outbox.submit(&decision(1));
            outbox.submit(&decision(2));
            outbox.flush().unwrap();
            let claimed = outbox.claim_due(now_ms(), 2).unwrap();
            // The first's create was confirmed, then the process died before it settled.
            outbox.progress(&claimed[0], 2);
            outbox.progress(&claimed[0], 2);
            // The second's create was confirmed and its close throttled.
            let mut second = claimed[1].clone();
            second.progress = 2;
            outbox.settle(
                &second,
                Settlement::Retry {
                    at_ms: second.next_attempt_ms,
                    counted: false,
                    error: "throttled (429)".into(),
                },
            );
            let again = outbox.claim_due(now_ms(), 1).unwrap();
            assert_eq!(again[0].seq, second.seq);
            assert_eq!(again[0].progress, 2, "seen before or after the commit");
            outbox.flush().unwrap();
        }
        let outbox = open(&path);
        let pending = outbox.pending(10).unwrap();
        assert_eq!(
            pending.iter().map(|r| r.progress).collect::<Vec<_>>(),
            [2, 2],
            "read back from the file after a restart"
        );
        let claimed = outbox.claim_due(now_ms(), 1).unwrap();
        outbox.progress(&claimed[0], 4);
        outbox.flush().unwrap();
        assert_eq!(outbox.pending(1).unwrap()[0].progress, 6, "steps add up");
        outbox.settle(&claimed[0], Settlement::Delivered);
        outbox.flush().unwrap();
        outbox.progress(&claimed[0], 8);
        outbox.flush().unwrap();
        assert_eq!(
            outbox.stats().unwrap().pending,
            1,
            "progress of a record already settled writes nothing back"
        );
    }

    #[test]
    fn retries_keep_their_place_and_dead_letters_can_be_retried_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("o.redb"));
        for n in 1..=3 {
            outbox.submit(&decision(n));
        }
        outbox.flush().unwrap();
        let first = outbox.claim_due(now_ms(), 1).unwrap().remove(0);
        outbox.settle(
            &first,
            Settlement::Retry {
                at_ms: first.next_attempt_ms,
                counted: true,
                error: "HTTP 500".into(),
            },
        );
        let again = outbox.claim_due(now_ms(), 1).unwrap().remove(0);
        assert_eq!(again.seq, first.seq, "back in line at once, still first");
        outbox.settle(
            &again,
            Settlement::Dead {
                status: Some(400),
                response: Some("bad bind".into()),
                error: "HTTP 400".into(),
            },
        );
        outbox.flush().unwrap();
        let dead = outbox.dead_letters(10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].record.attempts, 1);
        assert_eq!(dead[0].response.as_deref(), Some("bad bind"));
        outbox.retry(dead[0].record.key).unwrap();
        assert!(matches!(
            outbox.retry(dead[0].record.key),
            Err(OutboxError::NotFound { .. })
        ));
        let pending = outbox.pending(10).unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(pending[0].attempts, 0, "attempts reset");
        outbox.skip(pending[2].key).unwrap();
        assert_eq!(outbox.stats().unwrap().pending, 2);
        outbox.submit(&pending[2].decision);
        outbox.flush().unwrap();
        assert_eq!(
            outbox.stats().unwrap().pending,
            2,
            "a skipped decision stays skipped"
        );
    }

    #[test]
    fn records_survive_a_restart_and_the_file_has_one_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        {
            let outbox = open(&path);
            outbox.submit(&decision(7));
            outbox.flush().unwrap();
            let mut registry = prometheus_client::registry::Registry::default();
            assert!(matches!(
                RedbOutbox::open(
                    &path,
                    OutboxSettings::default(),
                    OutboxMetrics::register(&mut registry)
                ),
                Err(OutboxError::InUse { .. })
            ));
            // Claimed and never settled (a crash mid-delivery): offered again after restart.
            assert_eq!(outbox.claim_due(now_ms(), 10).unwrap().len(), 1);
        }
        let outbox = open(&path);
        let again = outbox.claim_due(now_ms(), 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].decision.crm_id, Some(Uuid::from_u128(7)));
    }
}
