//! Mailbox ownership in a fleet: which gateway sweeps which mailbox. Gateways announce
//! themselves in a JetStream KV bucket (a `member.*` key each, renewed while alive) and spread
//! the mailboxes by rendezvous hashing over the live members; each holds a lease per mailbox it
//! should own (`lease.<hash of the address>` → this process), created and renewed with the KV's
//! revision check, expiring with the bucket's `max_age` when not renewed. The revision is the
//! fencing token: before each write on a mailbox's behalf the holder renews with the revision it
//! last saw, and a refusal (another gateway took the lease) stops it there. A gateway also stops
//! on its own clock two thirds into the lease, before the server could let another take it.

pub mod directory;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// What the catch-up sweep asks before it acts on a mailbox.
pub trait Ownership: Send + Sync {
    /// Whether this gateway sweeps `mailbox` now.
    fn owns(&self, mailbox: &str) -> bool;
    /// Renews the lease with the revision last seen, right before a write on `mailbox`'s
    /// behalf; `false` when the lease is gone or another gateway took it (the write must not
    /// happen).
    fn confirm<'a>(&'a self, mailbox: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The KV bucket (created by `trackgate nats setup` with `max_age` = `ttl`).
    pub bucket: String,
    pub ttl: Duration,
    /// This gateway's name; a random suffix per process tells a restarted or resumed
    /// gateway from the one that held a lease before.
    pub instance: String,
}

#[derive(Debug, Clone)]
pub struct FleetMetrics {
    pub leases_held: Gauge,
    pub members: Gauge,
    pub fenced: Counter,
    pub taken: Counter,
}

impl FleetMetrics {
    pub fn register(registry: &mut Registry) -> FleetMetrics {
        let m = FleetMetrics {
            leases_held: Gauge::default(),
            members: Gauge::default(),
            fenced: Counter::default(),
            taken: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("fleet");
        r.register(
            "leases_held",
            "Mailboxes this gateway holds the lease of",
            m.leases_held.clone(),
        );
        r.register("members", "Live gateways in the fleet", m.members.clone());
        r.register(
            "fenced",
            "Writes refused because the lease had passed to another gateway",
            m.fenced.clone(),
        );
        r.register("taken", "Leases this gateway acquired", m.taken.clone());
        m
    }
}

/// One lease this gateway holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    /// This gateway's own deadline: two thirds of the TTL after the write that set `revision`
    /// was sent, so it stops before the server lets the lease go.
    valid_until: Instant,
}

/// Mailbox leases over a KV bucket.
pub struct Leases {
    jetstream: jetstream::Context,
    /// The bucket; `None` until NATS could be asked for it (a gateway started without NATS).
    kv: tokio::sync::Mutex<Option<kv::Store>>,
    settings: LeaseSettings,
    /// `instance/nonce`: the value of every key this process writes.
    holder: String,
    /// By [`lease_hash`].
    held: Mutex<HashMap<u128, Held>>,
    metrics: FleetMetrics,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// A mailbox's lease, named by a hash of its address (any case): no address is written to
/// NATS as a key. Lower-case addresses (what the directory gives) are hashed without a copy:
/// the sweep asks [`Ownership::owns`] of every mailbox on each of its ticks.
fn lease_hash(mailbox: &str) -> u128 {
    if mailbox.bytes().any(|b| b.is_ascii_uppercase()) {
        xxhash_rust::xxh3::xxh3_128(mailbox.to_ascii_lowercase().as_bytes())
    } else {
        xxhash_rust::xxh3::xxh3_128(mailbox.as_bytes())
    }
}

fn key_of(lease: u128) -> String {
    format!("lease.{lease:032x}")
}

/// The KV key of a mailbox's lease.
pub fn lease_key(mailbox: &str) -> String {
    key_of(lease_hash(mailbox))
}

fn member_key(holder: &str) -> String {
    format!(
        "member.{:016x}",
        xxhash_rust::xxh3::xxh3_64(holder.as_bytes())
    )
}

/// Rendezvous hashing: the member with the highest score for `mailbox` owns it. Adding or
/// removing a member moves only the mailboxes it wins or held.
pub fn owner<'a>(mailbox: &str, members: &'a [String]) -> Option<&'a str> {
    let mailbox = mailbox.to_ascii_lowercase();
    members
        .iter()
        .max_by_key(|m| {
            xxhash_rust::xxh3::xxh3_64_with_seed(
                mailbox.as_bytes(),
                xxhash_rust::xxh3::xxh3_64(m.as_bytes()),
            )
        })
        .map(String::as_str)
}

