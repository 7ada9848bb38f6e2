//! Text shared without copying: [`SharedStr`] is a range of a reference-counted string. One
//! allocation holds all the text of a message, and each of its fields (ids, subject, names,
//! addresses, timestamps) is a range of it, so a message costs one allocation for its text
//! instead of one per field, and dropping it frees one block instead of a dozen (a third of
//! what inspecting a list page cost, bench/RESULTS.md, issue 16). What a later stage keeps of
//! a field (a decision's party, a remembered item) shares the block.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, Range};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable string that is a range of a shared block. Compares, hashes, orders and
/// serialises as the text it holds.
#[derive(Clone)]
pub struct SharedStr {
    block: Arc<str>,
    start: u32,
    end: u32,
}

impl SharedStr {
    /// The text of `range` in `block`. `None` when the range is not a char-boundary range of
    /// it or the block is 4 GiB or more.
    pub fn slice(block: &Arc<str>, range: Range<usize>) -> Option<SharedStr> {
        block.get(range.clone())?;
        Some(SharedStr {
            block: block.clone(),
            start: u32::try_from(range.start).ok()?,
            end: u32::try_from(range.end).ok()?,
        })
    }

    /// Whether the two are pieces of one block (one allocation).
    pub fn shares_block_with(&self, other: &SharedStr) -> bool {
        Arc::ptr_eq(&self.block, &other.block)
    }

    /// The length of the whole block this is a piece of: what keeping it keeps alive.
    pub fn block_len(&self) -> usize {
        self.block.len()
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        let (start, end) = (self.start as usize, self.end as usize);
        // A block of its own is its text: no range to check.
        if start == 0 && end == self.block.len() {
            return &self.block;
        }
        // `slice` checked the range once; `get` keeps this free of panics anyway.
        self.block.get(start..end).unwrap_or_default()
    }

    /// A block of its own holding `block` whole.
    fn whole(block: Arc<str>) -> SharedStr {
        match u32::try_from(block.len()) {
            Ok(end) => SharedStr {
                block,
                start: 0,
                end,
            },
            // Text of 4 GiB is refused long before it gets here (bodies are capped far below);
            // should some ever arrive, its first MiB is kept rather than a panic.
            Err(_) => {
                let cut = (0..=1 << 20).rev().find(|&i| block.is_char_boundary(i));
                SharedStr::from(block.get(..cut.unwrap_or(0)).unwrap_or_default())
            }
        }
    }
}

/// Packs the text of one message into one block: each piece is appended and answered with
/// its range; [`Packer::finish`] makes the block the ranges then slice.
#[derive(Debug, Default)]
pub struct Packer {
    text: String,
}

/// A range of the block a [`Packer`] is filling; the default is empty (no text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Piece {
    start: usize,
    end: usize,
}

impl Packer {
    /// Starts a block, keeping the capacity of the last one up to `keep` bytes: a packer
    /// that lives as long as its thread does not hold on to one outsized message's room.
    pub fn clear(&mut self, keep: usize) {
        self.text.clear();
        self.text.shrink_to(keep);
    }

    /// The room the packer holds.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.text.capacity()
    }

    /// Appends `text`, answering its range.
    pub fn push(&mut self, text: &str) -> Piece {
        let start = self.text.len();
        self.text.push_str(text);
        Piece {
            start,
            end: self.text.len(),
        }
    }

    /// Appends what `write` writes, answering its range.
    pub fn push_with(&mut self, write: impl FnOnce(&mut String)) -> Piece {
        let start = self.text.len();
        write(&mut self.text);
        Piece {
            start,
            end: self.text.len(),
        }
    }

    /// Appends what `write` writes, narrowed to the part of it `keep` answers (trimmed text, a
    /// Message-ID without its brackets). When `keep` leaves nothing, nothing stays appended
    /// and the piece is empty (no field); what it cuts off the end takes no room either.
    pub fn push_kept(
        &mut self,
        write: impl FnOnce(&mut String),
        keep: impl FnOnce(&str) -> Option<&str>,
    ) -> Piece {
        let piece = self.push_with(write);
        let kept = match keep(self.text(piece)) {
            Some(inner) if !inner.is_empty() => self.narrow(piece, inner),
            _ => {
                self.undo(piece);
                return Piece::default();
            }
        };
        // Nothing follows the piece yet.
        self.text.truncate(kept.end);
        kept
    }

    /// The text appended since `piece` started (for a caller that narrows it, as a
    /// Message-ID's angle brackets are dropped).
    pub fn text(&self, piece: Piece) -> &str {
        self.text.get(piece.start..piece.end).unwrap_or_default()
    }

    /// A narrower piece: `inner` must be a sub-slice of [`Packer::text`] of `piece`.
    pub fn narrow(&self, piece: Piece, inner: &str) -> Piece {
        let whole = self.text(piece);
        let offset = (inner.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
        if offset > whole.len() || inner.len() > whole.len() - offset {
            return piece;
        }
        Piece {
            start: piece.start + offset,
            end: piece.start + offset + inner.len(),
        }
    }

    /// Drops what was appended since `piece` started (an empty or refused value).
    pub fn undo(&mut self, piece: Piece) {
        self.text.truncate(piece.start);
    }

    /// The block holding everything appended; `None` when nothing was.
    pub fn finish(&self) -> Option<Block> {
        (!self.text.is_empty()).then(|| Block(Arc::from(self.text.as_str())))
    }
}

/// A finished block of text that pieces are cut from.
#[derive(Debug)]
pub struct Block(Arc<str>);

