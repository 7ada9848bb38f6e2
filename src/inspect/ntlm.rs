//! NTLM message parsing (MS-NLMP §2.2.1): the message type, the server challenge, and the
//! user and domain of an AUTHENTICATE message — which is how a Windows-auth connection's
//! mailbox owner is known. Bounds-checked; garbage yields `None`.

pub const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
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