impl Leases {
    /// Opens the bucket. A missing bucket on a reachable NATS is an error naming the key;
    /// NATS out of reach is not: the bucket is asked for again each round, and until then this
    /// gateway owns no mailbox.
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: LeaseSettings,
        metrics: FleetMetrics,
    ) -> Result<Arc<Leases>, String> {
        let kv = match jetstream.get_key_value(&settings.bucket).await {
            Ok(kv) => Some(kv),
            Err(e)
                if jetstream.client().connection_state()
                    == async_nats::connection::State::Connected =>
            {
                return Err(format!(
                    "the lease bucket {} (nats.lease_bucket) is not usable ({e}); create it with `trackgate nats setup`",
                    settings.bucket
                ));
            }
            Err(_) => None,
        };
        let holder = format!("{}/{:016x}", settings.instance, rand::random::<u64>());
        Ok(Arc::new(Leases {
            jetstream: jetstream.clone(),
            kv: tokio::sync::Mutex::new(kv),
            settings,
            holder,
            held: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    async fn store(&self) -> Result<kv::Store, String> {
        let mut kv = self.kv.lock().await;
        if let Some(store) = &*kv {
            return Ok(store.clone());
        }
        let store = self
            .jetstream
            .get_key_value(&self.settings.bucket)
            .await
            .map_err(|e| format!("the lease bucket {}: {e}", self.settings.bucket))?;
        *kv = Some(store.clone());
        Ok(store)
    }

    fn holding(&self) -> std::sync::MutexGuard<'_, HashMap<u128, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps membership and leases current until `stop`: every third of the TTL, announce this
    /// gateway, read the members, take the leases of the mailboxes it should own, renew the
    /// ones it holds, and let go of the ones another member should own now.
    pub async fn run(
        self: Arc<Self>,
        mailboxes: Arc<dyn Fn() -> Arc<[String]> + Send + Sync>,
        mut stop: watch::Receiver<bool>,
    ) {
        let every = self.settings.ttl / 3;
        while !*stop.borrow() {
            if let Err(error) = self.round(&mailboxes()).await {
                tracing::warn!(%error, "mailbox leases not renewed this round");
            }
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        self.release_all().await;
    }

    /// One round; public for tests that drive it step by step.
    pub async fn round(&self, mailboxes: &[String]) -> Result<(), String> {
        let kv = self.store().await?;
        kv.put(member_key(&self.holder), self.holder.clone().into())
            .await
            .map_err(|e| e.to_string())?;
        let members = self.members(&kv).await?;
        self.metrics.members.set(members.len() as i64);
        for mailbox in mailboxes {
            let lease = lease_hash(mailbox);
            let mine = owner(mailbox, &members) == Some(self.holder.as_str());
            let held = self.holding().get(&lease).copied();
            match (mine, held) {
                (true, Some(held)) => {
                    self.renew(&kv, lease, held.revision).await;
                }
                (true, None) => self.take(&kv, lease).await,
                (false, Some(held)) => {
                    self.holding().remove(&lease);
                    let key = key_of(lease);
                    let _ = kv.delete_expect_revision(&key, Some(held.revision)).await;
                }
                (false, None) => {}
            }
        }
        self.metrics.leases_held.set(self.holding().len() as i64);
        Ok(())
    }

    async fn members(&self, kv: &kv::Store) -> Result<Vec<String>, String> {
        let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
        let mut members = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if key.starts_with("member.")
                && let Ok(Some(value)) = kv.get(&key).await
            {
                members.push(String::from_utf8_lossy(&value).into_owned());
            }
        }
        members.sort();
        Ok(members)
    }

    /// Records a lease written at `revision` by a request sent at `sent`: held on this
    /// gateway's own clock until two thirds of the TTL after that, before the server could let
    /// it go.
    fn hold(&self, lease: u128, revision: u64, sent: Instant) {
        let valid_until = sent + self.settings.ttl * 2 / 3;
        self.holding().insert(
            lease,
            Held {
                revision,
                valid_until,
            },
        );
    }

    async fn take(&self, kv: &kv::Store, lease: u128) {
        let sent = Instant::now();
        if let Ok(revision) = kv.create(key_of(lease), self.holder.clone().into()).await {
            self.metrics.taken.inc();
            self.hold(lease, revision, sent);
        }
        // Held by another gateway: it lets go when it sees this one's membership, or the
        // lease expires if that gateway is gone.
    }

    /// The fenced write: an update that succeeds only if nobody wrote the key since
    /// `revision`.
    async fn renew(&self, kv: &kv::Store, lease: u128, revision: u64) -> bool {
        let sent = Instant::now();
        match kv
            .update(key_of(lease), self.holder.clone().into(), revision)
            .await
        {
            Ok(revision) => {
                self.hold(lease, revision, sent);
                true
            }
            Err(error) => {
                tracing::info!(%error, "a mailbox lease was lost to another gateway");
                self.holding().remove(&lease);
                false
            }
        }
    }

    async fn release_all(&self) {
        let held: Vec<(u128, Held)> = self.holding().drain().collect();
        self.metrics.leases_held.set(0);
        let Ok(kv) = self.store().await else {
            return;
        };
        for (lease, held) in held {
            let _ = kv
                .delete_expect_revision(key_of(lease), Some(held.revision))
                .await;
        }
        let _ = kv.delete(member_key(&self.holder)).await;
    }

    /// The connection the leases use, for what else the fleet keeps in NATS.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// How many mailboxes this gateway holds the lease of (as `fleet_leases_held` says).
    pub fn held_count(&self) -> usize {
        self.holding().len()
    }
}

impl Ownership for Leases {
    fn owns(&self, mailbox: &str) -> bool {
        self.holding()
            .get(&lease_hash(mailbox))
            .is_some_and(|h| h.valid_until > Instant::now())
    }

    fn confirm<'a>(&'a self, mailbox: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let lease = lease_hash(mailbox);
            let held = self.holding().get(&lease).copied();
            // Past this gateway's own deadline too (it was frozen, say): the lease may be
            // another's by now, and only the renewal with the old revision can tell.
            let confirmed = match (held, self.store().await) {
                (Some(held), Ok(kv)) => self.renew(&kv, lease, held.revision).await,
                _ => false,
            };
            if !confirmed {
                self.metrics.fenced.inc();
            }
            confirmed
        })
    }
}

