//! Operations that change the mailbox: what the client asked for, counted only where Exchange
//! says the item succeeded.

use std::sync::Arc;

use super::items::{
    any_item, category_update, folder_ref, item_ids, item_of_kind, merge, message_fields,
    saved_folder, sends, set_item_id,
};
use super::{Exchange, Node, Ns};
use crate::inspect::model::{Change, Message, Observation, Transfer};

/// The id of the first item in the `i`th result (Exchange's id for what was created or moved).
fn result_item_id<'t>(x: &Exchange<'t>, i: usize) -> Option<&'t str> {
    x.results
        .get(i)?
        .child(Ns::Messages, "Items")
        .and_then(|items| items.children().next())
        .and_then(|item| item.child(Ns::Types, "ItemId"))
        .and_then(|n| n.attr("Id"))
}

/// The ids in the request's `ItemIds` whose results succeeded, with their positions.
fn succeeded_item_ids(x: &Exchange<'_>, request: Node<'_>) -> Vec<(usize, String)> {
    item_ids(request.child(Ns::Messages, "ItemIds"))
        .into_iter()
        .enumerate()
        .filter(|(i, _)| x.succeeded(*i))
        .collect()
}

pub(super) fn create_item(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    let Some(r) = x.request else { return };
    let requested: Vec<_> = r
        .child(Ns::Messages, "Items")
        .map(|i| i.children().collect())
        .unwrap_or_default();
    let send = sends(r.attr("MessageDisposition"));
    let saved = saved_folder(r);
    for (i, item) in requested.iter().enumerate() {
        if !x.succeeded(i) {
            continue;
        }
        match item.name() {
            "Contact" | "CalendarItem" | "Task" => {
                // The new id is only in the response.
                let new_id = result_item_id(x, i);
                out.extend(
                    any_item(&x.origin, *item, None, false, Change::Created).map(|mut o| {
                        set_item_id(&mut o, new_id);
                        o
                    }),
                );
            }
            name if send => {
                let via = if name == "Message" {
                    "CreateItem"
                } else {
                    name
                };
                let mut message = message_fields(*item, None);
                // A MIME send carries its fields in the MIME headers.
                if let Some(mime) = item
                    .child(Ns::Types, "MimeContent")
                    .and_then(|m| crate::inspect::mime::message_from_base64(&m.text()))
                {
                    // Just made, so not shared: changed in place.
                    merge(Arc::make_mut(&mut message), mime);
                }
                out.push(Observation::MessageSent {
                    origin: x.origin.clone(),
                    via: via.to_owned(),
                    message,
                    draft_item_ids: Vec::new(),
                    reference_item_id: item
                        .child(Ns::Types, "ReferenceItemId")
                        .and_then(|n| n.attr("Id"))
                        .map(str::to_owned),
                    saved_to_folder: saved.clone(),
                });
            }
            _ => {}
        }
    }
}

pub(super) fn send_item(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    let Some(r) = x.request else { return };
    let saved = if r.attr("SaveItemToFolder") == Some("false") {
        None
    } else {
        saved_folder(r).or_else(|| Some("sentitems".to_owned()))
    };
    for (_, id) in succeeded_item_ids(x, r) {
        out.push(Observation::MessageSent {
            origin: x.origin.clone(),
            via: "SendItem".into(),
            message: Message::default().into(),
            draft_item_ids: vec![id],
            reference_item_id: None,
            saved_to_folder: saved.clone(),
        });
    }
}

pub(super) fn update_item(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    let Some(r) = x.request else { return };
    let changes: Vec<_> = r
        .child(Ns::Messages, "ItemChanges")
        .map(|c| c.all("ItemChange").collect())
        .unwrap_or_default();
    let send = sends(r.attr("MessageDisposition"));
    for (i, change) in changes.iter().enumerate() {
        if !x.succeeded(i) {
            continue;
        }
        let Some(id) = change.child(Ns::Types, "ItemId").and_then(|n| n.attr("Id")) else {
            continue;
        };
        // Each SetItemField carries one field inside an item element of its kind; together
        // they describe one update.
        let pieces: Vec<_> = change
            .child(Ns::Types, "Updates")
            .into_iter()
            .flat_map(|u| u.children())
            .flat_map(|u| u.children())
            .filter(|n| matches!(n.name(), "Contact" | "CalendarItem" | "Task"))
            .collect();
        if let Some(mut updated) = pieces.first().and_then(|first| {
            let same_kind: Vec<_> = pieces
                .iter()
                .copied()
                .filter(|p| p.name() == first.name())
                .collect();
            item_of_kind(&x.origin, first.name(), &same_kind, Change::Updated)
        }) {
            set_item_id(&mut updated, Some(id));
            out.push(updated);
        }
        if let Some((mode, categories)) = category_update(*change) {
            out.push(Observation::CategoriesChanged {
                origin: x.origin.clone(),
                item_ids: vec![id.to_owned()],
                mode,
                categories,
            });
        }
        if send {
            out.push(Observation::MessageSent {
                origin: x.origin.clone(),
                via: "UpdateItem".into(),
                message: Message::default().into(),
                draft_item_ids: vec![id.to_owned()],
                reference_item_id: None,
                saved_to_folder: saved_folder(r),
            });
        }
    }
}

pub(super) fn move_or_copy(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    let Some(r) = x.request else { return };
    let (destination_folder_id, destination_folder) =
        folder_ref(r.child(Ns::Messages, "ToFolderId"));
    let mut transfer = Transfer {
        destination_folder_id,
        destination_folder,
        ..Transfer::default()
    };
    for (i, id) in succeeded_item_ids(x, r) {
        transfer.item_ids.push(id);
        let new_id = result_item_id(x, i).map(str::to_owned);
        transfer.new_item_ids.push(new_id);
    }
    if !transfer.item_ids.is_empty() {
        let moved = &*x.origin.operation == "MoveItem";
        out.push(Observation::transfer(x.origin.clone(), moved, transfer));
    }
}

pub(super) fn delete_item(x: &Exchange<'_>, out: &mut Vec<Observation>) {
    let Some(r) = x
        .request
        .filter(|r| r.attr("DeleteType") == Some("MoveToDeletedItems"))
    else {
        return;
    };
    let mut transfer = Transfer {
        destination_folder: Some("deleteditems".into()),
        ..Transfer::default()
    };
    for (_, id) in succeeded_item_ids(x, r) {
        transfer.item_ids.push(id);
        transfer.new_item_ids.push(None);
    }
    if !transfer.item_ids.is_empty() {
        out.push(Observation::MessageMoved {
            origin: x.origin.clone(),
            transfer,
        });
    }
}
