//! NTLM messages for the simulator and test clients: building the three legs of a handshake
//! bound to one connection (parsing lives in `inspect::ntlm`). No cryptography: the simulated
//! AUTHENTICATE proves it saw *this connection's* challenge by echoing it.

use crate::inspect::ntlm::SIGNATURE;
pub use crate::inspect::ntlm::{NtlmMessage, parse, parse_header};

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;

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
