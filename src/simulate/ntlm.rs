//! NTLM for the simulator and test clients: the three legs of a handshake bound to one
//! connection (parsing lives in `inspect::ntlm`), with real NTLMv2 — the server verifies the
//! client's NTProofStr over its own challenge against the configured password, as Exchange (via
//! the domain controller) does, so real clients (pyspnego, @ewsjs/ntlm-client) authenticate and a
//! wrong password fails.

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use md5::Md5;

use crate::inspect::ntlm::SIGNATURE;
pub use crate::inspect::ntlm::{NtlmMessage, parse, parse_header};

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
/// UNICODE, REQUEST_TARGET, NTLM, ALWAYS_SIGN, TARGET_TYPE_DOMAIN, EXTENDED_SESSIONSECURITY,
/// TARGET_INFO, VERSION, 128, KEY_EXCH, 56 — what a Windows server offers.
const CHALLENGE_FLAGS: u32 = 0xE289_8205;
/// The simulated server's names in the challenge's target info.
const NETBIOS_DOMAIN: &str = "CONTOSO";
const NETBIOS_COMPUTER: &str = "EXCH01";
const DNS_DOMAIN: &str = "contoso.example";
const DNS_COMPUTER: &str = "exch01.contoso.example";

fn encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Md5>::new_from_slice(key) else {
        return [0; 16];
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2: the key a user's NTLMv2 responses are made with.
fn ntowf_v2(user: &str, domain: &str, password: &str) -> [u8; 16] {
    let nt_hash = Md4::digest(utf16(password));
    hmac_md5(
        &nt_hash,
        &[&utf16(&format!("{}{domain}", user.to_uppercase()))],
    )
}

/// Whether `nt_response` is a valid NTLMv2 response to `challenge` for this user and password.
pub fn verify_ntlmv2(
    challenge: [u8; 8],
    domain: &str,
    user: &str,
    password: &str,
    nt_response: &[u8],
) -> bool {
    if nt_response.len() < 16 + 28 {
        return false;
    }
    let (proof, blob) = nt_response.split_at(16);
    let expected = hmac_md5(&ntowf_v2(user, domain, password), &[&challenge, blob]);
    // Constant time: no early exit on the first differing byte.
    proof
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// `NTLM <NEGOTIATE>` as a client sends it on leg one.
pub fn negotiate_header() -> String {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&(NEGOTIATE_UNICODE | 0x0008_0200).to_le_bytes());
    m.extend_from_slice(&[0u8; 16]);
    format!("NTLM {}", encode(&m))
}

fn target_info() -> Vec<u8> {
    let mut info = Vec::new();
    let mut pair = |id: u16, value: &[u8]| {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(value.len() as u16).to_le_bytes());
        info.extend_from_slice(value);
    };
    pair(2, &utf16(NETBIOS_DOMAIN));
    pair(1, &utf16(NETBIOS_COMPUTER));
    pair(4, &utf16(DNS_DOMAIN));
    pair(3, &utf16(DNS_COMPUTER));
    pair(7, &filetime_now().to_le_bytes());
    pair(0, &[]);
    info
}

/// Now as a Windows FILETIME (100 ns ticks since 1601).
fn filetime_now() -> u64 {
    (crate::common::time::now_ms() + 11_644_473_600_000) * 10_000
}

/// `NTLM <CHALLENGE>` as the server sends it in `WWW-Authenticate` on leg two, with the target
/// information NTLMv2 clients build their responses over.
pub fn challenge_header(challenge: [u8; 8]) -> String {
    let target_name = utf16(NETBIOS_DOMAIN);
    let info = target_info();
    let header_len = 56u32;
    let mut m = Vec::with_capacity(header_len as usize + target_name.len() + info.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    let name_len = target_name.len() as u16;
    m.extend_from_slice(&name_len.to_le_bytes());
    m.extend_from_slice(&name_len.to_le_bytes());
    m.extend_from_slice(&header_len.to_le_bytes());
    m.extend_from_slice(&CHALLENGE_FLAGS.to_le_bytes());
    m.extend_from_slice(&challenge);
    m.extend_from_slice(&[0u8; 8]);
    let info_len = info.len() as u16;
    m.extend_from_slice(&info_len.to_le_bytes());
    m.extend_from_slice(&info_len.to_le_bytes());
    m.extend_from_slice(&(header_len + u32::from(name_len)).to_le_bytes());
    // Version: Windows 10.0 build 17763, NTLM revision 15.
    m.extend_from_slice(&[10, 0, 0x03, 0x45, 0, 0, 0, 15]);
    m.extend_from_slice(&target_name);
    m.extend_from_slice(&info);
    format!("NTLM {}", encode(&m))
}

/// `NTLM <AUTHENTICATE>` for leg three with a real NTLMv2 response for `password`.
pub fn authenticate_header(challenge: [u8; 8], domain: &str, user: &str, password: &str) -> String {
    let mut blob = vec![1u8, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&filetime_now().to_le_bytes());
    blob.extend_from_slice(&rand::random::<[u8; 8]>());
    blob.extend_from_slice(&[0u8; 4]);
    blob.extend_from_slice(&target_info());
    blob.extend_from_slice(&[0u8; 4]);
    let proof = hmac_md5(&ntowf_v2(user, domain, password), &[&challenge, &blob]);
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&blob);
    let (domain, user) = (utf16(domain), utf16(user));
    let header_len = 64u32;
    let mut payload = Vec::new();
    let mut fields = Vec::new();
    for data in [
        &[0u8; 24][..],
        &nt_response,
        &domain,
        &user,
        &[][..],
        &[][..],
    ] {
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
    m.extend_from_slice(&(NEGOTIATE_UNICODE | 0x0008_0200).to_le_bytes());
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
    fn three_legs_round_trip_and_the_proof_verifies() {
        assert_eq!(
            parse_header(&negotiate_header()),
            Some(NtlmMessage::Negotiate)
        );
        let c = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(challenge_from_header(&challenge_header(c)), Some(c));
        match parse_header(&authenticate_header(c, "CONTOSO", "alice", "pw")) {
            Some(NtlmMessage::Authenticate {
                domain,
                user,
                nt_response,
            }) => {
                assert_eq!((domain.as_str(), user.as_str()), ("CONTOSO", "alice"));
                assert!(verify_ntlmv2(c, &domain, &user, "pw", &nt_response));
                assert!(!verify_ntlmv2(c, &domain, &user, "wrong", &nt_response));
                assert!(!verify_ntlmv2([9; 8], &domain, &user, "pw", &nt_response));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The worked example of [MS-NLMP] 4.2.4: user "User", domain "Domain", password
    /// "Password", server challenge 0123456789abcdef.
    #[test]
    fn ntowf_v2_matches_the_specification() {
        let key = ntowf_v2("User", "Domain", "Password");
        assert_eq!(
            key,
            [
                0x0c, 0x86, 0x8a, 0x40, 0x3b, 0xfd, 0x7a, 0x93, 0xa3, 0x00, 0x1e, 0xf2, 0x2e, 0xf0,
                0x2e, 0x3f
            ]
        );
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert_eq!(parse_header("NTLM !!!"), None);
        assert_eq!(parse(b"NTLMSSP\0\x03\0\0\0"), None);
        assert_eq!(parse(b"short"), None);
        assert!(!verify_ntlmv2([0; 8], "D", "u", "p", &[0; 8]));
    }
}
