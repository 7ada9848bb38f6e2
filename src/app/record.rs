//! The running gateway's record in its data directory: its process and admin address, so that
//! the commands that read the same files (`trackgate outbox`, `trackgate journal`) ask this
//! gateway, and never another one that happens to listen on the configured admin port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's file name in the data directory.
pub const FILE: &str = "gateway.json";
/// A record is a few dozen bytes; anything larger is not ours.
const MAX_RECORD: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub pid: u32,
    pub admin: SocketAddr,
    pub proxy: SocketAddr,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Writes the record (to a temporary file first, so a reader never sees half of one).
pub fn write(data_dir: &Path, record: &GatewayRecord) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let text = serde_json::to_string(record).map_err(std::io::Error::other)?;
    let temporary = data_dir.join(format!("{FILE}.{}", record.pid));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path(data_dir))
}

/// Removes the record if it is this process's (a newer gateway may have replaced it).
pub fn remove(data_dir: &Path, admin: SocketAddr) {
    let ours = read(data_dir).is_some_and(|r| r.pid == std::process::id() && r.admin == admin);
    if ours {
        let _ = std::fs::remove_file(path(data_dir));
    }
}

/// The gateway recorded in `data_dir`, if its process still runs (a record left by a gateway
/// that was killed is stale and ignored).
pub fn live(data_dir: &Path) -> Option<GatewayRecord> {
    read(data_dir).filter(|r| Path::new(&format!("/proc/{}", r.pid)).exists())
}

fn read(data_dir: &Path) -> Option<GatewayRecord> {
    let file = std::fs::File::open(path(data_dir)).ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_RECORD), &mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_live_only_while_its_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(live(dir.path()), None);
        let record = GatewayRecord {
            pid: std::process::id(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            proxy: "127.0.0.1:8443".parse().unwrap(),
        };
        write(dir.path(), &record).unwrap();
        assert_eq!(live(dir.path()), Some(record.clone()));
        // A finished process's record is stale.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let finished = child.id();
        child.wait().unwrap();
        let stale = GatewayRecord {
            pid: finished,
            ..record.clone()
        };
        write(dir.path(), &stale).unwrap();
        assert_eq!(live(dir.path()), None);
        // Only its own record is removed.
        remove(dir.path(), record.admin);
        assert!(dir.path().join(FILE).exists());
        write(dir.path(), &record).unwrap();
        remove(dir.path(), record.admin);
        assert!(!dir.path().join(FILE).exists());
    }
}
