//! The faults the Dataverse simulator can be told to show (`POST /_sim/faults`): a run of
//! 429s, a 429 on every n-th request of one kind, failures with a status, a stall, refused
//! connections, and a black hole that accepts requests and never answers them.

use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};

use super::{Answer, error};

/// Faults to inject, as set by `POST /_sim/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataverseFaults {
    /// Answer the next `count` API requests with 429 and this `Retry-After` (seconds, may be
    /// fractional).
    pub throttle: Option<Throttle>,
    /// Answer every `every`-th API request (of one kind, when `only` says which) with 429:
    /// a throttling storm that goes on until the faults change.
    pub throttle_every: Option<ThrottleEvery>,
    /// Answer the next `count` API requests (of one kind, when `only` says which) with
    /// `status`.
    pub fail: Option<Fail>,
    /// Wait this long before answering each API request.
    pub stall_ms: u64,
    /// Refuse every connection (close at once) and drop open ones.
    pub down: bool,
    /// Accept connections and API requests and never answer them (a CRM behind a dead load
    /// balancer): each request waits until this is lifted and then gets a 503 nobody reads.
    pub black_hole: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throttle {
    pub count: u32,
    pub retry_after: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThrottleEvery {
    pub every: u32,
    pub retry_after: f64,
    /// Only requests of this kind are counted and throttled.
    #[serde(default)]
    pub only: Option<RequestKind>,
    /// Requests of the kind seen so far (the simulator's count).
    #[serde(default)]
    pub seen: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fail {
    pub count: u32,
    pub status: u16,
    #[serde(default)]
    pub only: Option<RequestKind>,
}

/// What an API request does, to aim a fault at one step of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `POST` to a set, or a `PATCH` upsert with `If-None-Match: *`.
    Create,
    /// A `PATCH` of a row that must exist (`If-Match: *`) or may (no condition).
    Update,
    /// `GET`.
    Read,
    /// `POST $batch`.
    Batch,
    /// `DELETE` and anything else.
    Other,
}

impl RequestKind {
    pub fn of(method: &Method, relative: &str, if_none_match: bool) -> RequestKind {
        match *method {
            Method::GET => RequestKind::Read,
            Method::POST if relative.starts_with("/$batch") => RequestKind::Batch,
            Method::POST => RequestKind::Create,
            Method::PATCH if if_none_match => RequestKind::Create,
            Method::PATCH => RequestKind::Update,
            _ => RequestKind::Other,
        }
    }
}

impl DataverseFaults {
    /// A fault to answer a request of `kind` with instead of serving it, and how long to
    /// stall first.
    pub(super) fn take(&mut self, kind: RequestKind) -> (Duration, Option<Answer>) {
        let stall = Duration::from_millis(self.stall_ms);
        if let Some(t) = &mut self.throttle
            && t.count > 0
        {
            t.count -= 1;
            return (stall, Some(throttled(t.retry_after)));
        }
        if let Some(t) = &mut self.throttle_every
            && t.only.is_none_or(|only| only == kind)
        {
            t.seen += 1;
            if t.every > 0 && t.seen % t.every == 0 {
                return (stall, Some(throttled(t.retry_after)));
            }
        }
        if let Some(fail) = &mut self.fail
            && fail.count > 0
            && fail.only.is_none_or(|only| only == kind)
        {
            fail.count -= 1;
            return (
                stall,
                Some(error(
                    fail.status,
                    "0x80040216",
                    "An unexpected error occurred.",
                )),
            );
        }
        (stall, None)
    }
}

/// Dataverse's service protection answer.
fn throttled(retry_after: f64) -> Answer {
    let (status, mut headers, body) = error(
        429,
        "0x80072322",
        "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    );
    headers.push(("Retry-After".into(), format_retry(retry_after)));
    (status, headers, body)
}

fn format_retry(seconds: f64) -> String {
    if seconds.fract() == 0.0 {
        format!("{}", seconds as u64)
    } else {
        format!("{seconds}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_throttles_every_nth_request_of_its_kind_only() {
        let mut faults = DataverseFaults {
            throttle_every: Some(ThrottleEvery {
                every: 3,
                retry_after: 0.5,
                only: Some(RequestKind::Update),
                seen: 0,
            }),
            ..DataverseFaults::default()
        };
        let statuses: Vec<Option<u16>> = [
            RequestKind::Update,
            RequestKind::Create,
            RequestKind::Update,
            RequestKind::Read,
            RequestKind::Update,
            RequestKind::Update,
        ]
        .into_iter()
        .map(|k| faults.take(k).1.map(|a| a.0))
        .collect();
        assert_eq!(statuses, [None, None, None, None, Some(429), None]);
        let answer = {
            faults.take(RequestKind::Update);
            faults.take(RequestKind::Update).1.unwrap()
        };
        assert!(answer.1.contains(&("Retry-After".into(), "0.5".into())));
    }

    #[test]
    fn request_kinds_follow_method_and_condition() {
        assert_eq!(
            RequestKind::of(&Method::PATCH, "/emails(1)", true),
            RequestKind::Create
        );
        assert_eq!(
            RequestKind::of(&Method::PATCH, "/emails(1)", false),
            RequestKind::Update
        );
        assert_eq!(
            RequestKind::of(&Method::POST, "/$batch", false),
            RequestKind::Batch
        );
        assert_eq!(
            RequestKind::of(&Method::POST, "/contacts", false),
            RequestKind::Create
        );
        assert_eq!(
            RequestKind::of(&Method::GET, "/WhoAmI", false),
            RequestKind::Read
        );
    }
}
