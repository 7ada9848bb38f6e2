//! The file source: a TOML or JSON directory document (by extension; `.json` is JSON, anything
//! else TOML), bounded in size, or the embedded example when no file is configured. Also the
//! change watcher, which polls the file's length and modification time.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::model::DirectoryDocument;
use super::settings::DirectorySettings;
use super::snapshot::{Directory, InvalidDirectory};

/// The example directory used when none is configured (users, options, folder rules and records
/// that match the recorded fixtures).
pub const EMBEDDED_EXAMPLE: &str = include_str!("../../fixtures/directory/contoso.toml");

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read directory file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "directory file {path} is {size} bytes, over the limit of {limit}\nfix: raise [directory] max_file_size or split the file"
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "directory file {origin}: {message}\nfix: correct the table or column named above; README.md (Directory) lists them"
    )]
    Parse { origin: String, message: String },
    #[error("{origin}: {source}")]
    Invalid {
        origin: String,
        #[source]
        source: InvalidDirectory,
    },
}

/// Where the directory comes from.
#[derive(Debug, Clone)]
pub struct FileSource {
    pub path: Option<PathBuf>,
    pub max_size: u64,
    /// How the snapshot indexes sign-in names; part of the source, so a configuration reload
    /// that changes it rebuilds the snapshot with it.
    pub settings: DirectorySettings,
}

/// What identifies one version of the file, to notice changes cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl FileSource {
    /// The embedded example.
    pub fn embedded() -> FileSource {
        FileSource {
            path: None,
            max_size: u64::MAX,
            settings: DirectorySettings::default(),
        }
    }

    /// Reads, parses, validates and indexes the directory.
    pub fn load(&self) -> Result<Directory, DirectoryError> {
        let doc = self.read_document()?;
        Directory::build_with(doc, &self.settings).map_err(|source| DirectoryError::Invalid {
            origin: self.origin(),
            source,
        })
    }

    fn origin(&self) -> String {
        self.path
            .as_ref()
            .map_or("embedded example".into(), |p| p.display().to_string())
    }

    /// Reads and parses the document (within `max_size`), without building the snapshot: what
    /// the Dataverse simulator is seeded from.
    pub fn read_document(&self) -> Result<DirectoryDocument, DirectoryError> {
        let Some(path) = &self.path else {
            return parse_document(EMBEDDED_EXAMPLE, &self.origin(), false);
        };
        let read = |source| DirectoryError::Read {
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > self.max_size {
            return Err(DirectoryError::TooLarge {
                path: path.clone(),
                size,
                limit: self.max_size,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        parse_document(&text, &self.origin(), is_json(path))
    }

    /// The file's current stamp (`None` for the embedded example or an unreadable file).
    pub fn stamp(&self) -> Option<FileStamp> {
        let meta = std::fs::metadata(self.path.as_ref()?).ok()?;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Parses a document (TOML or JSON) and builds the snapshot with the default settings.
pub fn parse_and_build(text: &str, origin: &str, json: bool) -> Result<Directory, DirectoryError> {
    parse_and_build_with(text, origin, json, &DirectorySettings::default())
}

/// Parses a document (TOML or JSON) and builds the snapshot with `settings`.
pub fn parse_and_build_with(
    text: &str,
    origin: &str,
    json: bool,
    settings: &DirectorySettings,
) -> Result<Directory, DirectoryError> {
    let doc = parse_document(text, origin, json)?;
    Directory::build_with(doc, settings).map_err(|source| DirectoryError::Invalid {
        origin: origin.to_owned(),
        source,
    })
}

/// Parses a document (TOML or JSON).
fn parse_document(
    text: &str,
    origin: &str,
    json: bool,
) -> Result<DirectoryDocument, DirectoryError> {
    let parse_error = |message: String| DirectoryError::Parse {
        origin: origin.to_owned(),
        message,
    };
    if json {
        serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))
    } else {
        toml::from_str(text).map_err(|e| parse_error(e.to_string()))
    }
}

/// Polls the file source (re-read from `source` each time, so a configuration reload can point
/// it elsewhere) and hands every changed version to `apply`. Stops when `stop` turns true.
pub async fn watch(
    source: std::sync::Arc<std::sync::Mutex<FileSource>>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    apply: impl Fn(Result<Directory, DirectoryError>) + Send + 'static,
) {
    let current = || source.lock().map(|s| s.clone()).ok();
    let mut last = current().and_then(|s| s.stamp());
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(s) = current() else {
            return;
        };
        let now = s.stamp();
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        match tokio::task::spawn_blocking(move || s.load()).await {
            Ok(result) => apply(result),
            Err(_) => continue,
        }
    }
}