impl Block {
    /// The shared text of `piece`; `None` when the piece is empty.
    pub fn cut(&self, piece: Piece) -> Option<SharedStr> {
        if piece.start == piece.end {
            return None;
        }
        SharedStr::slice(&self.0, piece.start..piece.end)
    }
}

impl Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SharedStr {
    fn from(text: &str) -> SharedStr {
        SharedStr::whole(Arc::from(text))
    }
}

impl From<String> for SharedStr {
    fn from(text: String) -> SharedStr {
        SharedStr::whole(Arc::from(text))
    }
}

impl From<&SharedStr> for String {
    fn from(text: &SharedStr) -> String {
        text.as_str().to_owned()
    }
}

impl From<SharedStr> for String {
    fn from(text: SharedStr) -> String {
        text.as_str().to_owned()
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &SharedStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &SharedStr) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &SharedStr) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for SharedStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SharedStr, D::Error> {
        // `Arc<str>`'s own impl reads a borrowed or owned string alike.
        Arc::<str>::deserialize(deserializer).map(SharedStr::whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_of_one_block_read_back_what_was_packed() {
        let mut packer = Packer::default();
        let subject = packer.push("Quote for 40 seats");
        let empty = packer.push("");
        let id = packer.push(" <abc@example> ");
        let id = packer.narrow(id, packer.text(id).trim().trim_matches(['<', '>']));
        let stamp = packer.push_with(|text| text.push_str("2026-11-02T08:14:03Z"));
        let block = packer.finish().unwrap();
        let subject = block.cut(subject).unwrap();
        assert_eq!(subject, "Quote for 40 seats");
        assert_eq!(block.cut(empty), None);
        assert_eq!(block.cut(id).unwrap(), "abc@example");
        assert_eq!(block.cut(stamp).unwrap().as_str(), "2026-11-02T08:14:03Z");
        // Pieces share the block: one allocation for the message's text.
        assert!(Arc::ptr_eq(&subject.block, &block.0));
        assert!(subject.shares_block_with(&block.cut(stamp).unwrap()));
        assert!(!subject.shares_block_with(&SharedStr::from("Quote for 40 seats")));
    }

    #[test]
    fn an_undone_piece_leaves_nothing_behind() {
        let mut packer = Packer::default();
        let kept = packer.push("kept");
        let dropped = packer.push("dropped");
        packer.undo(dropped);
        assert_eq!(packer.text, "kept");
        assert_eq!(packer.finish().unwrap().cut(kept).unwrap(), "kept");
        packer.clear(4096);
        assert!(packer.finish().is_none(), "an empty packer makes no block");
    }

    #[test]
    fn a_packer_keeps_no_more_room_than_it_is_told() {
        let mut packer = Packer::default();
        packer.push(&"x".repeat(1 << 20));
        packer.clear(4096);
        assert!(packer.capacity() <= 4096, "{}", packer.capacity());
        packer.push("small");
        packer.clear(4096);
        assert!(packer.capacity() >= 5, "a usual message's room is kept");
    }

    #[test]
    fn a_kept_piece_takes_no_room_past_its_end_and_nothing_kept_takes_none() {
        let mut packer = Packer::default();
        let subject = packer.push_kept(|t| t.push_str("  Quote \r\n"), |t| Some(t.trim()));
        assert_eq!(packer.text, "  Quote", "what was cut off the end is gone");
        let blank = packer.push_kept(|t| t.push_str(" \t "), |t| Some(t.trim()));
        assert_eq!(blank, Piece::default());
        let refused = packer.push_kept(|t| t.push_str("<>"), |_| None);
        assert_eq!(refused, Piece::default());
        assert_eq!(packer.text, "  Quote", "nothing kept, nothing appended");
        assert_eq!(packer.finish().unwrap().cut(subject).unwrap(), "Quote");
    }

    #[test]
    fn a_narrowed_piece_outside_its_text_is_left_as_it_was() {
        let mut packer = Packer::default();
        let piece = packer.push("inner");
        assert_eq!(packer.narrow(piece, "elsewhere"), piece);
    }

    #[test]
    fn shared_text_compares_hashes_and_serialises_as_its_text() {
        use std::collections::HashSet;
        let block: Arc<str> = Arc::from("alex@contoso.example|Alex");
        let address = SharedStr::slice(&block, 0..20).unwrap();
        assert_eq!(address, SharedStr::from("alex@contoso.example"));
        assert!(SharedStr::slice(&block, 0..99).is_none());
        // A piece from the middle of a block is its own text, unequal to another piece's.
        let name = SharedStr::slice(&block, 21..25).unwrap();
        assert_eq!(name, "Alex");
        assert_ne!(name, address);
        assert!(name < address, "ordered as text ('A' before 'a')");
        assert_eq!(
            name.cmp(&SharedStr::from("Alex")),
            std::cmp::Ordering::Equal
        );
        let set: HashSet<SharedStr> = [address.clone()].into();
        assert!(set.contains("alex@contoso.example"));
        assert!(!set.contains("Alex") && !set.contains(&name));
        let with_name: HashSet<SharedStr> = [name.clone()].into();
        assert!(
            with_name.contains("Alex"),
            "hashed as its text, not its block"
        );
        assert_eq!(
            serde_json::to_string(&address).unwrap(),
            "\"alex@contoso.example\""
        );
        let read: SharedStr = serde_json::from_str("\"alex@contoso.example\"").unwrap();
        assert_eq!(read, address);
        assert_eq!(
            format!("{address}|{address:?}"),
            "alex@contoso.example|\"alex@contoso.example\""
        );
    }
}
