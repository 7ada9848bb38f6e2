//! The directory in a fleet: one gateway — whoever holds the `#directory` lease — refreshes
//! from Dataverse and shares the result as an object in a JetStream object store; every other
//! gateway takes its snapshot from there. The fleet spends Dataverse's request budget once,
//! and when the holder goes, its lease (and the refreshing) moves like a mailbox's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::{Leases, Ownership};
use crate::directory::dataverse::{DataverseSource, refresh_now};
use crate::directory::model::DirectoryDocument;
use crate::directory::{DirectoryHandle, DirectoryMetrics};

/// The pseudo-mailbox whose lease says who refreshes the directory.
pub const DIRECTORY_LEASE: &str = "#directory";
const OBJECT: &str = "directory.json";
/// How often a follower looks for a newer shared directory.
const LOOK: Duration = Duration::from_secs(1);

/// Creates the object store the holder shares the directory through.
pub async fn setup(
    jetstream: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<(), String> {
    match jetstream.get_object_store(bucket).await {
        Ok(_) => Ok(()),
        Err(_) => jetstream
            .create_object_store(object_store::Config {
                bucket: bucket.to_owned(),
                description: Some("trackgate: the directory one gateway refreshed".into()),
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

/// What a gateway does for the directory until `stop`: refresh and share while it holds the
/// lease, follow the shared one otherwise.
pub struct SharedDirectory {
    leases: Arc<Leases>,
    source: Arc<DataverseSource>,
    handle: DirectoryHandle,
    metrics: Arc<DirectoryMetrics>,
    store: object_store::ObjectStore,
}

impl SharedDirectory {
    pub async fn open(
        jetstream: &jetstream::Context,
        bucket: &str,
        leases: Arc<Leases>,
        source: Arc<DataverseSource>,
        handle: DirectoryHandle,
        metrics: Arc<DirectoryMetrics>,
    ) -> Result<SharedDirectory, String> {
        let store = jetstream.get_object_store(bucket).await.map_err(|e| {
            format!(
                "the directory bucket {bucket} (nats.directory_bucket) is not usable ({e}); create it with `trackgate nats setup`"
            )
        })?;
        Ok(SharedDirectory {
            leases,
            source,
            handle,
            metrics,
            store,
        })
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut applied: Option<String> = None;
        let mut next_refresh = Instant::now();
        while !*stop.borrow() {
            if self.leases.owns(DIRECTORY_LEASE) {
                if Instant::now() >= next_refresh {
                    next_refresh = Instant::now() + self.refresh_and_share(&mut applied).await;
                }
            } else {
                // Whoever holds the lease refreshes now; this gateway refreshes at once if it
                // gets the lease later.
                next_refresh = Instant::now();
                if let Err(error) = self.follow(&mut applied).await {
                    tracing::debug!(%error, "no shared directory to follow yet");
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(LOOK) => {}
            }
        }
    }

    /// Refreshes from Dataverse and, when the snapshot changed, shares it; returns the wait
    /// until the next refresh.
    async fn refresh_and_share(&self, applied: &mut Option<String>) -> Duration {
        let before = self.handle.load();
        match refresh_now(&self.source, &self.handle, &self.metrics).await {
            Ok(()) => {
                let changed = !Arc::ptr_eq(&before, &self.handle.load());
                if changed || applied.is_none() {
                    match self.share().await {
                        Ok(nuid) => *applied = Some(nuid),
                        Err(error) => {
                            tracing::warn!(%error, "cannot share the refreshed directory with the fleet")
                        }
                    }
                }
                self.source.interval().await
            }
            Err(_) => Duration::from_secs(5),
        }
    }

    async fn share(&self) -> Result<String, String> {
        let doc = self.source.document().await;
        let bytes = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
        let info = self
            .store
            .put(OBJECT, &mut bytes.as_slice())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(bytes = bytes.len(), "directory shared with the fleet");
        Ok(info.nuid)
    }

    /// Takes the shared directory when it is newer than the one applied last.
    async fn follow(&self, applied: &mut Option<String>) -> Result<(), String> {
        let info = self.store.info(OBJECT).await.map_err(|e| e.to_string())?;
        if applied.as_deref() == Some(info.nuid.as_str()) {
            return Ok(());
        }
        let mut object = self.store.get(OBJECT).await.map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(info.size);
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| e.to_string())?;
        let doc: DirectoryDocument = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let directory = self.source.build_shared(doc).map_err(|e| e.to_string())?;
        self.metrics.loaded(&directory);
        tracing::info!(counts = %directory.counts(), "directory taken from the fleet");
        self.handle.swap(directory);
        *applied = Some(info.nuid);
        Ok(())
    }
}
