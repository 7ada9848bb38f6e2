//! `trackgate inspect`: recorded exchanges through inspection alone, one JSON observation per
//! line. Takes fixture folders, or a request and/or response file, each a raw HTTP/1.1 message
//! or a bare body (the recorded-exchange reader).

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::ReplayError;
use crate::inspect::{self, InspectLimits};
use crate::proxy::capture::Capture;
use crate::simulate::fixtures::Fixture;

/// Most header lines read from a recorded message.
const MAX_HEADERS: usize = 128;

/// The name of the exchange given as `--request`/`--response` files.
const EXCHANGE: &str = "exchange";

/// What to inspect and how to fill in what a bare body does not say; also the `trackgate
/// inspect` arguments (the doc comments are its help).
#[derive(Debug, Default, clap::Args)]
pub struct InspectInputs {
    /// Fixture folders (each with a fixture.toml).
    pub fixtures: Vec<PathBuf>,
    /// A recorded request: a raw HTTP message or a bare body.
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// A recorded response: a raw HTTP message or a bare body.
    #[arg(long)]
    pub response: Option<PathBuf>,
    /// Request method (default POST, or the raw request's).
    #[arg(long)]
    pub method: Option<String>,
    /// Request path (default /EWS/Exchange.asmx, or the raw request's).
    #[arg(long)]
    pub path: Option<String>,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Response status (default 200, or the raw response's).
    #[arg(long)]
    pub status: Option<u16>,
}

/// A recorded message: raw HTTP (request or status line, headers, body) or a bare body.
#[derive(Debug)]
pub struct RecordedMessage {
    /// (method, path) of a request, or ("", status) of a response.
    pub first_line: Option<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Inspects every input, writing observations to `out` and problems to `problems`; returns
/// whether every exchange could be inspected.
pub fn inspect_recorded(
    inputs: &InspectInputs,
    mut out: impl Write,
    mut problems: impl FnMut(&str),
) -> Result<bool, ReplayError> {
    let captures = captures(inputs)?;
    let mut all_inspected = true;
    for (name, capture, request_only) in captures {
        if request_only {
            problems(&format!("{name}: {}", request_only_note(&capture)));
        }
        match inspect::inspect(&capture, InspectLimits::default()) {
            Ok(found) => {
                for code in found.failures {
                    problems(&format!("{name}: EWS failure {code} (no observation)"));
                }
                for o in found.observations {
                    serde_json::to_writer(&mut out, &o)
                        .map_err(|e| ReplayError::Write(e.into()))?;
                    out.write_all(b"\n")?;
                }
            }
            Err(error) => {
                all_inspected = false;
                problems(&format!(
                    "{name}: not inspected ({}): {error}",
                    error.kind()
                ));
            }
        }
    }
    out.flush()?;
    Ok(all_inspected)
}

/// Each exchange to inspect: its name, the capture, and whether it is a request alone (whose
/// missing response is worth a word).
fn captures(inputs: &InspectInputs) -> Result<Vec<(String, Capture, bool)>, ReplayError> {
    let extra: Vec<(String, String)> = inputs
        .headers
        .iter()
        .map(|h| match h.split_once(':') {
            Some((n, v)) => Ok((n.trim().to_owned(), v.trim().to_owned())),
            None => Err(ReplayError::Header(h.clone())),
        })
        .collect::<Result<_, _>>()?;
    let mut captures = Vec::new();
    for dir in &inputs.fixtures {
        let f = Fixture::load(dir)?;
        captures.push((f.name.clone(), f.to_capture(&extra), false));
    }
    if inputs.request.is_some() || inputs.response.is_some() {
        let request_only = inputs.response.is_none();
        captures.push((
            EXCHANGE.to_owned(),
            from_files(inputs, &extra)?,
            request_only,
        ));
    }
    if captures.is_empty() {
        return Err(ReplayError::NothingToInspect);
    }
    Ok(captures)
}

/// What a request alone can and cannot tell: observations come only from what Exchange
/// answered with success, so without a response there are none; the operation is still known.
fn request_only_note(capture: &Capture) -> String {
    let what = match capture.route {
        crate::proxy::RouteClass::Ews => crate::inspect::xml::operation(&capture.request_body)
            .map(|op| format!("the EWS operation {op}")),
        _ => Some(format!("{} {}", capture.method, capture.path_and_query)),
    };
    let what = what.unwrap_or_else(|| "a request whose operation cannot be read".into());
    format!(
        "only a request was given: it is {what}, but observations come only from what Exchange answered with success; give --response with the recorded answer to see them"
    )
}

/// One exchange from a request and/or response file, the command line filling in the rest.
fn from_files(inputs: &InspectInputs, extra: &[(String, String)]) -> Result<Capture, ReplayError> {
    let read = |p: &Option<PathBuf>, response| {
        p.as_deref().map(|p| read_recorded(p, response)).transpose()
    };
    let (req, resp) = (read(&inputs.request, false)?, read(&inputs.response, true)?);
    let (raw_method, raw_path) = req
        .as_ref()
        .and_then(|r| r.first_line.clone())
        .unwrap_or_else(|| ("POST".into(), "/EWS/Exchange.asmx".into()));
    let raw_status = resp
        .as_ref()
        .and_then(|r| r.first_line.as_ref())
        .and_then(|(_, s)| s.parse().ok())
        .unwrap_or(200);
    let mut headers = req.as_ref().map(|r| r.headers.clone()).unwrap_or_default();
    headers.extend(extra.iter().cloned());
    Ok(inspect::capture_from_parts(
        inputs.method.as_deref().unwrap_or(&raw_method),
        inputs.path.as_deref().unwrap_or(&raw_path),
        &headers,
        req.map(|r| r.body).unwrap_or_default(),
        inputs.status.unwrap_or(raw_status),
        &resp.as_ref().map(|r| r.headers.clone()).unwrap_or_default(),
        resp.map(|r| r.body).unwrap_or_default(),
    ))
}

/// Reads a recorded request (`response` false) or response: raw HTTP/1.x when it starts like
/// one, else the whole file is the body.
pub fn read_recorded(path: &Path, response: bool) -> Result<RecordedMessage, ReplayError> {
    let data = std::fs::read(path).map_err(|source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let looks_raw = if response {
        data.starts_with(b"HTTP/1.")
    } else {
        let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
        line.windows(7).any(|w| w == b" HTTP/1")
    };
    if !looks_raw {
        return Ok(RecordedMessage {
            first_line: None,
            headers: Vec::new(),
            body: data.into(),
        });
    }
    let malformed = |problem: String| ReplayError::Http {
        path: path.to_path_buf(),
        problem,
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (first_line, parsed, head_len) = if response {
        let mut r = httparse::Response::new(&mut storage);
        let httparse::Status::Complete(n) = r.parse(&data).map_err(|e| malformed(e.to_string()))?
        else {
            return Err(malformed("incomplete HTTP response head".into()));
        };
        let status = r.code.unwrap_or(200).to_string();
        ((String::new(), status), r.headers.to_vec(), n)
    } else {
        let mut r = httparse::Request::new(&mut storage);
        let httparse::Status::Complete(n) = r.parse(&data).map_err(|e| malformed(e.to_string()))?
        else {
            return Err(malformed("incomplete HTTP request head".into()));
        };
        let line = (
            r.method.unwrap_or("POST").to_owned(),
            r.path.unwrap_or("/").to_owned(),
        );
        (line, r.headers.to_vec(), n)
    };
    let headers = parsed
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_owned(), value)
        })
        .collect();
    Ok(RecordedMessage {
        first_line: Some(first_line),
        headers,
        body: Bytes::from(data).slice(head_len..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_bare_messages_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("req.http");
        std::fs::write(
            &raw,
            "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nX-AnchorMailbox: a@b\r\n\r\n<s/>",
        )
        .unwrap();
        let m = read_recorded(&raw, false).unwrap();
        assert_eq!(
            m.first_line,
            Some(("POST".into(), "/EWS/Exchange.asmx".into()))
        );
        assert_eq!(m.headers.len(), 2);
        assert_eq!(&m.body[..], b"<s/>");
        let bare = dir.path().join("resp.xml");
        std::fs::write(&bare, "<Envelope/>").unwrap();
        let m = read_recorded(&bare, true).unwrap();
        assert!(m.first_line.is_none());
        assert_eq!(&m.body[..], b"<Envelope/>");
        let cut = dir.path().join("cut.http");
        std::fs::write(&cut, "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n").unwrap();
        assert!(matches!(
            read_recorded(&cut, true),
            Err(ReplayError::Http { .. })
        ));
    }

    #[test]
    fn a_header_without_a_colon_is_refused() {
        let inputs = InspectInputs {
            request: Some("x".into()),
            headers: vec!["NoColon".into()],
            ..InspectInputs::default()
        };
        assert!(matches!(captures(&inputs), Err(ReplayError::Header(_))));
        assert!(matches!(
            captures(&InspectInputs::default()),
            Err(ReplayError::NothingToInspect)
        ));
    }
}
