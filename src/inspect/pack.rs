//! Building a [`Message`] with one allocation for all of its text. The EWS and Graph readers
//! append each field's text to a packer as they find it (decoded, trimmed, normalised in
//! place) and say which field it was; [`message`] then makes one shared block of it and cuts
//! every field from that block. A message had been a dozen allocations (each id, the subject,
//! every name and address, the timestamps), and as many frees when it was dropped: a third of
//! what reading a list page cost (bench/RESULTS.md, issue 16).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use super::model::{Address, Message};
use crate::common::shared::{Block, Packer, Piece, SharedStr};
use crate::common::text::{normalize_message_id, trim};
use crate::common::time::push_normalized_timestamp;

/// The room a thread's packer keeps between messages: a usual message's text is a few hundred
/// bytes and its addresses a handful; one with a huge header or thousands of recipients must
/// not leave its room behind for the life of the thread.
const KEEP_TEXT: usize = 16 << 10;
const KEEP_ADDRESSES: usize = 256;

/// The folder a request lists, syncs or names in its path, made once and shared by every
/// message of the answer: its id (a message that names no folder of its own is in it) and its
/// distinguished name.
#[derive(Debug, Clone, Default)]
pub(super) struct PageFolder {
    pub id: Option<SharedStr>,
    pub name: Option<SharedStr>,
}

/// Which list of the message an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    From,
    Sender,
    To,
    Cc,
    Bcc,
}

/// The pieces of a message's text, each empty until a reader sets it, and the fields that are
/// not text.
#[derive(Debug, Default)]
pub(super) struct Pieces {
    pub item_id: Piece,
    pub folder_id: Piece,
    pub internet_message_id: Piece,
    pub conversation_id: Piece,
    pub conversation_index: Piece,
    pub in_reply_to: Piece,
    pub references: Piece,
    pub subject: Piece,
    pub received_at: Piece,
    pub sent_at: Piece,
    pub categories: Vec<String>,
    pub item_class: Option<Cow<'static, str>>,
    pub is_draft: Option<bool>,
}

#[derive(Debug)]
struct PackedAddress {
    role: Role,
    name: Piece,
    address: Piece,
    routing_type: Option<Cow<'static, str>>,
}

/// One message's text while a reader finds it, and the fields it has set.
#[derive(Debug, Default)]
pub(super) struct MessagePacker {
    text: Packer,
    pub fields: Pieces,
    addresses: Vec<PackedAddress>,
}

impl MessagePacker {
    /// `text` as it is (the reader has trimmed and decoded it).
    pub fn text(&mut self, text: &str) -> Piece {
        self.text.push(text)
    }

    /// `text` when there is some; an empty piece (no field) when there is none.
    pub fn maybe_text(&mut self, text: Option<&str>) -> Piece {
        text.map_or_else(Piece::default, |text| self.text.push(text))
    }

    /// What `write` appends, trimmed; an empty piece when nothing is left.
    pub fn text_with(&mut self, write: impl FnOnce(&mut String)) -> Piece {
        self.text.push_kept(write, |text| Some(trim(text)))
    }

    /// A Message-ID written by `write`, in its normal form (no angle brackets, trimmed); an
    /// empty piece when nothing is left.
    pub fn message_id_with(&mut self, write: impl FnOnce(&mut String)) -> Piece {
        self.text.push_kept(write, normalize_message_id)
    }

    /// A Message-ID in its normal form; an empty piece when nothing is left.
    pub fn message_id(&mut self, raw: &str) -> Piece {
        normalize_message_id(raw).map_or_else(Piece::default, |id| self.text.push(id))
    }

    /// A timestamp in RFC 3339 UTC.
    pub fn timestamp(&mut self, raw: &str) -> Piece {
        if trim(raw).is_empty() {
            return Piece::default();
        }
        self.text
            .push_with(|out| push_normalized_timestamp(raw, out))
    }

    /// An address of the message, in the order read.
    pub fn address(
        &mut self,
        role: Role,
        name: Piece,
        address: Piece,
        routing_type: Option<Cow<'static, str>>,
    ) {
        self.addresses.push(PackedAddress {
            role,
            name,
            address,
            routing_type,
        });
    }

