//! The Autodiscover rewrite — the one body the gateway changes. Autodiscover answers (POX XML,
//! SOAP, JSON v2) and redirect `Location` headers name Exchange's own URLs; a client that learns
//! them connects around the gateway from then on. Every `http(s)://<exchange host>` in them is
//! rewritten to the gateway's external URL. The replacement contains no XML or JSON special
//! characters, so documents stay well-formed; the caller fixes the length.

/// Rewrites URLs on `hosts` (lower-case host names, no port) to `to` (`scheme://authority`,
/// validated to be plain). Returns `None` when nothing matched.
pub fn rewrite(body: &[u8], hosts: &[String], to: &str) -> Option<Vec<u8>> {
    if hosts.is_empty() {
        return None;
    }
    let to_escaped = to.replace('/', "\\/");
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut changed = false;
    let mut i = 0;
    while i < body.len() {
        match scheme_at(&body[i..]) {
            Some((scheme_len, escaped)) => {
                let host_start = i + scheme_len;
                let host_len = body[host_start..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'.' || **b == b'-')
                    .count();
                let host = &body[host_start..host_start + host_len];
                let mut end = host_start + host_len;
                if host_len > 0
                    && hosts
                        .iter()
                        .any(|h| h.as_bytes().eq_ignore_ascii_case(host))
                {
                    // An explicit port belongs to the old authority.
                    if body.get(end) == Some(&b':') {
                        end += 1 + body[end + 1..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .count();
                    }
                    out.extend_from_slice(if escaped {
                        to_escaped.as_bytes()
                    } else {
                        to.as_bytes()
                    });
                    changed = true;
                    i = end;
                } else {
                    out.extend_from_slice(&body[i..host_start]);
                    i = host_start;
                }
            }
            None => {
                out.push(body[i]);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Length of an `http://`/`https://` (or JSON-escaped `https:\/\/`) prefix at the start.
fn scheme_at(s: &[u8]) -> Option<(usize, bool)> {
    for (prefix, escaped) in [
        (&b"https://"[..], false),
        (b"http://", false),
        (b"https:\\/\\/", true),
        (b"http:\\/\\/", true),
    ] {
        if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
            return Some((prefix.len(), escaped));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["mail.contoso.example".into(), "exch01.corp.example".into()]
    }

    #[test]
    fn pox_urls_are_rewritten_and_others_kept() {
        let body = b"<EwsUrl>https://mail.contoso.example/EWS/Exchange.asmx</EwsUrl><OWAUrl>https://MAIL.contoso.example:443/owa/</OWAUrl><Other>https://mail.contoso.example.evil.example/x</Other><X>https://login.example/</X>";
        let out = rewrite(body, &hosts(), "https://gw.example:8443").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<EwsUrl>https://gw.example:8443/EWS/Exchange.asmx</EwsUrl><OWAUrl>https://gw.example:8443/owa/</OWAUrl><Other>https://mail.contoso.example.evil.example/x</Other><X>https://login.example/</X>"
        );
    }

    #[test]
    fn json_with_escaped_slashes() {
        let body = br#"{"Protocol":"EWS","Url":"https:\/\/exch01.corp.example\/EWS\/Exchange.asmx","Alt":"http://exch01.corp.example/x"}"#;
        let out =
            String::from_utf8(rewrite(body, &hosts(), "https://gw.example").unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"Protocol":"EWS","Url":"https:\/\/gw.example\/EWS\/Exchange.asmx","Alt":"https://gw.example/x"}"#
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
    }

    #[test]
    fn nothing_to_do_is_none() {
        assert_eq!(
            rewrite(b"<a>https://elsewhere.example/</a>", &hosts(), "https://gw"),
            None
        );
        assert_eq!(
            rewrite(b"https://mail.contoso.example/", &[], "https://gw"),
            None
        );
    }
}
