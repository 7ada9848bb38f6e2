//! The CRM side of delivery: mapping tracked decisions to documents, and the sinks that write
//! them — Dataverse Web API, a signed webhook, or the local journal — each classifying every
//! answer into one [`Outcome`] that delivery acts on.

pub mod dataverse;
pub mod journal;
pub mod mapping;
pub mod multipart;
pub mod online;
pub mod pace;
pub mod webhook;

use std::time::Duration;

pub use dataverse::{DataverseSettings, DataverseSink};
pub use journal::Journal;
pub use mapping::{BodyPolicy, FieldTable, TrackedEmail};
pub use webhook::{WebhookSettings, WebhookSink};

/// Told (document index, steps done) each time the CRM confirms a step of a multi-step
/// delivery with more to come, so a crash resumes after it.
pub type Progress<'a> = dyn Fn(usize, u8) + Send + Sync + 'a;

/// Longest response body kept for a dead letter.
pub const MAX_KEPT_RESPONSE: usize = 4096;

/// What became of one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Written, or already there (412 on a create-only upsert, 409 from a webhook).
    Delivered,
    /// 429: the whole sink waits this long before its next request.
    Throttled { retry_after: Duration },
    /// The sink is unreachable or says it is unavailable (network error, timeout, 502/503/504,
    /// a token it cannot get): the whole sink backs off; the record's attempts do not count.
    Unavailable { error: String },
    /// The CRM's sign-in refused trackgate's own credentials (`invalid_client`, a secret
    /// expired or wrong): nothing can be delivered until an operator fixes them. Held like an
    /// outage (attempts not counted) and reported as not ready.
    Unauthorized { error: String },
    /// A failure of this record that may pass (500, 408): retried with backoff, counted.
    Failed { status: Option<u16>, error: String },
    /// Permanently refused (other 4xx): dead letter, response kept.
    Rejected {
        status: u16,
        response: String,
        error: String,
    },
}

impl Outcome {
    /// The outcome of an HTTP answer that is not a success.
    pub fn from_status(status: u16, retry_after: Option<&str>, response: String) -> Outcome {
        match status {
            429 => Outcome::Throttled {
                retry_after: parse_retry_after(retry_after).unwrap_or(Duration::from_secs(5)),
            },
            401 | 502..=504 => Outcome::Unavailable {
                error: format!("HTTP {status}"),
            },
            408 | 500..=599 => Outcome::Failed {
                status: Some(status),
                error: format!("HTTP {status}: {}", first_line(&response)),
            },
            _ => Outcome::Rejected {
                status,
                error: format!("HTTP {status}: {}", first_line(&response)),
                response,
            },
        }
    }

    /// What went wrong, for a log line (the label when there is no more to say).
    pub fn text(&self) -> String {
        match self {
            Outcome::Unavailable { error }
            | Outcome::Unauthorized { error }
            | Outcome::Failed { error, .. }
            | Outcome::Rejected { error, .. } => error.clone(),
            other => other.label().to_owned(),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Unavailable { .. } => "unavailable",
            Outcome::Unauthorized { .. } => "unauthorized",
            Outcome::Failed { .. } => "failed",
            Outcome::Rejected { .. } => "rejected",
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// `Retry-After` in seconds, fractions allowed (Dataverse sends whole seconds; others do not),
/// or an HTTP date. Capped at an hour.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let value = value?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(3600.0)));
    }
    let at = httpdate_parse(value)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(3600)),
    )
}

/// An HTTP date in any of the three forms RFC 9110 §5.6.7 has recipients accept (IMF-fixdate,
/// RFC 850, asctime).
fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    httpdate::parse_http_date(value).ok()
}

/// The outcome of an answer that is not a success: its status, `Retry-After` and body.
pub async fn failure(response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Outcome::from_status(status, retry_after.as_deref(), kept_body(response).await)
}

/// A probe's answer: the sink is back unless it still cannot be reached or says it is
/// unavailable (any other answer, even a refusal, comes from a live service).
pub fn probe_result(response: Result<reqwest::Response, reqwest::Error>) -> Result<(), Outcome> {
    match response {
        Ok(r) => match r.status().as_u16() {
            status @ (401 | 500..=599) => Err(Outcome::Unavailable {
                error: format!("probe answered HTTP {status}"),
            }),
            _ => Ok(()),
        },
        Err(e) => Err(transport_error(&e)),
    }
}

