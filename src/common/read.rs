//! Bounded reads of a service's answer (the CRM, Exchange, a token endpoint): never more than a
//! cap, whatever the service sends.

/// Reads at most `max` bytes of a service's answer, chunk by chunk (a chunked answer has no
/// length to check first); says whether there was more.
pub async fn read_capped(mut response: reqwest::Response, max: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = max - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return (out, true);
        }
        out.extend_from_slice(&chunk);
    }
    (out, false)
}
