//! URL shapes the configuration and the proxy both check.

/// Whether `url` is safe to splice into XML and JSON: `scheme://authority`, nothing else.
pub fn valid_external_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_urls_are_plain_origins() {
        assert!(valid_external_url("https://mail.example.com"));
        assert!(valid_external_url("https://[::1]:8443"));
        assert!(!valid_external_url("https://mail.example.com/path"));
        assert!(!valid_external_url("https://a\"><x"));
        assert!(!valid_external_url("ftp://x"));
    }
}