/// Reads an error body, cut to what a dead letter keeps (the rest is never read).
pub async fn kept_body(response: reqwest::Response) -> String {
    let (bytes, _) = crate::common::read::read_capped(response, MAX_KEPT_RESPONSE).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Classifies a transport error.
pub fn transport_error(error: &reqwest::Error) -> Outcome {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    Outcome::Unavailable {
        error: format!("{kind}: {}", without_url(error)),
    }
}

/// Error text without the URL (which may carry ids).
fn without_url(error: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut text = String::new();
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    if text.is_empty() {
        "request failed".into()
    } else {
        text
    }
}

/// The configured sink.
#[derive(Debug)]
pub enum Sink {
    Dataverse(Box<DataverseSink>),
    Webhook(WebhookSink),
    Journal(std::sync::Arc<Journal>),
}

impl Sink {
    /// Delivers documents; one outcome per document, in order. The Dataverse sink sends
    /// several in one `$batch` when configured.
    pub async fn deliver(
        &self,
        emails: &mut [TrackedEmail],
        progress: &Progress<'_>,
    ) -> Vec<Outcome> {
        match self {
            Sink::Dataverse(d) => d.deliver(emails, progress).await,
            Sink::Webhook(w) => w.deliver(emails).await,
            Sink::Journal(j) => {
                // redb commits block on fsync: off the async workers.
                let (journal, batch) = (j.clone(), emails.to_vec());
                tokio::task::spawn_blocking(move || journal.deliver(&batch))
                    .await
                    .unwrap_or_else(|_| {
                        vec![
                            Outcome::Unavailable {
                                error: "journal writer panicked".into()
                            };
                            emails.len()
                        ]
                    })
            }
        }
    }

    /// One cheap request to learn whether the sink is back after an outage (Dataverse:
    /// `WhoAmI`; a webhook: `HEAD` of its URL; the local journal is always there): `Ok`, or
    /// the [`Outcome`] that says why not (`Unavailable` or `Unauthorized`).
    pub async fn probe(&self) -> Result<(), Outcome> {
        match self {
            Sink::Dataverse(d) => d.probe().await,
            Sink::Webhook(w) => w.probe().await,
            Sink::Journal(_) => Ok(()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Sink::Dataverse(_) => "dataverse",
            Sink::Webhook(_) => "webhook",
            Sink::Journal(_) => "journal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_fractions_and_dates() {
        assert_eq!(
            parse_retry_after(Some("1.5")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after(Some("7")), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(Some("-1")), None);
        // A date in the past: now.
        assert_eq!(
            parse_retry_after(Some("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(Duration::ZERO)
        );
        // A date ahead, in each form HTTP allows: that long (dates carry whole seconds).
        let ahead = std::time::SystemTime::now() + Duration::from_secs(90);
        let imf = httpdate::fmt_http_date(ahead);
        let (weekday, rest) = imf.split_once(", ").unwrap();
        let [day, month, year, time, _gmt] = rest.split(' ').collect::<Vec<_>>()[..] else {
            panic!("{imf}")
        };
        let long_weekday = [
            ("Mon", "Monday"),
            ("Tue", "Tuesday"),
            ("Wed", "Wednesday"),
            ("Thu", "Thursday"),
            ("Fri", "Friday"),
            ("Sat", "Saturday"),
            ("Sun", "Sunday"),
        ]
        .iter()
        .find(|(short, _)| *short == weekday)
        .unwrap()
        .1;
        let rfc850 = format!("{long_weekday}, {day}-{month}-{} {time} GMT", &year[2..]);
        let asctime = format!(
            "{weekday} {month} {:>2} {time} {year}",
            day.trim_start_matches('0')
        );
        for form in [imf, rfc850, asctime] {
            let wait = parse_retry_after(Some(&form)).unwrap_or_else(|| panic!("{form}"));
            assert!(
                wait > Duration::from_secs(88) && wait <= Duration::from_secs(90),
                "{form}: {wait:?}"
            );
        }
        // Far ahead: capped at an hour.
        let later = httpdate::fmt_http_date(ahead + Duration::from_secs(86_400));
        assert_eq!(
            parse_retry_after(Some(&later)),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_retry_after(Some("2026-12-05T10:00:00Z")),
            None,
            "not an HTTP date"
        );
        assert_eq!(parse_retry_after(Some("soon")), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            Outcome::from_status(429, Some("2"), String::new()),
            Outcome::Throttled { retry_after } if retry_after == Duration::from_secs(2)
        ));
        assert!(matches!(
            Outcome::from_status(503, None, String::new()),
            Outcome::Unavailable { .. }
        ));
        assert!(matches!(
            Outcome::from_status(500, None, "boom".into()),
            Outcome::Failed {
                status: Some(500),
                ..
            }
        ));
        assert!(matches!(
            Outcome::from_status(400, None, "bad bind".into()),
            Outcome::Rejected { status: 400, .. }
        ));
    }
}
