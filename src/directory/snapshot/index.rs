//! The lookup indexes and the hashing helpers the rules share: keyed 128-bit hashes for the
//! address and name indexes, the index of emails already tracked (with smart matching), and the
//! normalisations both sides must agree on (addresses, Exchange ids, conversation keys,
//! tracking tokens).

use std::collections::HashMap;

use uuid::Uuid;

use super::Org;
use crate::directory::model::Lookup;

pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A 128-bit keyed hash of a string (XXH3 with a per-process random seed). Indexes keep these
/// instead of the strings: 16 bytes per key, and a lookup never compares strings. With 128 bits
/// an accidental collision among millions of keys has a probability around 10⁻²⁶, and the
/// random seed keeps anyone from aiming for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub(super) [u8; 16]);

impl Key {
    /// The key's first eight bytes, for a scan that compares whole keys only where these match.
    pub(super) fn prefix(&self) -> u64 {
        crate::common::bytes::word(&self.0)
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(low));
    }
}

/// The key is already a uniform hash: the map uses 64 bits of it as they are.
#[derive(Default)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<PassThrough>>;

/// Makes keys; one seed per directory build.
#[derive(Debug, Clone, Copy)]
pub struct Keyer(u64);

impl Keyer {
    pub(super) fn random() -> Keyer {
        Keyer(rand::random())
    }

    pub fn key(&self, s: &str) -> Key {
        Key(xxhash_rust::xxh3::xxh3_128_with_seed(s.as_bytes(), self.0).to_le_bytes())
    }
}

/// An email already in the CRM.
#[derive(Debug, Clone)]
pub struct TrackedRow {
    pub activityid: Uuid,
    pub outgoing: bool,
    pub regarding: Option<Lookup>,
    pub owner: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub(super) struct SmartRow {
    pub(super) subject: Box<[u64]>,
    pub(super) addresses: Box<[u64]>,
}

/// The index of emails already in the CRM, by every correlation key.
#[derive(Debug, Default)]
pub struct TrackedIndex {
    pub(super) rows: Vec<TrackedRow>,
    /// [incoming, outgoing] row per Message-ID.
    pub(super) by_message_id: Map<Box<str>, [Option<u32>; 2]>,
    pub(super) by_token: Map<Box<str>, u32>,
    pub(super) by_conversation_index: Map<Box<[u8]>, u32>,
    pub(super) by_conversation_id: Map<Box<str>, u32>,
    pub(super) smart: Vec<Option<SmartRow>>,
    pub(super) smart_by_address: Map<u64, Vec<u32>>,
}

impl TrackedIndex {
    pub fn by_message_id(&self, message_id: &str, outgoing: Option<bool>) -> Option<&TrackedRow> {
        let both = self.by_message_id.get(message_id)?;
        let pick = match outgoing {
            Some(o) => both[usize::from(o)],
            None => both[0].or(both[1]),
        };
        pick.map(|i| &self.rows[i as usize])
    }

    pub fn by_token(&self, token: &str) -> Option<&TrackedRow> {
        self.by_token.get(token).map(|&i| &self.rows[i as usize])
    }

    pub fn by_conversation_index(&self, key: &[u8]) -> Option<&TrackedRow> {
        self.by_conversation_index
            .get(key)
            .map(|&i| &self.rows[i as usize])
    }

    pub fn by_conversation_id(&self, id: &str) -> Option<&TrackedRow> {
        self.by_conversation_id
            .get(id)
            .map(|&i| &self.rows[i as usize])
    }

