//! Ids as the simulated Exchange hands them out. An id is the base64 of a small entry id that
//! names its kind, mailbox and store key, so any id can be resolved without a lookup table and a
//! made-up one is told apart from one that was deleted (`ErrorInvalidIdMalformed` against
//! `ErrorItemNotFound`). Graph ids are the same bytes in URL-safe base64, as Graph's REST ids are.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};

/// The first bytes of every entry id the store makes.
const MAGIC: &[u8; 6] = b"\x00\x00\x00\x00TG";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Folder,
    Item,
}

fn entry_id(kind: IdKind, mailbox: u16, key: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(20);
    raw.extend_from_slice(MAGIC);
    raw.push(match kind {
        IdKind::Folder => 1,
        IdKind::Item => 2,
    });
    raw.push(0);
    raw.extend_from_slice(&mailbox.to_be_bytes());
    raw.extend_from_slice(&key.to_be_bytes());
    raw
}

/// The EWS id of an object.
pub fn encode(kind: IdKind, mailbox: u16, key: u64) -> String {
    STANDARD.encode(entry_id(kind, mailbox, key))
}

fn parse_entry_id(raw: &[u8]) -> Option<(IdKind, u16, u64)> {
    if raw.len() != 18 || &raw[..6] != MAGIC {
        return None;
    }
    let kind = match raw[6] {
        1 => IdKind::Folder,
        2 => IdKind::Item,
        _ => return None,
    };
    let mailbox = u16::from_be_bytes([raw[8], raw[9]]);
    let key = u64::from_be_bytes(raw[10..18].try_into().ok()?);
    Some((kind, mailbox, key))
}

fn raw_bytes(id: &str) -> Option<Vec<u8>> {
    let id = id.trim();
    STANDARD
        .decode(id)
        .or_else(|_| URL_SAFE.decode(id))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id))
        .ok()
}

/// Kind, mailbox and key of an id made by this store (EWS or Graph form).
pub fn decode_id(id: &str) -> Option<(IdKind, u16, u64)> {
    parse_entry_id(&raw_bytes(id)?)
}

/// Whether `id` could be an id at all (base64 characters, long enough): seeded folders keep
/// recorded ids, which need not decode.
pub fn looks_like_id(id: &str) -> bool {
    let id = id.trim();
    id.len() >= 8
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
}

/// The Graph (REST) form of an EWS id.
pub fn rest_id(ews_id: &str) -> String {
    match raw_bytes(ews_id) {
        Some(raw) => URL_SAFE.encode(raw),
        None => ews_id.to_owned(),
    }
}

/// The EWS form of a Graph id (also accepts an EWS id).
pub fn ews_id(rest_id: &str) -> Option<String> {
    raw_bytes(rest_id).map(|raw| STANDARD.encode(raw))
}

/// `HexEntryId` form (ConvertId).
pub fn entry_id_hex(ews_id: &str) -> Option<String> {
    let raw = raw_bytes(ews_id)?;
    Some(raw.iter().map(|b| format!("{b:02X}")).collect())
}

/// From `HexEntryId` back to an EWS id.
pub fn from_entry_id_hex(hex: &str) -> Option<String> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) || hex.is_empty() {
        return None;
    }
    let raw: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    raw.map(|raw| STANDARD.encode(raw))
}

pub fn change_key(version: u32) -> String {
    let mut raw = b"CQAAABYA".to_vec();
    raw.extend_from_slice(&version.to_be_bytes());
    STANDARD.encode(raw)
}

/// A stable conversation id for a topic.
pub fn conversation_id(topic: &str) -> String {
    let hash = xxhash_rust::xxh3::xxh3_128(topic.to_lowercase().as_bytes());
    let mut raw = b"AAQk".to_vec();
    raw.extend_from_slice(&hash.to_be_bytes());
    STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_in_every_form() {
        let id = encode(IdKind::Item, 3, 0xdead_beef);
        assert_eq!(decode_id(&id), Some((IdKind::Item, 3, 0xdead_beef)));
        assert_eq!(
            decode_id(&rest_id(&id)),
            Some((IdKind::Item, 3, 0xdead_beef))
        );
        assert_eq!(ews_id(&rest_id(&id)).as_deref(), Some(id.as_str()));
        let hex = entry_id_hex(&id).unwrap();
        assert_eq!(from_entry_id_hex(&hex).as_deref(), Some(id.as_str()));
    }

    #[test]
    fn made_up_ids_are_malformed_not_missing() {
        assert_eq!(decode_id("DUMMY"), None);
        assert!(!looks_like_id("not base64 at all!"));
        assert!(looks_like_id("AAMkADEzTrackedFolderAAA="));
        assert_eq!(decode_id("AAMkADEzTrackedFolderAAA="), None);
    }
}
