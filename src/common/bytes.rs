//! Byte comparisons and searches for the short names and texts parsers handle (XML names,
//! prefixes and element text, JSON property names), done in line a word at a time: a call to
//! `memcmp` or memchr's setup costs more than comparing a name or searching a short text.

/// Byte equality, eight bytes at a time; the last word overlaps the one before it rather than
/// leaving a tail to compare byte by byte.
#[inline]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    if n < 8 {
        return padded(a) == padded(b);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(&a[at..]) != word(&b[at..]) {
            return false;
        }
        at += 8;
    }
    word(&a[n - 8..]) == word(&b[n - 8..])
}

/// The first eight bytes as one word (little-endian, so the first byte is the lowest).
#[inline]
pub fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(w)
}

/// The first byte of `bytes` that is one of `set` (which must not hold zero), found eight bytes
/// at a time: a word holds one when its XOR with that byte repeated has a zero byte. For the
/// short values and texts SOAP carries this costs less than memchr's setup or a byte loop;
/// for long ones, memchr is faster.
// Always in line: out of line (its callers pass sets of different sizes) it cost more than
// the search, as a call per element text.
#[inline(always)]
pub fn find_any<const N: usize>(bytes: &[u8], set: [u8; N]) -> Option<usize> {
    // The lowest flagged byte is exact: a borrow only ever flags bytes above a true zero.
    let first = |w: u64| {
        let flags = flags(w, set);
        (flags != 0).then(|| (flags.trailing_zeros() / 8) as usize)
    };
    let mut chunks = bytes.chunks_exact(8);
    for (n, chunk) in chunks.by_ref().enumerate() {
        if let Some(i) = first(word(chunk)) {
            return Some(n * 8 + i);
        }
    }
    let rest = chunks.remainder();
    if rest.is_empty() {
        return None;
    }
    first(padded(rest)).map(|i| bytes.len() - rest.len() + i)
}

/// The first byte of `bytes` in `set`: a word at a time over the first `near` bytes (where
/// markup in SOAP and JSON nearly always is), then `far` — memchr, whose setup only pays on a
/// long stretch — over the rest.
#[inline(always)]
pub fn find_near<const N: usize>(
    bytes: &[u8],
    set: [u8; N],
    near: usize,
    far: impl FnOnce(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let (head, tail) = bytes.split_at(bytes.len().min(near));
    find_any(head, set).or_else(|| {
        if tail.is_empty() {
            return None;
        }
        far(tail).map(|i| head.len() + i)
    })
}

/// The high bit of each byte of `w` below `limit` (at most 128), and perhaps of bytes above the
/// lowest such, never below it; bytes of 0x80 and up are never flagged.
#[inline]
pub fn below(w: u64, limit: u8) -> u64 {
    w.wrapping_sub(LOW * u64::from(limit)) & !w & HIGH
}

/// Whether any byte is an ASCII capital or not ASCII at all: what an address needs lowered,
/// eight bytes at a time. Once no byte has its high bit set, adding 0x3F carries a byte into
/// its high bit from `A` up and adding 0x25 from past `Z` up, with no carry between bytes.
#[inline]
pub fn has_upper_or_non_ascii(bytes: &[u8]) -> bool {
    let upper = |w: u64| {
        w & HIGH != 0 || (w.wrapping_add(LOW * 0x3F) & !w.wrapping_add(LOW * 0x25) & HIGH) != 0
    };
    let mut words = bytes.chunks_exact(8);
    words.by_ref().any(|w| upper(word(w))) || upper(padded(words.remainder()))
}

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is one of `set`, and perhaps of bytes above the
/// lowest such (a borrow's false flags), never below it.
#[inline]
fn flags<const N: usize>(w: u64, set: [u8; N]) -> u64 {
    set.iter().fold(0, |flags, &b| {
        let v = w ^ (LOW * u64::from(b));
        flags | (v.wrapping_sub(LOW) & !v & HIGH)
    })
}

/// Fewer than eight bytes as a word, padded with zeros (which match nothing in a set), read
/// as two loads that may overlap rather than a copy of variable length.
#[inline]
fn padded(rest: &[u8]) -> u64 {
    let n = rest.len();
    let load = |at: usize, width: usize| {
        let mut w = [0u8; 8];
        w[..width].copy_from_slice(&rest[at..at + width]);
        u64::from_le_bytes(w)
    };
    // Overlapping bytes are the same bytes, so OR puts each in its place once.
    match n {
        0 => 0,
        1 => u64::from(rest[0]),
        2..=3 => load(0, 2) | (load(n - 2, 2) << ((n - 2) * 8)),
        _ => load(0, 4) | (load(n - 4, 4) << ((n - 4) * 8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_below_a_limit_are_flagged_from_the_lowest() {
        let w = word(b"aB:c>\x80\xff ");
        // `:` (index 2) is the lowest byte below `A`; `>` and the space are too.
        assert_eq!(below(w, b'A').trailing_zeros() / 8, 2);
        assert_eq!(below(word(b"abcdefgh"), b'A'), 0);
        assert_eq!(below(word(b"\x80\x81\xfe\xffABCD"), b'A'), 0);
    }

    #[test]
    fn upper_or_non_ascii_is_found_in_any_position() {
        let bytewise = |b: &[u8]| b.iter().any(|c| c.is_ascii_uppercase() || !c.is_ascii());
        for len in 0..20 {
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = c;
                    assert_eq!(has_upper_or_non_ascii(&text), bytewise(&text), "{text:?}");
                }
            }
        }
        assert!(!has_upper_or_non_ascii(b"pat.buyer@fabrikam.example"));
        assert!(has_upper_or_non_ascii(b"pat.buyer@fabrikam.examplE"));
    }

    #[test]
    fn short_tails_are_read_as_padded_words() {
        let text = b"abcdefg";
        for n in 0..8 {
            let mut expected = [0u8; 8];
            expected[..n].copy_from_slice(&text[..n]);
            assert_eq!(padded(&text[..n]), u64::from_le_bytes(expected), "{n}");
        }
    }

    #[test]
    fn find_any_finds_the_first_byte_of_the_set_wherever_it_is() {
        let set = [b'&', b'\r', b'<'];
        for len in 0..40 {
            let plain = vec![b'x'; len];
            assert_eq!(find_any(&plain, set), None, "{len}");
            for at in 0..len {
                for &b in &set {
                    let mut text = plain.clone();
                    text[at] = b;
                    // A second one after it, and a zero byte before it, change nothing.
                    if at + 3 < len {
                        text[at + 3] = b'<';
                    }
                    if at > 0 {
                        text[at - 1] = 0;
                    }
                    assert_eq!(find_any(&text, set), Some(at), "{len} {at} {b}");
                    for near in [0, 4, 16, 64] {
                        let far = |t: &[u8]| t.iter().position(|c| set.contains(c));
                        assert_eq!(
                            find_near(&text, set, near, far),
                            Some(at),
                            "{len} {at} {near}"
                        );
                    }
                }
                // Bytes next to the set's are not mistaken for them.
                let mut near = plain.clone();
                near[at] = b'\x01';
                near[len - 1] = b'=';
                assert_eq!(find_any(&near, set), None, "{len} {at}");
            }
        }
    }

    #[test]
    fn equal_only_when_every_byte_and_the_length_match() {
        let text = b"internetMessageIdAndMore";
        let twin = *text;
        for len in 0..text.len() {
            let a = &text[..len];
            assert!(same(a, &twin[..len]), "{len}");
            assert!(!same(a, &text[..len + 1]), "{len}");
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!same(a, &b), "{len} {at}");
            }
        }
    }
}
