//! Finding the copy a send saved in Sent Items. Exchange returns no id for mail sent with
//! `CreateItem` and gives a sent draft a new one, so a send's decision can only be completed
//! from its saved copy: the messages of Sent Items sent around the time the send was seen (with
//! the same subject when the traffic showed it). Delivery picks among them.

use super::{ExchangeClient, ExchangeError, Fetched, impersonated, xml_escape};
use crate::common::text::percent_encode;
use crate::common::time::format_seconds;
use crate::inspect::xml::{Tree, XmlLimits};

/// How far from the moment the send was seen its saved copy's sent time may be.
const WINDOW_SECONDS: i64 = 120;

/// What is known of a send whose saved copy is wanted.
#[derive(Debug, Clone)]
pub struct SentCopyQuery<'a> {
    pub mailbox: &'a str,
    pub subject: Option<&'a str>,
    /// When the send was seen (milliseconds since the epoch).
    pub seen_ms: u64,
    pub html: bool,
}

impl SentCopyQuery<'_> {
    fn window(&self) -> (String, String) {
        let at = (self.seen_ms / 1000) as i64;
        (
            format_seconds(at - WINDOW_SECONDS),
            format_seconds(at + WINDOW_SECONDS),
        )
    }
}

/// The FindItem that lists Sent Items in the window, earliest first.
fn find_request(q: &SentCopyQuery<'_>) -> String {
    let (from, to) = q.window();
    let subject = q
        .subject
        .map(|s| {
            format!(
                r#"<t:IsEqualTo><t:FieldURI FieldURI="item:Subject"/><t:FieldURIOrConstant><t:Constant Value="{}"/></t:FieldURIOrConstant></t:IsEqualTo>"#,
                xml_escape(s)
            )
        })
        .unwrap_or_default();
    let operation = format!(
        concat!(
            r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"#,
            r#"<m:IndexedPageItemView MaxEntriesReturned="10" Offset="0" BasePoint="Beginning"/>"#,
            r#"<m:Restriction><t:And>"#,
            r#"<t:IsGreaterThanOrEqualTo><t:FieldURI FieldURI="item:DateTimeSent"/><t:FieldURIOrConstant><t:Constant Value="{from}"/></t:FieldURIOrConstant></t:IsGreaterThanOrEqualTo>"#,
            r#"<t:IsLessThanOrEqualTo><t:FieldURI FieldURI="item:DateTimeSent"/><t:FieldURIOrConstant><t:Constant Value="{to}"/></t:FieldURIOrConstant></t:IsLessThanOrEqualTo>"#,
            r#"{subject}</t:And></m:Restriction>"#,
            r#"<m:SortOrder><t:FieldOrder Order="Ascending"><t:FieldURI FieldURI="item:DateTimeSent"/></t:FieldOrder></m:SortOrder>"#,
            r#"<m:ParentFolderIds><t:DistinguishedFolderId Id="sentitems"/></m:ParentFolderIds></m:FindItem>"#
        ),
        from = from,
        to = to,
        subject = subject,
    );
    impersonated(q.mailbox, &operation)
}

/// Candidates fetched in full, at most this many.
const MAX_CANDIDATES: usize = 5;

impl ExchangeClient {
    /// The messages that may be the saved copy of a send, earliest first, fetched in full.
    pub async fn sent_copies(&self, q: &SentCopyQuery<'_>) -> Result<Vec<Fetched>, ExchangeError> {
        let mut out = Vec::new();
        match (&self.settings.ews_url, &self.settings.graph_url) {
            (Some(ews), _) => {
                for id in self.sent_copy_ews(ews, q).await? {
                    out.push(self.fetch_ews(ews, q.mailbox, &id, q.html).await?);
                }
            }
            (None, Some(graph)) => {
                for id in self.sent_copy_graph(graph, q).await? {
                    out.push(self.fetch_graph(graph, q.mailbox, &id, q.html).await?);
                }
            }
            (None, None) => return Err(ExchangeError::NotConfigured("the saved copy of a send")),
        }
        Ok(out)
    }

    async fn sent_copy_ews(
        &self,
        url: &str,
        q: &SentCopyQuery<'_>,
    ) -> Result<Vec<String>, ExchangeError> {
        let (status, _, body) = self.post_ews(url, q.mailbox, find_request(q)).await?;
        if status != 200 {
            return Err(ExchangeError::Status(status));
        }
        let tree = Tree::parse(&body, XmlLimits::default())
            .map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
        let mut found = Vec::new();
        tree.root().descendants("ItemId", &mut found);
        Ok(found
            .into_iter()
            .filter_map(|n| n.attr("Id").map(str::to_owned))
            .take(MAX_CANDIDATES)
            .collect())
    }

    async fn sent_copy_graph(
        &self,
        base: &str,
        q: &SentCopyQuery<'_>,
    ) -> Result<Vec<String>, ExchangeError> {
        let (from, to) = q.window();
        let mut filter = format!("sentDateTime ge {from} and sentDateTime le {to}");
        if let Some(subject) = q.subject {
            filter.push_str(&format!(
                " and subject eq '{}'",
                subject.replace('\'', "''")
            ));
        }
        let url = format!(
            "{base}/v1.0/users/{}/mailFolders/sentitems/messages?$select=id&$top=10&$filter={}",
            percent_encode(q.mailbox, b"="),
            percent_encode(&filter, b"")
        );
        let (status, _, body) = self
            .read(self.http.get(url).header("Accept", "application/json"))
            .await?;
        if status != 200 {
            return Err(ExchangeError::Status(status));
        }
        #[derive(serde::Deserialize)]
        struct Listing {
            value: Vec<Row>,
        }
        #[derive(serde::Deserialize)]
        struct Row {
            id: String,
        }
        let listing: Listing =
            serde_json::from_slice(&body).map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
        Ok(listing
            .value
            .into_iter()
            .map(|r| r.id)
            .take(MAX_CANDIDATES)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_is_bounded_by_time_and_subject_and_escaped() {
        let q = SentCopyQuery {
            mailbox: "a&b@contoso.example",
            subject: Some("Q<4>"),
            seen_ms: 1_796_400_000_000,
            html: false,
        };
        let request = find_request(&q);
        assert!(request.contains("a&amp;b@contoso.example"));
        assert!(request.contains(r#"Value="Q&lt;4&gt;""#));
        assert!(request.contains(r#"Value="2026-12-04T"#));
        assert!(
            crate::inspect::xml::operation(request.as_bytes()).is_some_and(|o| o == "FindItem")
        );
        let without = find_request(&SentCopyQuery { subject: None, ..q });
        assert!(!without.contains("item:Subject"));
    }
}
