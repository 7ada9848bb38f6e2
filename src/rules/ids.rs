//! The CRM ids trackgate derives: name-based (version 5) UUIDs in a namespace of its own, so
//! every gateway, mailbox and protocol that sees a message or a sender derives the same id.
//! The formulas are fixed forever: ids already written to Dataverse depend on them.

use std::cell::RefCell;

use sha1::{Digest as _, Sha1};
use uuid::Uuid;

use super::decision::Direction;

/// Namespace of every id trackgate derives (a random v4 fixed forever).
const NAMESPACE: Uuid = Uuid::from_u128(0x5b1f_0c3e_9a4d_4e27_b8f3_6d2a_1c9e_7f40);

/// The CRM id of a tracked email: one per (organisation, Message-ID, direction), whichever
/// mailbox or protocol it was seen through. Dataverse dedupes the same way (CheckPromoteEmail
/// keys on Message-ID and direction), so one customer mail to two users is one activity.
///
/// This runs for every track, and SHA-1 was a tenth of a decision: the hash of the name's first
/// block is kept per thread (see [`FirstBlocks`]), so most ids hash one block, not two.
pub fn email_id(organization: Uuid, message_id: &str, direction: Direction) -> Uuid {
    let outgoing = direction.is_outgoing();
    let id = message_id.as_bytes();
    match id.split_at_checked(FirstBlocks::lead_len(outgoing)) {
        Some((lead, rest)) => {
            let mut hasher = FirstBlocks::hasher(organization, outgoing, lead);
            hasher.update(rest);
            digest_to_uuid(hasher)
        }
        // A Message-ID of one byte or none: its name does not fill a block.
        None => {
            let mut hasher = Sha1::new();
            email_name_start(&mut hasher, organization, outgoing);
            hasher.update(id);
            digest_to_uuid(hasher)
        }
    }
}

/// The id of an auto-created contact or lead: one per (organisation, table, lower-cased address).
pub fn auto_created_id(organization: Uuid, entity: &str, address: &str) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!("{organization}|{entity}|{}", address.trim().to_lowercase()).as_bytes(),
    )
}

/// Everything an email id's name holds before the Message-ID: the namespace (16 bytes, as
/// version 5 prescribes), the organisation (36), `|email|`, the direction and `|`.
fn email_name_start(hasher: &mut Sha1, organization: Uuid, outgoing: bool) {
    hasher.update(NAMESPACE.as_bytes());
    hasher.update(
        organization
            .hyphenated()
            .encode_lower(&mut [0u8; 36])
            .as_bytes(),
    );
    hasher.update(b"|email|");
    hasher.update(if outgoing { b"out|".as_slice() } else { b"in|" });
}

