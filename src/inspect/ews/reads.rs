//! Operations that read: what Exchange returned is what the mailbox holds.

use super::items::{all_items, any_item, created_or_updated, events, first_folder, folder_seen};
use super::{Exchange, Node, Ns};
use crate::inspect::model::{Change, Observation};

pub(super) fn get_item(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    for r in x.successes() {
        let items = r.child(Ns::Messages, "Items");
        reserve_for(out, items);
        for item in all_items(items) {
            out.extend(any_item(&x.origin, item, None, false, Change::Seen));
        }
    }
}

/// Room for one observation per item of the `containers`: a page of a hundred messages would
/// otherwise move the observations it has read seven times as the vector grows.
fn reserve_for<'t>(out: &mut Vec<Observation>, containers: impl IntoIterator<Item = Node<'t>>) {
    out.reserve(
        containers
            .into_iter()
            .map(|c| all_items(Some(c)).count())
            .sum(),
    );
}

pub(super) fn get_events(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    for r in x.successes() {
        if let Some(notification) = r.child(Ns::Messages, "Notification") {
            events(&x.origin, notification, out);
        }
    }
}

pub(super) fn find_item(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    let folder = x
        .request
        .and_then(|r| first_folder(r.child(Ns::Messages, "ParentFolderIds")));
    for r in x.successes() {
        let items = r.path(&["RootFolder", "Items"]);
        reserve_for(out, items);
        for item in all_items(items) {
            out.extend(any_item(
                &x.origin,
                item,
                folder.as_ref(),
                false,
                Change::Seen,
            ));
        }
    }
}

pub(super) fn sync_folder_items(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    let folder = x
        .request
        .and_then(|r| first_folder(r.child(Ns::Messages, "SyncFolderId")));
    let initial = x
        .request
        .is_some_and(|r| r.child_text("SyncState").is_none());
    for r in x.successes() {
        // Exchange sends one item per `Create`: room for all of them at once.
        reserve_for(out, created_or_updated(r));
        for change in created_or_updated(r) {
            for item in all_items(Some(change)) {
                out.extend(any_item(
                    &x.origin,
                    item,
                    folder.as_ref(),
                    initial,
                    Change::Seen,
                ));
            }
        }
    }
}

pub(super) fn get_folder(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    let asked: Vec<(Option<String>, Option<String>)> = x
        .request
        .and_then(|r| r.child(Ns::Messages, "FolderIds"))
        .map(|ids| {
            ids.children()
                .map(|n| super::items::folder_ref(Some(n)))
                .collect()
        })
        .unwrap_or_default();
    for (i, r) in x.results.iter().enumerate() {
        if !x.succeeded(i) {
            continue;
        }
        let name = asked.get(i).and_then(|(_, name)| name.clone());
        let folders = r
            .child(Ns::Messages, "Folders")
            .into_iter()
            .flat_map(|f| f.children());
        out.extend(folders.filter_map(|folder| folder_seen(&x.origin, folder, name.clone())));
    }
}

pub(super) fn find_folder(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    for r in x.successes() {
        let folders = r
            .path(&["RootFolder", "Folders"])
            .into_iter()
            .flat_map(|f| f.children());
        out.extend(folders.filter_map(|folder| folder_seen(&x.origin, folder, None)));
    }
}

pub(super) fn sync_folder_hierarchy(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    for r in x.successes() {
        for change in created_or_updated(r) {
            out.extend(
                change
                    .children()
                    .filter_map(|f| folder_seen(&x.origin, f, None)),
            );
        }
    }
}
