//! `trackgate replay`: a dry run of inspection and rules over recorded exchanges — fixture
//! folders (or their `fixture.toml`), folders of fixture folders, and `.jsonl` files of
//! observations — printing one JSON decision per line with its reasoning. Inputs are taken in
//! the order given (folders sorted by name), and the memory carries over from one to the next,
//! as it would for live traffic. Nothing is sent anywhere.

mod recorded;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use recorded::{InspectInputs, RecordedMessage, inspect_recorded, read_recorded};

use crate::directory::{DirectoryHandle, DirectorySettings, FileSource};
use crate::inspect::{self, InspectLimits, Observation};
use crate::rules::{Decision, Engine, MemoryLimits, Mode, RulesLimits, Verdict};
use crate::simulate::fixtures::Fixture;

/// Most observations read from one `.jsonl` file, and the longest line.
const MAX_OBSERVATIONS_PER_FILE: usize = 1_000_000;
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fixture(#[from] crate::simulate::fixtures::FixtureError),
    #[error(
        "{path}:{line}: not an observation: {message}\nfix: write one JSON observation per line, as `trackgate inspect` prints them"
    )]
    Observation {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{path}: over the limit of {MAX_OBSERVATIONS_PER_FILE} observations or {MAX_LINE} bytes per line"
    )]
    TooLarge { path: PathBuf },
    #[error("{0}: not a fixture folder, a folder of fixtures, or a .jsonl file of observations")]
    Unknown(PathBuf),
    #[error("cannot write the output: {0}")]
    Write(#[from] std::io::Error),
    #[error("{path}: not a recorded HTTP message: {problem}")]
    Http { path: PathBuf, problem: String },
    #[error("--header {0:?}: write it as 'Name: value'")]
    Header(String),
    #[error("nothing to inspect: give fixture folders, or --request and/or --response")]
    NothingToInspect,
    #[error(transparent)]
    Directory(#[from] crate::directory::DirectoryError),
}

/// One recorded exchange (or observation file) and what inspection made of it.
#[derive(Debug)]
pub struct Recorded {
    pub name: String,
    pub observations: Vec<Observation>,
    /// Why inspection produced nothing, when it failed.
    pub problem: Option<String>,
}

/// Expands the paths into recorded exchanges, in order.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<Recorded>, ReplayError> {
    let mut out = Vec::new();
    for path in paths {
        collect_one(path, &mut out, 0)?;
    }
    Ok(out)
}

fn collect_one(path: &Path, out: &mut Vec<Recorded>, depth: usize) -> Result<(), ReplayError> {
    let read = |source| ReplayError::Read {
        path: path.to_owned(),
        source,
    };
    if path.is_file() {
        if path.file_name().is_some_and(|n| n == "fixture.toml") {
            let dir = path.parent().unwrap_or(Path::new("."));
            return collect_one(dir, out, depth);
        }
        if path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "json")
        {
            out.push(read_observations(path)?);
            return Ok(());
        }
        return Err(ReplayError::Unknown(path.to_owned()));
    }
    if path.join("fixture.toml").is_file() {
        let fixture = Fixture::load(path)?;
        let capture = fixture.to_capture(&[]);
        let (observations, problem) = match inspect::inspect(&capture, InspectLimits::default()) {
            Ok(found) => (found.observations, None),
            Err(e) => (
                Vec::new(),
                Some(format!("not inspected ({}): {e}", e.kind())),
            ),
        };
        out.push(Recorded {
            name: fixture.name,
            observations,
            problem,
        });
        return Ok(());
    }
    if path.is_dir() && depth < 4 {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.join("fixture.toml").is_file()
                    || p.extension().is_some_and(|e| e == "jsonl")
                    || (p.is_dir() && depth < 3)
            })
            .collect();
        entries.sort();
        if entries.is_empty() {
            return Err(ReplayError::Unknown(path.to_owned()));
        }
        for e in entries {
            collect_one(&e, out, depth + 1)?;
        }
        return Ok(());
    }
    Err(ReplayError::Unknown(path.to_owned()))
}

fn read_observations(path: &Path) -> Result<Recorded, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut observations = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        if line.len() > MAX_LINE || observations.len() >= MAX_OBSERVATIONS_PER_FILE {
            return Err(ReplayError::TooLarge {
                path: path.to_owned(),
            });
        }
        // Expected-output files may hold `{"failure": …}` lines: not observations, skipped.
        if line.starts_with("{\"failure\"") {
            continue;
        }
        let o: Observation = serde_json::from_str(line).map_err(|e| ReplayError::Observation {
            path: path.to_owned(),
            line: i + 1,
            message: e.to_string(),
        })?;
        observations.push(o);
    }
    Ok(Recorded {
        name: path.display().to_string(),
        observations,
        problem: None,
    })
}

/// Totals of one replay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySummary {
    pub exchanges: usize,
    pub observations: usize,
    pub tracked: usize,
    pub ignored: usize,
}

/// `trackgate replay`: the directory file (or the embedded example), then every input decided
/// in order, one JSON line per decision on `out`.
pub fn replay_files(
    directory: Option<PathBuf>,
    inputs: &[PathBuf],
    out: impl Write,
    on_problem: impl FnMut(&str, &str),
) -> Result<ReplaySummary, ReplayError> {
    // No configuration here: sign-in names get the default aliases, no `[identity]` domains.
    let source = FileSource {
        path: directory,
        max_size: u64::MAX,
        settings: DirectorySettings::default(),
    };
    let engine = Engine::new(
        DirectoryHandle::new(source.load()?),
        MemoryLimits::default(),
        RulesLimits::default(),
    );
    let recorded = collect(inputs)?;
    Ok(replay(&engine, &recorded, out, on_problem)?.0)
}

/// Decides every observation in order and writes one JSON line per decision, each naming the
/// recorded exchange it came from.
pub fn replay(
    engine: &Engine,
    recorded: &[Recorded],
    mut out: impl Write,
    mut on_problem: impl FnMut(&str, &str),
) -> Result<(ReplaySummary, Vec<Decision>), ReplayError> {
    let mut summary = ReplaySummary::default();
    let mut all = Vec::new();
    for r in recorded {
        summary.exchanges += 1;
        if let Some(problem) = &r.problem {
            on_problem(&r.name, problem);
        }
        for o in &r.observations {
            summary.observations += 1;
            for d in engine.decide(o, Mode::REPLAY) {
                match d.verdict {
                    Verdict::Track => summary.tracked += 1,
                    Verdict::Ignore => summary.ignored += 1,
                }
                let mut line = serde_json::to_value(&d).map_err(std::io::Error::other)?;
                if let Some(map) = line.as_object_mut() {
                    map.insert("exchange".into(), serde_json::Value::String(r.name.clone()));
                }
                serde_json::to_writer(&mut out, &line).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
                all.push(d);
            }
        }
    }
    out.flush()?;
    Ok((summary, all))
}
