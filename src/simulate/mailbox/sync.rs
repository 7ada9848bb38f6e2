//! Sync states over the change log: what changed in a folder (or the folder tree) since a state,
//! a page at a time. A state is the store sequence number it was taken at, so it stays valid
//! however many other clients sync the same folder.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{Inner, StoreError};

/// One change a sync reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemChange {
    Create(u64),
    Update(u64),
    Delete(String),
}

/// A page of changes and the state to continue from.
#[derive(Debug, Clone)]
pub struct SyncPage<C> {
    pub changes: Vec<C>,
    pub state: String,
    pub last_in_range: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderChange {
    Create(u64),
}

const ITEMS: &str = "items";
const FOLDERS: &str = "folders";

fn encode_state(what: &str, mailbox: u16, folder: u64, seq: u64) -> String {
    STANDARD.encode(format!("TGSYNC:{what}:{mailbox}:{folder}:{seq}"))
}

/// The sequence number a state was taken at; an empty state is the start.
fn decode_state(
    state: Option<&str>,
    what: &str,
    mailbox: u16,
    folder: u64,
) -> Result<u64, StoreError> {
    let Some(state) = state.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(0);
    };
    let text = STANDARD
        .decode(state)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or(StoreError::IdMalformed)?;
    let expected = format!("TGSYNC:{what}:{mailbox}:{folder}:");
    text.strip_prefix(&expected)
        .and_then(|seq| seq.parse().ok())
        .ok_or(StoreError::IdMalformed)
}

impl Inner {
    /// Changes to the items of `folder` since `state`, at most `max` of them: creates for items
    /// that entered after the state, updates for items changed after it, deletes for items that
    /// were there at the state and have left. Several changes of one item count once.
    pub fn sync_items(
        &self,
        mailbox: u16,
        folder: u64,
        state: Option<&str>,
        max: usize,
    ) -> Result<SyncPage<ItemChange>, StoreError> {
        let since = decode_state(state, ITEMS, mailbox, folder)?;
        let m = self.mailbox(mailbox);
        if !m.folders.contains_key(&folder) {
            return Err(StoreError::FolderNotFound);
        }
        // Walk the log in order and cut the page at an entry boundary once `max` distinct items
        // are in it: every item with an entry before the cut is reported now, from its current
        // state, so nothing the next page reports as an update was never created for the client.
        let mut seen: Vec<(u64, Option<&str>, Option<u64>)> = Vec::new();
        let mut reached = since;
        let mut last_in_range = true;
        for entry in m.log.iter().filter(|e| e.seq > since && e.folder == folder) {
            let full = seen.len() >= max;
            match seen.iter_mut().find(|(item, _, _)| *item == entry.item) {
                Some(known) => {
                    if entry.left.is_some() {
                        known.1 = Some(&entry.item_id);
                        known.2 = entry.left;
                    }
                }
                None if full => {
                    last_in_range = false;
                    break;
                }
                None => seen.push((entry.item, Some(&entry.item_id), entry.left)),
            }
            reached = entry.seq;
        }
        if last_in_range {
            reached = reached.max(self.seq);
        }
        let changes = seen
            .into_iter()
            .filter_map(|(item, id, left)| match m.items.get(&item) {
                Some(current) if current.folder == folder && current.entered > since => {
                    Some(ItemChange::Create(item))
                }
                Some(current) if current.folder == folder => Some(ItemChange::Update(item)),
                _ => match (left, id) {
                    (Some(entered), Some(id)) if entered <= since => {
                        Some(ItemChange::Delete(id.to_owned()))
                    }
                    _ => None,
                },
            })
            .collect();
        Ok(SyncPage {
            changes,
            state: encode_state(ITEMS, mailbox, folder, reached),
            last_in_range,
        })
    }

    /// Folders created under `root` since `state` (the hierarchy only grows in this simulator).
    pub fn sync_folders(
        &self,
        mailbox: u16,
        root: u64,
        state: Option<&str>,
    ) -> Result<SyncPage<FolderChange>, StoreError> {
        let since = decode_state(state, FOLDERS, mailbox, root)?;
        let m = self.mailbox(mailbox);
        let changes = m
            .descendants(root)
            .into_iter()
            .filter(|f| f.created > since)
            .map(|f| FolderChange::Create(f.key))
            .collect();
        Ok(SyncPage {
            changes,
            state: encode_state(FOLDERS, mailbox, root, self.seq),
            last_in_range: true,
        })
    }
}