/// A version 5 UUID from the hash of its namespace and name (as `Uuid::new_v5` makes it).
fn digest_to_uuid(hasher: Sha1) -> Uuid {
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// SHA-1 reads its input in 64-byte blocks, and an email id's name starts with 62 bytes
/// (incoming) or 63 (outgoing) that depend only on the organisation and the direction: the
/// first block is those and the Message-ID's first 2 bytes or first byte. Its hash is kept here, per
/// thread, in a small table keyed by those bytes, so a track hashes only the rest of its name
/// (usually one block where it was two). Message-IDs begin with a few dozen common pairs of
/// characters (a server's name, a hex digit, a year); a miss costs what every id cost before.
struct FirstBlocks {
    slots: Vec<Option<FirstBlock>>,
}

#[derive(Clone)]
struct FirstBlock {
    organization: Uuid,
    outgoing: bool,
    lead: [u8; 2],
    /// The hasher with the whole first block already compressed into its state.
    hasher: Sha1,
}

thread_local! {
    static FIRST_BLOCKS: RefCell<FirstBlocks> = const { RefCell::new(FirstBlocks { slots: Vec::new() }) };
}

impl FirstBlocks {
    /// 64 slots of about 130 bytes: 8 KiB per thread that derives ids.
    const SLOTS: usize = 64;
    const BLOCK: usize = 64;

    /// How many of the Message-ID's bytes the first block holds.
    fn lead_len(outgoing: bool) -> usize {
        let start = NAMESPACE.as_bytes().len() + 36 + b"|email|".len();
        Self::BLOCK
            - start
            - if outgoing {
                b"out|".len()
            } else {
                b"in|".len()
            }
    }

    /// A hasher that has read the name's first block (`lead` is the Message-ID's part of it).
    fn hasher(organization: Uuid, outgoing: bool, lead: &[u8]) -> Sha1 {
        let fresh = || {
            let mut hasher = Sha1::new();
            email_name_start(&mut hasher, organization, outgoing);
            hasher.update(lead);
            hasher
        };
        let mut key = [0u8; 2];
        key[..lead.len()].copy_from_slice(lead);
        // Never a panic on this path: a thread tearing down, or a borrow that cannot happen
        // (nothing here calls back in), hashes the block afresh.
        FIRST_BLOCKS
            .try_with(|memo| match memo.try_borrow_mut() {
                Ok(mut memo) => memo.find_or_insert(organization, outgoing, key, fresh),
                Err(_) => fresh(),
            })
            .unwrap_or_else(|_| fresh())
    }

    fn find_or_insert(
        &mut self,
        organization: Uuid,
        outgoing: bool,
        lead: [u8; 2],
        fresh: impl FnOnce() -> Sha1,
    ) -> Sha1 {
        if self.slots.is_empty() {
            self.slots.resize(Self::SLOTS, None);
        }
        let word = u32::from_le_bytes([lead[0], lead[1], u8::from(outgoing), 0]);
        // Fibonacci hashing: the top six bits of the product spread neighbouring keys.
        let slot = (word.wrapping_mul(0x9E37_79B9) >> 26) as usize % Self::SLOTS;
        if let Some(Some(kept)) = self.slots.get(slot)
            && kept.organization == organization
            && kept.outgoing == outgoing
            && kept.lead == lead
        {
            return kept.hasher.clone();
        }
        let hasher = fresh();
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = Some(FirstBlock {
                organization,
                outgoing,
                lead,
                hasher: hasher.clone(),
            });
        }
        hasher
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reference(organization: Uuid, message_id: &str, direction: Direction) -> Uuid {
        let dir = if direction.is_outgoing() { "out" } else { "in" };
        Uuid::new_v5(
            &NAMESPACE,
            format!("{organization}|email|{dir}|{message_id}").as_bytes(),
        )
    }

    #[test]
    fn the_first_block_ends_inside_the_message_id() {
        assert_eq!(FirstBlocks::lead_len(false), 2);
        assert_eq!(FirstBlocks::lead_len(true), 1);
    }

    #[test]
    fn ids_are_standard_version_5_uuids_of_every_length() {
        let org = Uuid::from_u128(7);
        for direction in [Direction::Incoming, Direction::Outgoing] {
            for len in 0..200 {
                let id: String = (0..len)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                // Twice: the second finds the first block kept.
                for _ in 0..2 {
                    assert_eq!(
                        email_id(org, &id, direction),
                        reference(org, &id, direction),
                        "{len} bytes"
                    );
                }
            }
        }
    }

    #[test]
    fn a_kept_block_serves_only_its_own_organisation_direction_and_lead() {
        let (a, b) = (Uuid::from_u128(7), Uuid::from_u128(8));
        // Every pair of leads shares slots with others; every answer must still be its own.
        let leads = ["CA", "BY", "m1", "m2", "20", "ab", "AB", "zz"];
        for _ in 0..3 {
            for org in [a, b] {
                for direction in [Direction::Incoming, Direction::Outgoing] {
                    for lead in leads {
                        let id = format!("{lead}x9@mail.example");
                        assert_eq!(
                            email_id(org, &id, direction),
                            reference(org, &id, direction)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ids_are_deterministic_and_distinct_by_direction() {
        let org = Uuid::from_u128(7);
        let a = email_id(org, "m@x", Direction::Incoming);
        assert_eq!(a, email_id(org, "m@x", Direction::Incoming));
        assert_ne!(a, email_id(org, "m@x", Direction::Outgoing));
        assert_ne!(a, email_id(Uuid::from_u128(8), "m@x", Direction::Incoming));
        assert_eq!(
            auto_created_id(org, "contact", "Lee@Northwind.example"),
            auto_created_id(org, "contact", "lee@northwind.example")
        );
    }

    proptest! {
        #[test]
        fn any_message_id_gets_the_formulas_id(
            org in any::<u128>(),
            outgoing in any::<bool>(),
            id in "\\PC{0,90}",
        ) {
            let org = Uuid::from_u128(org);
            let direction = if outgoing { Direction::Outgoing } else { Direction::Incoming };
            prop_assert_eq!(email_id(org, &id, direction), reference(org, &id, direction));
        }
    }
}