/// Creates (or updates) the lease bucket: one value per key, entries gone `ttl` after their
/// last write.
pub async fn setup(
    jetstream: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<(), String> {
    jetstream
        .create_or_update_key_value(kv::Config {
            bucket: bucket.to_owned(),
            description: "trackgate: gateways of the fleet and their mailbox leases".into(),
            history: 1,
            max_age: ttl,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_what_a_new_member_wins() {
        let two: Vec<String> = vec!["a/1".into(), "b/1".into()];
        let three: Vec<String> = vec!["a/1".into(), "b/1".into(), "c/1".into()];
        let mailboxes: Vec<String> = (0..1000)
            .map(|i| format!("user{i}@contoso.example"))
            .collect();
        let mut moved = 0;
        let mut counts = HashMap::new();
        for m in &mailboxes {
            let before = owner(m, &two).unwrap();
            let after = owner(m, &three).unwrap();
            *counts.entry(after).or_insert(0) += 1;
            if before != after {
                assert_eq!(after, "c/1", "a mailbox moves only to the new member");
                moved += 1;
            }
        }
        assert!((250..420).contains(&moved), "about a third moves: {moved}");
        assert!(
            counts.values().all(|c| (250..420).contains(c)),
            "{counts:?}"
        );
        assert_eq!(
            owner("X@Contoso.example", &three),
            owner("x@contoso.example", &three)
        );
        assert_eq!(owner("x@contoso.example", &[]), None);
    }

    #[test]
    fn a_lease_key_names_no_address() {
        let key = lease_key("alex.seller@contoso.example");
        assert!(key.starts_with("lease.") && !key.contains('@') && !key.contains("alex"));
        assert_eq!(key, lease_key("Alex.Seller@contoso.example"));
    }
}
