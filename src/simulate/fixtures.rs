//! Recorded exchanges the Exchange simulator serves. Each fixture is a folder with a
//! `fixture.toml` manifest (what request it answers, with what) and its body files; the format
//! is documented in `fixtures/README.md`. The repository's fixtures are embedded in the binary,
//! so the simulator works anywhere; a folder of one's own recordings can be loaded instead.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use include_dir::{Dir, include_dir};
use serde::Deserialize;

static EMBEDDED: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/fixtures/exchange");

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("fixture {name}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("cannot read fixtures from {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    #[allow(dead_code)]
    dialect: Option<String>,
    #[serde(rename = "match")]
    matcher: Matcher,
    #[serde(default)]
    request: Option<RequestSpec>,
    response: ResponseSpec,
}

/// The recorded request, for replaying a fixture through `trackgate inspect` and the tests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: Option<String>,
    path: Option<String>,
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    /// The EWS operation: the local name of the first element inside `soap:Body`.
    pub ews_operation: Option<String>,
    pub method: Option<String>,
    /// A path pattern, case-insensitive; `*` matches one segment, a final `**` the rest.
    pub path: Option<String>,
    /// `false`: recorded for inspection only, never served (another fixture answers the same
    /// operation or route).
    pub serve: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseSpec {
    #[serde(default = "ok")]
    status: u16,
    content_type: String,
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

/// One recorded response and what it answers.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub matcher: Matcher,
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub request: Option<RecordedRequest>,
}

impl Fixture {
    /// The recorded exchange as a capture, the way the proxy would hand it to inspection.
    pub fn to_capture(&self, extra_headers: &[(String, String)]) -> crate::proxy::capture::Capture {
        let (method, path, mut headers, body) = match &self.request {
            Some(r) => (
                r.method.clone(),
                r.path.clone(),
                r.headers.clone(),
                r.body.clone(),
            ),
            None => match &self.matcher.ews_operation {
                Some(_) => (
                    "POST".into(),
                    "/EWS/Exchange.asmx".into(),
                    Vec::new(),
                    Bytes::new(),
                ),
                None => (
                    self.matcher.method.clone().unwrap_or_else(|| "GET".into()),
                    self.matcher.path.clone().unwrap_or_default(),
                    Vec::new(),
                    Bytes::new(),
                ),
            },
        };
        headers.extend(extra_headers.iter().cloned());
        let mut response_headers = self.headers.clone();
        response_headers.push(("content-type".into(), self.content_type.clone()));
        crate::inspect::capture_from_parts(
            &method,
            &path,
            &headers,
            body,
            self.status,
            &response_headers,
            self.body.clone(),
        )
    }

    /// Loads one fixture folder.
    pub fn load(dir: &Path) -> Result<Fixture, FixtureError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|source| FixtureError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        build(&name, &read("fixture.toml")?, read)
    }
}

/// All fixtures the simulator knows.
#[derive(Debug, Clone, Default)]
pub struct FixtureSet {
    fixtures: Vec<Fixture>,
}

impl FixtureSet {
    /// The fixtures shipped in `fixtures/exchange`, compiled into the binary.
    pub fn embedded() -> Result<FixtureSet, FixtureError> {
        let mut fixtures = Vec::new();
        for dir in EMBEDDED.dirs() {
            let name = dir.path().display().to_string();
            let read = |file: &str| -> Result<Vec<u8>, FixtureError> {
                dir.get_file(dir.path().join(file))
                    .map(|f| f.contents().to_vec())
                    .ok_or_else(|| FixtureError::Invalid {
                        name: name.clone(),
                        problem: format!("missing file {file}"),
                    })
            };
            fixtures.push(build(&name, &read("fixture.toml")?, read)?);
        }
        Ok(FixtureSet::sorted(fixtures))
    }