    fn clear(&mut self) {
        self.text.clear(KEEP_TEXT);
        self.fields = Pieces::default();
        self.addresses.clear();
        self.addresses.shrink_to(KEEP_ADDRESSES);
    }

    /// The message, made in place in its shared allocation: it is a few hundred bytes, and
    /// each move on its way out would copy them.
    fn finish(&mut self, folder: Option<&PageFolder>) -> Arc<Message> {
        let block = self.text.finish();
        let block = block.as_ref();
        let fields = std::mem::take(&mut self.fields);
        let cut = |piece: Piece| block.and_then(|b| b.cut(piece));
        let list = |role: Role| -> Vec<Address> {
            let count = self.addresses.iter().filter(|a| a.role == role).count();
            let mut list = Vec::with_capacity(count);
            list.extend(
                self.addresses
                    .iter()
                    .filter(|a| a.role == role)
                    .map(|a| cut_address(a, block)),
            );
            list
        };
        let single = |role: Role| {
            self.addresses
                .iter()
                .find(|a| a.role == role)
                .map(|a| cut_address(a, block))
        };
        let folder_id = cut(fields.folder_id).or_else(|| folder.and_then(|f| f.id.clone()));
        Arc::new(Message {
            item_id: cut(fields.item_id),
            folder_id,
            folder: folder.and_then(|f| f.name.clone()),
            internet_message_id: cut(fields.internet_message_id),
            conversation_id: cut(fields.conversation_id),
            conversation_index: cut(fields.conversation_index),
            in_reply_to: cut(fields.in_reply_to),
            references: cut(fields.references),
            subject: cut(fields.subject),
            from: single(Role::From),
            sender: single(Role::Sender),
            to: list(Role::To),
            cc: list(Role::Cc),
            bcc: list(Role::Bcc),
            received_at: cut(fields.received_at),
            sent_at: cut(fields.sent_at),
            categories: fields.categories,
            item_class: fields.item_class,
            is_draft: fields.is_draft,
        })
    }
}

fn cut_address(a: &PackedAddress, block: Option<&Block>) -> Address {
    Address {
        name: block.and_then(|b| b.cut(a.name)),
        address: block.and_then(|b| b.cut(a.address)),
        routing_type: a.routing_type.clone(),
    }
}

thread_local! {
    /// One per inspecting thread, reused message after message so that packing allocates
    /// only the block it makes.
    static PACKER: RefCell<MessagePacker> = RefCell::new(MessagePacker::default());
}

/// The message `read` finds: it appends each field's text to the packer and sets the pieces.
/// A message read from a listed folder (`folder`) is in it unless it names a folder itself.
pub(super) fn message(
    folder: Option<&PageFolder>,
    read: impl FnOnce(&mut MessagePacker),
) -> Arc<Message> {
    // Borrowed in place (moving the packer out and back costs two copies of it a message). A
    // message built inside another — no reader does — gets a packer of its own. Inspection
    // never runs while the thread's locals are being torn down, the one time `with` fails.
    PACKER.with(|packer| match packer.try_borrow_mut() {
        Ok(mut packer) => pack(&mut packer, folder, read),
        Err(_) => pack(&mut MessagePacker::default(), folder, read),
    })
}

