//! The OData `$batch` wire format (multipart/mixed of `application/http` parts, change sets as
//! nested multiparts): writing requests and reading responses for the Dataverse sink, and the
//! reverse for the Dataverse simulator. Bounded: at most [`MAX_PARTS`] parts per level.

/// Dataverse's limit on requests per batch.
pub const MAX_PARTS: usize = 1000;

/// One HTTP message inside a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPart {
    /// Request: `PATCH /api/data/v9.2/emails(…)`; response: `204`.
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The part's own `Content-ID` (requests inside change sets).
    pub content_id: Option<String>,
}

impl HttpPart {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status of a response part.
    pub fn status(&self) -> Option<u16> {
        self.start.split_whitespace().nth(1)?.parse().ok()
    }
}

/// A top-level batch item: a single request/response or a change set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchItem {
    Single(HttpPart),
    ChangeSet(Vec<HttpPart>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("no boundary in the content type")]
    NoBoundary,
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    #[error("more than {MAX_PARTS} parts")]
    TooManyParts,
}

/// The boundary parameter of a `multipart/mixed` content type.
pub fn boundary(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// Writes a batch. Requests are `(method, url, headers, body)`.
pub fn write_batch(boundary: &str, items: &[BatchItem]) -> String {
    let mut out = String::new();
    for (n, item) in items.iter().enumerate() {
        out.push_str(&format!("--{boundary}\r\n"));
        match item {
            BatchItem::Single(part) => write_http(&mut out, part),
            BatchItem::ChangeSet(parts) => {
                let cs = format!("changeset_{boundary}_{n}");
                out.push_str(&format!(
                    "Content-Type: multipart/mixed; boundary={cs}\r\n\r\n"
                ));
                for part in parts {
                    out.push_str(&format!("--{cs}\r\n"));
                    write_http(&mut out, part);
                }
                out.push_str(&format!("--{cs}--\r\n"));
            }
        }
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

fn write_http(out: &mut String, part: &HttpPart) {
    out.push_str("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    if let Some(id) = &part.content_id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&part.start);
    out.push_str("\r\n");
    for (name, value) in &part.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&part.body);
    out.push_str("\r\n");
}

/// Reads a batch written by [`write_batch`] or by Dataverse.
pub fn read_batch(boundary: &str, body: &str) -> Result<Vec<BatchItem>, MultipartError> {
    let mut items = Vec::new();
    for part in split(boundary, body)? {
        let (headers, content) = headers_and_rest(part)?;
        let content_type = find(&headers, "content-type").unwrap_or("");
        if content_type
            .to_ascii_lowercase()
            .starts_with("multipart/mixed")
        {
            let inner = self::boundary(content_type).ok_or(MultipartError::NoBoundary)?;
            let mut parts = Vec::new();
            for p in split(inner, content)? {
                let (h, c) = headers_and_rest(p)?;
                parts.push(read_http(c, find(&h, "content-id").map(str::to_owned))?);
            }
            items.push(BatchItem::ChangeSet(parts));
        } else {
            items.push(BatchItem::Single(read_http(
                content,
                find(&headers, "content-id").map(str::to_owned),
            )?));
        }
    }
    Ok(items)
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The parts between `--boundary` lines, up to `--boundary--`.
fn split<'a>(boundary: &str, body: &'a str) -> Result<Vec<&'a str>, MultipartError> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = match body.find(&delimiter) {
        Some(i) => &body[i + delimiter.len()..],
        None => return Err(MultipartError::Malformed("no opening boundary")),
    };
    loop {
        if rest.starts_with("--") {
            return Ok(parts);
        }
        let rest_line = rest
            .strip_prefix("\r\n")
            .or_else(|| rest.strip_prefix('\n'))
            .ok_or(MultipartError::Malformed(
                "boundary not followed by a line break",
            ))?;
        let end = rest_line
            .find(&format!("\n{delimiter}"))
            .ok_or(MultipartError::Malformed("part without a closing boundary"))?;
        let part = rest_line[..end]
            .strip_suffix('\r')
            .unwrap_or(&rest_line[..end]);
        parts.push(part);
        if parts.len() > MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        rest = &rest_line[end + 1 + delimiter.len()..];
    }
}

/// Header lines as (name, value) pairs.
type Headers = Vec<(String, String)>;

fn headers_and_rest(text: &str) -> Result<(Headers, &str), MultipartError> {
    let (head, rest) = match text.find("\r\n\r\n") {
        Some(i) => (&text[..i], &text[i + 4..]),
        None => match text.find("\n\n") {
            Some(i) => (&text[..i], &text[i + 2..]),
            None => (text, ""),
        },
    };
    let headers = head
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .ok_or(MultipartError::Malformed("header line without a colon"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((headers, rest))
}

fn read_http(text: &str, content_id: Option<String>) -> Result<HttpPart, MultipartError> {
    let text = text.trim_start_matches(['\r', '\n']);
    let (start, rest) = text
        .split_once('\n')
        .map(|(s, r)| (s.trim_end_matches('\r'), r))
        .unwrap_or((text, ""));
    if start.is_empty() {
        return Err(MultipartError::Malformed("empty HTTP part"));
    }
    let (headers, body) = if rest.starts_with("\r\n") || rest.starts_with('\n') {
        (Vec::new(), rest.trim_start_matches(['\r', '\n']))
    } else {
        headers_and_rest(rest)?
    };
    Ok(HttpPart {
        start: start.to_owned(),
        headers,
        body: body.trim_end_matches(['\r', '\n']).to_owned(),
        content_id,
    })
}

/// Fuzz entry: the first line is the boundary, the rest a batch body. Whatever parses must
/// write back and parse again to the same items.
#[doc(hidden)]
pub fn fuzz(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (boundary, body) = text.split_once('\n').unwrap_or((text, ""));
    let boundary = boundary.trim();
    if let Ok(items) = read_batch(boundary, body)
        && !boundary.is_empty()
        && boundary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        assert!(items.len() <= MAX_PARTS + 1);
        let _ = read_batch(boundary, &write_batch(boundary, &items));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str, id: Option<&str>) -> HttpPart {
        HttpPart {
            start: format!("PATCH {url} HTTP/1.1"),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("If-None-Match".into(), "*".into()),
            ],
            body: r#"{"subject":"a"}"#.into(),
            content_id: id.map(str::to_owned),
        }
    }

    #[test]
    fn batches_round_trip() {
        let items = vec![
            BatchItem::Single(request("/api/data/v9.2/contacts(1)", None)),
            BatchItem::ChangeSet(vec![
                request("/api/data/v9.2/emails(2)", Some("1")),
                request("$1", Some("2")),
            ]),
        ];
        let text = write_batch("batch_x", &items);
        assert!(text.ends_with("--batch_x--\r\n"));
        assert_eq!(read_batch("batch_x", &text).unwrap(), items);
    }

    #[test]
    fn responses_carry_statuses() {
        let text = "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\n\r\n{\"error\":{}}\r\n--b--\r\n";
        let items = read_batch("b", text).unwrap();
        let BatchItem::Single(p) = &items[0] else {
            panic!("single part expected")
        };
        assert_eq!(p.status(), Some(412));
        assert_eq!(p.body, "{\"error\":{}}");
        assert_eq!(boundary("multipart/mixed; boundary=\"b\""), Some("b"));
    }

    #[test]
    fn malformed_batches_are_errors() {
        assert!(read_batch("b", "nothing").is_err());
        assert!(read_batch("b", "--b\r\nContent-Type: x\r\n\r\nHTTP/1.1 200 OK").is_err());
    }
}