    /// Fixtures from a folder of fixture folders.
    pub fn from_dir(root: &Path) -> Result<FixtureSet, FixtureError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| FixtureError::Io { path, source }
        };
        let mut fixtures = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io(root))? {
            let dir = entry.map_err(io(root))?.path();
            if dir.join("fixture.toml").is_file() {
                fixtures.push(Fixture::load(&dir)?);
            }
        }
        Ok(FixtureSet::sorted(fixtures))
    }

    fn sorted(mut fixtures: Vec<Fixture>) -> FixtureSet {
        // Deterministic precedence: by name.
        fixtures.sort_by(|a, b| a.name.cmp(&b.name));
        FixtureSet { fixtures }
    }

    pub fn len(&self) -> usize {
        self.fixtures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fixtures.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Fixture> {
        self.fixtures.iter()
    }

    /// The fixture answering an EWS operation.
    pub fn for_operation(&self, operation: &str) -> Option<&Fixture> {
        self.fixtures
            .iter()
            .filter(|f| f.matcher.serve != Some(false))
            .find(|f| {
                f.matcher
                    .ews_operation
                    .as_deref()
                    .is_some_and(|op| op.eq_ignore_ascii_case(operation))
            })
    }

    /// The fixture answering a method and path (EWS-operation fixtures excluded).
    pub fn for_route(&self, method: &str, path: &str) -> Option<&Fixture> {
        self.fixtures
            .iter()
            .filter(|f| f.matcher.serve != Some(false))
            .find(|f| {
                f.matcher.ews_operation.is_none()
                    && f.matcher
                        .method
                        .as_deref()
                        .is_none_or(|m| m.eq_ignore_ascii_case(method))
                    && f.matcher
                        .path
                        .as_deref()
                        .is_some_and(|p| path_matches(p, path))
            })
    }
}

fn build(
    name: &str,
    manifest: &[u8],
    read: impl Fn(&str) -> Result<Vec<u8>, FixtureError>,
) -> Result<Fixture, FixtureError> {
    let invalid = |problem: String| FixtureError::Invalid {
        name: name.to_owned(),
        problem,
    };
    let text = std::str::from_utf8(manifest).map_err(|e| invalid(e.to_string()))?;
    let m: Manifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if m.matcher.ews_operation.is_none() && m.matcher.path.is_none() {
        return Err(invalid("[match] needs ews_operation or path".into()));
    }
    let body = match &m.response.body {
        Some(file) => Bytes::from(read(file)?),
        None => Bytes::new(),
    };
    let request = match m.request {
        Some(r) => {
            let (default_method, default_path) = match &m.matcher.ews_operation {
                Some(_) => ("POST", "/EWS/Exchange.asmx"),
                None => (
                    m.matcher.method.as_deref().unwrap_or("GET"),
                    m.matcher.path.as_deref().unwrap_or("/"),
                ),
            };
            Some(RecordedRequest {
                method: r.method.unwrap_or_else(|| default_method.to_owned()),
                path: r.path.unwrap_or_else(|| default_path.to_owned()),
                headers: r.headers.into_iter().collect(),
                body: match &r.body {
                    Some(file) => Bytes::from(read(file)?),
                    None => Bytes::new(),
                },
            })
        }
        None => None,
    };
    Ok(Fixture {
        request,
        name: name.to_owned(),
        matcher: m.matcher,
        status: m.response.status,
        content_type: m.response.content_type,
        headers: m.response.headers.into_iter().collect(),
        body,
    })
}

/// Case-insensitive path match; `*` is one segment, a trailing `**` is any rest (one or more).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.trim_matches('/').split('/');
    let mut segs = path.trim_matches('/').split('/');
    loop {
        match (pat.next(), segs.next()) {
            (Some("**"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p.eq_ignore_ascii_case(s) => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_fixtures_load_and_match() {
        let set = FixtureSet::embedded().unwrap();
        assert!(set.len() >= 5);
        // Inspect-only fixtures (serve = false) never answer.
        assert!(
            set.for_operation("GetItem")
                .unwrap()
                .name
                .ends_with("ews-getitem-message")
        );
        assert!(set.iter().any(|f| f.matcher.serve == Some(false)));
        assert!(set.for_operation("getfolder").is_some());
        assert!(set.for_operation("NoSuchOperation").is_none());
        assert!(set.for_route("GET", "/v1.0/me/messages").is_some());
        assert!(
            set.for_route("POST", "/Autodiscover/Autodiscover.xml")
                .is_some()
        );
    }

    #[test]
    fn path_patterns() {
        assert!(path_matches(
            "/v1.0/*/**",
            "/v1.0/me/mailFolders/inbox/messages"
        ));
        assert!(!path_matches("/v1.0/*/**", "/v1.0/me"));
        assert!(path_matches("/a/*/c", "/A/b/C"));
        assert!(!path_matches("/a/*/c", "/a/b/c/d"));
    }

    #[test]
    fn repository_folder_matches_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/exchange");
        let from_disk = FixtureSet::from_dir(&dir).unwrap();
        assert_eq!(from_disk.len(), FixtureSet::embedded().unwrap().len());
    }
}