    /// Smart matching (docs/domain.md §3.3): same subject hashes (within the allowed delta) and at
    /// least the minimum count of common address hashes. Candidates come from shared addresses.
    pub fn smart_match(
        &self,
        org: &Org,
        subject: &[u64],
        addresses: &[u64],
    ) -> Option<&TrackedRow> {
        const MAX_CANDIDATES: usize = 4096;
        let mut seen = 0usize;
        let mut best: Option<u32> = None;
        for a in addresses {
            for &row in self
                .smart_by_address
                .get(a)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                seen += 1;
                if seen > MAX_CANDIDATES {
                    return best.map(|i| &self.rows[i as usize]);
                }
                let Some(Some(s)) = self.smart.get(row as usize) else {
                    continue;
                };
                if best.is_some_and(|b| b <= row) {
                    continue;
                }
                if sorted_difference(&s.subject, subject) <= org.hash_delta_subject_count
                    && s.subject.len().abs_diff(subject.len()) <= org.hash_delta_subject_count
                    && sorted_common(&s.addresses, addresses) >= org.hash_min_address_count
                {
                    best = Some(row);
                }
            }
        }
        best.map(|i| &self.rows[i as usize])
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

fn sorted_common(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn sorted_difference(a: &[u64], b: &[u64]) -> usize {
    a.len() + b.len() - 2 * sorted_common(a, b)
}

/// Subject word hashes for smart matching: leading noise (`RE:`, `FW: RE:` …) removed by the
/// org's regex, case-insensitive words, unique, sorted, at most `hash_max_count`.
pub fn subject_hashes(org: &Org, subject: &str) -> Vec<u64> {
    let stripped = match org.hash_filter.find(subject) {
        Some(m) if m.start() == 0 => &subject[m.end()..],
        _ => subject,
    };
    let mut out: Vec<u64> = stripped
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| fnv1a(w.to_lowercase().as_bytes()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out.truncate(org.hash_max_count);
    out
}

/// Address hashes for smart matching: lower-cased, unique, sorted, at most `hash_max_count`.
pub fn address_hashes<'a>(org: &Org, addresses: impl Iterator<Item = &'a str>) -> Vec<u64> {
    let mut out: Vec<u64> = addresses
        .map(|a| fnv1a(a.trim().to_lowercase().as_bytes()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out.truncate(org.hash_max_count);
    out
}

/// A stable hash (the same in every process), so decisions are deterministic.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The thread key of a conversation index: its first 22 bytes (header plus thread GUID).
pub fn conversation_key(index: &str) -> Vec<u8> {
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(index.trim()) {
        Ok(mut bytes) if !bytes.is_empty() => {
            bytes.truncate(22);
            bytes
        }
        _ => {
            let raw = index.trim().as_bytes();
            raw[..raw.len().min(64)].to_vec()
        }
    }
}

/// Exchange ids in one spelling: Graph (REST) ids are the URL-safe base64 of the EWS id, so
/// `-`/`_` become `+`/`/`. (Unconfirmed for every id format; `translateExchangeIds` is the
/// authority.) Ids are otherwise case-sensitive and kept as they are.
pub fn normalize_exchange_id(id: &str) -> std::borrow::Cow<'_, str> {
    let id = id.trim();
    if id.bytes().any(|b| b == b'-' || b == b'_') {
        std::borrow::Cow::Owned(
            id.chars()
                .map(|c| match c {
                    '-' => '+',
                    '_' => '/',
                    c => c,
                })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(id)
    }
}

/// Lower-cases an address for lookups (ASCII fast path).
pub fn lower(address: &str) -> std::borrow::Cow<'_, str> {
    let a = crate::common::text::trim(address);
    if crate::common::bytes::has_upper_or_non_ascii(a.as_bytes()) {
        std::borrow::Cow::Owned(a.to_lowercase())
    } else {
        std::borrow::Cow::Borrowed(a)
    }
}

/// The tracking-token prefixes of `organization.trackingprefix` (current and older ones,
/// separated by `;` or `,`), upper-cased.
pub fn token_prefixes(trackingprefix: &str) -> Vec<String> {
    trackingprefix
        .split([';', ','])
        .map(|p| p.trim().to_ascii_uppercase())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Finds a tracking token (`<prefix>:<digits>`) at the end of a subject, allowing the brackets
/// and spaces mail clients add. Returns it upper-cased.
pub fn tracking_token(prefixes: &[String], subject: &str) -> Option<String> {
    let s = subject
        .trim_end()
        .trim_end_matches([']', ')', '>'])
        .trim_end();
    let digits_start = s
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit())
        .last()
        .map(|(i, _)| i)?;
    // Base, user and counter digits together are at most 1 + 10 + 9 … 20 is generous.
    if s.len() - digits_start > 20 {
        return None;
    }
    let before = s[..digits_start].strip_suffix(':')?;
    prefixes.iter().find_map(|p| {
        let start = before.len().checked_sub(p.len())?;
        let candidate = before.get(start..)?;
        let boundary = before[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        (boundary && candidate.eq_ignore_ascii_case(p))
            .then(|| format!("{p}:{}", &s[digits_start..]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes() -> Vec<String> {
        vec!["CRM".into(), "TKT".into()]
    }

    #[test]
    fn tracking_tokens_are_found_at_the_end_of_subjects() {
        let p = prefixes();
        assert_eq!(
            tracking_token(&p, "test 3 today CRM:0001011").as_deref(),
            Some("CRM:0001011")
        );
        assert_eq!(
            tracking_token(&p, "RE: Renewal [crm:0271001]").as_deref(),
            Some("CRM:0271001")
        );
        assert_eq!(tracking_token(&p, "old TKT:12 ").as_deref(), Some("TKT:12"));
        assert_eq!(tracking_token(&p, "CRM:0001 in the middle"), None);
        assert_eq!(tracking_token(&p, "XCRM:0001"), None);
        assert_eq!(tracking_token(&p, "no token 123"), None);
        assert_eq!(tracking_token(&p, ""), None);
    }

    #[test]
    fn graph_ids_normalise_to_ews_ids() {
        assert_eq!(normalize_exchange_id("AAMk-AD_z=="), "AAMk+AD/z==");
        assert_eq!(normalize_exchange_id("AAMk+AD/z=="), "AAMk+AD/z==");
    }

    #[test]
    fn conversation_keys_use_the_thread_header() {
        use base64::Engine as _;
        let mut bytes = vec![1u8; 22];
        let thread = base64::engine::general_purpose::STANDARD.encode(&bytes);
        bytes.extend_from_slice(&[9, 9, 9, 9, 9]);
        let reply = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(conversation_key(&thread), conversation_key(&reply));
    }
}
