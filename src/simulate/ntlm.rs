//! NTLM message framing (MS-NLMP §2.2.1) — enough for the simulator to run a three-leg
//! handshake bound to one connection, and for test clients to drive it. No cryptography: the
//! simulated AUTHENTICATE proves it saw *this connection's* challenge by echoing it.

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const NEGOTIATE_UNICODE: u32 = 0x0000_0001;

/// A parsed NTLM message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtlmMessage {
    Negotiate,
    Challenge {
        challenge: [u8; 8],
    },
    Authenticate {
        domain: String,
        user: String,
        nt_response: Vec<u8>,
    },
}

/// Parses the base64 token of an `Authorization: NTLM <token>` header value.
pub fn parse_header(value: &str) -> Option<NtlmMessage> {
    let token = value
        .strip_prefix("NTLM ")
        .or_else(|| value.strip_prefix("Negotiate "))?;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    parse(&bytes)
}

pub fn parse(bytes: &[u8]) -> Option<NtlmMessage> {
    if bytes.len() < 12 || &bytes[..8] != SIGNATURE {
        return None;
    }
    match u32_at(bytes, 8)? {
        1 => Some(NtlmMessage::Negotiate),
        2 => {
            let challenge: [u8; 8] = bytes.get(24..32)?.try_into().ok()?;
            Some(NtlmMessage::Challenge { challenge })
        }
        3 => {
            let flags = u32_at(bytes, 60).unwrap_or(NEGOTIATE_UNICODE);
            let nt_response = field(bytes, 20)?.to_vec();
            let domain = text(field(bytes, 28)?, flags);
            let user = text(field(bytes, 36)?, flags);
            Some(NtlmMessage::Authenticate {
                domain,
                user,
                nt_response,
            })
        }
        _ => None,
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn field(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let offset = u32_at(bytes, at + 4)? as usize;
    bytes.get(offset..offset.checked_add(len)?)
}

fn text(raw: &[u8], flags: u32) -> String {
    if flags & NEGOTIATE_UNICODE != 0 {
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    }
}

fn encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `NTLM <NEGOTIATE>` as a client sends it on leg one.
pub fn negotiate_header() -> String {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&(NEGOTIATE_UNICODE | 0x0000_0200).to_le_bytes());
    m.extend_from_slice(&[0u8; 16]);
    format!("NTLM {}", encode(&m))
}

/// `NTLM <CHALLENGE>` as the server sends it in `WWW-Authenticate` on leg two.
pub fn challenge_header(challenge: [u8; 8]) -> String {
    let mut m = Vec::with_capacity(48);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&[0u8; 8]); // target name: empty
    m.extend_from_slice(&(NEGOTIATE_UNICODE | 0x0000_0200).to_le_bytes());
    m.extend_from_slice(&challenge);
    m.extend_from_slice(&[0u8; 16]); // reserved, target info: empty
    format!("NTLM {}", encode(&m))
}

/// `NTLM <AUTHENTICATE>` for leg three; the simulated proof is the challenge itself.
pub fn authenticate_header(challenge: [u8; 8], domain: &str, user: &str) -> String {
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let (domain, user) = (utf16(domain), utf16(user));
    let header_len = 64u32;
    let mut payload = Vec::new();
    let mut fields = Vec::new();
    for data in [&[][..], &challenge[..], &domain, &user, &[][..], &[][..]] {
        let offset = header_len + payload.len() as u32;
        let len = data.len() as u16;
        fields.extend_from_slice(&len.to_le_bytes());
        fields.extend_from_slice(&len.to_le_bytes());
        fields.extend_from_slice(&offset.to_le_bytes());
        payload.extend_from_slice(data);
    }
    let mut m = Vec::with_capacity(header_len as usize + payload.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    m.extend_from_slice(&fields);
    m.extend_from_slice(&NEGOTIATE_UNICODE.to_le_bytes());
    m.extend_from_slice(&payload);
    format!("NTLM {}", encode(&m))
}

/// Reads the challenge out of a `WWW-Authenticate: NTLM <CHALLENGE>` value.
pub fn challenge_from_header(value: &str) -> Option<[u8; 8]> {
    match parse_header(value)? {
        NtlmMessage::Challenge { challenge } => Some(challenge),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_legs_round_trip() {
        assert_eq!(
            parse_header(&negotiate_header()),
            Some(NtlmMessage::Negotiate)
        );
        let c = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(challenge_from_header(&challenge_header(c)), Some(c));
        match parse_header(&authenticate_header(c, "CONTOSO", "alice")) {
            Some(NtlmMessage::Authenticate {
                domain,
                user,
                nt_response,
            }) => {
                assert_eq!((domain.as_str(), user.as_str()), ("CONTOSO", "alice"));
                assert_eq!(nt_response, c);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert_eq!(parse_header("NTLM !!!"), None);
        assert_eq!(parse(b"NTLMSSP\0\x03\0\0\0"), None);
        assert_eq!(parse(b"short"), None);
    }
}