fn pack(
    packer: &mut MessagePacker,
    folder: Option<&PageFolder>,
    read: impl FnOnce(&mut MessagePacker),
) -> Arc<Message> {
    packer.clear();
    read(packer);
    packer.finish(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_a_packed_message_is_a_piece_of_one_block() {
        let m = message(None, |p| {
            p.fields.item_id = p.text("AAMkItem=");
            p.fields.subject = p.text_with(|out| out.push_str("  Quote for 40 seats \r\n"));
            p.fields.internet_message_id = p.message_id(" <a.1@b> ");
            p.fields.in_reply_to = p.message_id_with(|out| out.push_str("\t<r.2@b>"));
            p.fields.received_at = p.timestamp("2026-11-02T09:13:58+01:00");
            let name = p.text("Pat Buyer");
            let address = p.text("pat@fabrikam.example");
            p.address(Role::From, name, address, Some("SMTP".into()));
            let address = p.text("alex@contoso.example");
            p.address(Role::To, Piece::default(), address, None);
            let address = p.text("sam@contoso.example");
            p.address(Role::To, Piece::default(), address, None);
        });
        assert_eq!(m.subject.as_deref(), Some("Quote for 40 seats"));
        assert_eq!(m.internet_message_id.as_deref(), Some("a.1@b"));
        assert_eq!(m.in_reply_to.as_deref(), Some("r.2@b"));
        assert_eq!(m.received_at.as_deref(), Some("2026-11-02T08:13:58Z"));
        let from = m.from.as_ref().unwrap();
        assert_eq!(from.name.as_deref(), Some("Pat Buyer"));
        assert_eq!(from.routing_type.as_deref(), Some("SMTP"));
        let to: Vec<_> = m.to.iter().map(|a| a.address.as_deref().unwrap()).collect();
        assert_eq!(to, ["alex@contoso.example", "sam@contoso.example"]);
        assert!(m.to[0].name.is_none() && m.cc.is_empty() && m.sender.is_none());
        let item = m.item_id.as_ref().unwrap();
        assert_eq!(item.as_str(), "AAMkItem=");
        for piece in [
            &m.subject,
            &m.internet_message_id,
            &m.in_reply_to,
            &m.received_at,
            &from.name,
            &from.address,
            &m.to[0].address,
            &m.to[1].address,
        ] {
            assert!(piece.as_ref().unwrap().shares_block_with(item));
        }
    }

    #[test]
    fn text_that_is_empty_once_normalised_is_no_field() {
        let m = message(None, |p| {
            p.fields.subject = p.text_with(|out| out.push_str(" \t "));
            p.fields.internet_message_id = p.message_id_with(|out| out.push_str(" <> "));
            p.fields.sent_at = p.timestamp("  ");
            p.fields.in_reply_to = p.message_id("<>");
            p.fields.item_id = p.text("");
        });
        assert_eq!(*m, Message::default());
    }

    #[test]
    fn a_message_read_while_another_is_packed_gets_a_packer_of_its_own() {
        let outer = message(None, |p| {
            p.fields.subject = p.text("outer");
            let inner = message(None, |q| q.fields.subject = q.text("inner"));
            assert_eq!(inner.subject.as_deref(), Some("inner"));
            p.fields.item_id = p.text("outer-id");
        });
        assert_eq!(outer.subject.as_deref(), Some("outer"));
        assert_eq!(outer.item_id.as_deref(), Some("outer-id"));
    }

    #[test]
    fn an_outsized_message_leaves_no_outsized_room_behind() {
        let subject = "s".repeat(1 << 20);
        let big = message(None, |p| {
            p.fields.subject = p.text(&subject);
            for _ in 0..10_000 {
                let address = p.text("a@b");
                p.address(Role::To, Piece::default(), address, None);
            }
        });
        assert_eq!(big.to.len(), 10_000);
        message(None, |p| p.fields.subject = p.text("next"));
        PACKER.with_borrow(|p| {
            assert!(p.text.capacity() <= KEEP_TEXT, "{}", p.text.capacity());
            assert!(p.addresses.capacity() <= KEEP_ADDRESSES);
        });
    }

    #[test]
    fn a_message_is_in_its_page_folder_unless_it_names_one_of_its_own() {
        let inbox = PageFolder {
            id: Some("AAMkInbox=".into()),
            name: Some("inbox".into()),
        };
        let unplaced = message(Some(&inbox), |p| p.fields.item_id = p.text("1"));
        assert_eq!(unplaced.folder_id.as_deref(), Some("AAMkInbox="));
        assert!(
            unplaced
                .folder_id
                .as_ref()
                .unwrap()
                .shares_block_with(inbox.id.as_ref().unwrap())
        );
        assert_eq!(unplaced.folder.as_deref(), Some("inbox"));
        let placed = message(Some(&inbox), |p| p.fields.folder_id = p.text("AAMkOwn="));
        assert_eq!(placed.folder_id.as_deref(), Some("AAMkOwn="));
        assert_eq!(placed.folder.as_deref(), Some("inbox"));
        let alone = message(None, |p| p.fields.folder_id = p.maybe_text(None));
        assert_eq!(
            (alone.folder_id.clone(), alone.folder.clone()),
            (None, None)
        );
    }

    #[test]
    fn the_next_message_starts_from_nothing() {
        let first = message(None, |p| {
            p.fields.subject = p.text("first");
            let address = p.text("a@b");
            p.address(Role::Cc, Piece::default(), address, None);
            p.fields.is_draft = Some(true);
        });
        assert_eq!(first.cc.len(), 1);
        let second = message(None, |p| p.fields.item_id = p.text("second"));
        assert_eq!(second.subject, None);
        assert!(second.cc.is_empty());
        assert_eq!(second.is_draft, None);
        assert_eq!(second.item_id.as_deref(), Some("second"));
    }

    /// The one message of an exchange's observations.
    fn only_message(method: &str, path: &str, request: &str, response: &str) -> Message {
        use crate::inspect::{InspectLimits, Observation, capture_from_parts, inspect};
        let capture = capture_from_parts(
            method,
            path,
            &[("x-anchormailbox".into(), "alex@contoso.example".into())],
            bytes::Bytes::from(request.to_owned()),
            200,
            &[],
            bytes::Bytes::from(response.to_owned()),
        );
        let mut found = inspect(&capture, InspectLimits::default())
            .unwrap()
            .observations;
        assert_eq!(found.len(), 1, "{found:?}");
        match found.pop() {
            Some(Observation::MessageSeen { message, .. }) => (*message).clone(),
            other => panic!("not a message: {other:?}"),
        }
    }

    fn assert_one_block(m: &Message) {
        let item = m.item_id.as_ref().unwrap();
        let from = m.from.as_ref().unwrap();
        let fields = [
            &m.subject,
            &m.internet_message_id,
            &m.conversation_id,
            &m.received_at,
            &from.address,
            &m.to[0].name,
        ];
        for field in fields {
            assert!(field.as_ref().unwrap().shares_block_with(item), "{field:?}");
        }
    }

    #[test]
    fn ews_and_graph_readers_pack_a_message_into_one_block() {
        let ews = only_message(
            "POST",
            "/EWS/Exchange.asmx",
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetItem xmlns="http://schemas.microsoft.com/exchange/services/2006/messages"/></s:Body></s:Envelope>"#,
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items><t:Message><t:ItemId Id="AAMkItem=" ChangeKey="CQ"/><t:Subject>Quote &amp; support</t:Subject><t:DateTimeReceived>2026-11-02T08:14:03Z</t:DateTimeReceived><t:ToRecipients><t:Mailbox><t:Name>Alex</t:Name><t:EmailAddress>alex@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients><t:From><t:Mailbox><t:EmailAddress>pat@fabrikam.example</t:EmailAddress></t:Mailbox></t:From><t:InternetMessageId>&lt;a.1@fabrikam.example&gt;</t:InternetMessageId><t:ConversationId Id="AAQkConv="/></t:Message></m:Items></m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse></s:Body></s:Envelope>"#,
        );
        assert_eq!(ews.subject.as_deref(), Some("Quote & support"));
        assert_eq!(
            ews.internet_message_id.as_deref(),
            Some("a.1@fabrikam.example")
        );
        assert_one_block(&ews);
        let graph = only_message(
            "GET",
            "/v1.0/me/mailFolders/inbox/messages",
            "",
            r#"{"value":[{"id":"AAMkItem=","subject":"Quote","internetMessageId":"<a.1@fabrikam.example>","conversationId":"AAQkConv=","receivedDateTime":"2026-11-02T08:14:03Z","from":{"emailAddress":{"address":"pat@fabrikam.example"}},"toRecipients":[{"emailAddress":{"name":"Alex","address":"alex@contoso.example"}}]}]}"#,
        );
        assert_eq!(graph.folder.as_deref(), Some("inbox"));
        assert_one_block(&graph);
    }
}
