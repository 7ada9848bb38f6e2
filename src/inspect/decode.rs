//! Content decoding of captured bodies (gzip, deflate, br), on the copy only, with caps on the
//! decoded size and the expansion ratio so a compression bomb costs nothing but an error.

use std::io::Read;

use bytes::Bytes;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("content coding {0:?} is not supported")]
    Unsupported(String),
    #[error("compressed body is corrupt")]
    Corrupt,
    #[error("decoded body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("decoded body expands more than {0}x")]
    Ratio(usize),
}

/// Limits on decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_output: usize,
    pub max_ratio: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_output: 16 << 20,
            max_ratio: 100,
        }
    }
}

/// Decodes `body` per its `Content-Encoding` (`None` or `identity`: returned as is). A truncated
/// copy decodes as far as it goes.
pub fn decode(
    body: &Bytes,
    encoding: Option<&str>,
    limits: DecodeLimits,
    truncated: bool,
) -> Result<Bytes, DecodeError> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    let reader: Box<dyn Read + '_> = match encoding.as_deref() {
        None | Some("") | Some("identity") => return Ok(body.clone()),
        Some("gzip" | "x-gzip") => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        Some("deflate") => {
            // RFC 9110 deflate is zlib-wrapped; some servers send raw deflate.
            if body.first().is_some_and(|b| b & 0x0f == 8)
                && body.len() >= 2
                && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0
            {
                Box::new(flate2::read::ZlibDecoder::new(&body[..]))
            } else {
                Box::new(flate2::read::DeflateDecoder::new(&body[..]))
            }
        }
        Some("br") => Box::new(brotli_decompressor::Decompressor::new(&body[..], 16 * 1024)),
        Some(other) => return Err(DecodeError::Unsupported(other.chars().take(32).collect())),
    };
    let cap = limits
        .max_output
        .min(body.len().saturating_mul(limits.max_ratio).max(4096));
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(cap));
    let read = reader.take(cap as u64 + 1).read_to_end(&mut out);
    match read {
        Ok(_) => {}
        // A truncated copy ends mid-stream: keep what decoded.
        Err(_) if truncated && !out.is_empty() => {}
        Err(_) => return Err(DecodeError::Corrupt),
    }
    if out.len() > cap {
        return Err(if cap == limits.max_output {
            DecodeError::TooLarge(limits.max_output)
        } else {
            DecodeError::Ratio(limits.max_ratio)
        });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn gzip_and_deflate_round_trip() {
        let text = b"<Envelope>hello</Envelope>".repeat(10);
        assert_eq!(
            decode(&gzip(&text), Some("gzip"), DecodeLimits::default(), false).unwrap(),
            &text[..]
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        let zlib = Bytes::from(z.finish().unwrap());
        assert_eq!(
            decode(&zlib, Some("deflate"), DecodeLimits::default(), false).unwrap(),
            &text[..]
        );
        assert_eq!(
            decode(
                &Bytes::from_static(b"plain"),
                None,
                DecodeLimits::default(),
                false
            )
            .unwrap(),
            "plain"
        );
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let bomb = gzip(&vec![0u8; 50 << 20]);
        let err = decode(&bomb, Some("gzip"), DecodeLimits::default(), false).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLarge(_) | DecodeError::Ratio(_)),
            "{err:?}"
        );
        let small_cap = DecodeLimits {
            max_output: 1 << 30,
            max_ratio: 10,
        };
        assert_eq!(
            decode(&gzip(&vec![b'a'; 1 << 20]), Some("gzip"), small_cap, false).unwrap_err(),
            DecodeError::Ratio(10)
        );
        assert_eq!(
            decode(
                &Bytes::from_static(b"not gzip"),
                Some("gzip"),
                DecodeLimits::default(),
                false
            )
            .unwrap_err(),
            DecodeError::Corrupt
        );
        assert!(matches!(
            decode(
                &Bytes::from_static(b"x"),
                Some("zstd"),
                DecodeLimits::default(),
                false
            ),
            Err(DecodeError::Unsupported(_))
        ));
    }
}
