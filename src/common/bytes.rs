//! Byte comparisons for the short names parsers match (XML names and prefixes, JSON property
//! names), done in line: a call to `memcmp` costs more than comparing a name.

/// Byte equality, eight bytes at a time.
#[inline]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a8, mut b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let words_equal = a8
        .by_ref()
        .zip(b8.by_ref())
        .all(|(x, y)| word(x) == word(y));
    words_equal
        && a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .all(|(x, y)| x == y)
}

/// The first eight bytes as one word (little-endian, so the first byte is the lowest).
#[inline]
pub fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

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
