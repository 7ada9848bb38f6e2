//! Calendar items, contacts and tasks for synchronisation with the CRM, over EWS as the mailbox
//! owner (impersonation): read them with the fields synchronisation knows (`GetItem`), create
//! them carrying the CRM row they stand for in an extended property (`CreateItem`), change
//! fields (`UpdateItem`, `SetItemField`/`DeleteItemField`), delete them (`DeleteItem`), find
//! every item that carries a link (`FindItem` with an `Exists` restriction, for a re-sync that
//! must not duplicate), and send CRM mail through the mailbox (`CreateItem` with
//! `SendAndSaveCopy`), finding the saved copy again by its link.
//!
//! Fields are named by the element EWS writes them in (`Subject`, `JobTitle`), an indexed entry
//! by list and key (`PhoneNumbers/BusinessPhone`), a part of a physical address by list, key
//! and part (`PhysicalAddresses/Business/Street`); attendees as addresses separated by `;`.

use std::collections::BTreeMap;

use super::{ExchangeClient, ExchangeError, SyncFolder, impersonated, item_ids_xml, xml_escape};
use crate::inspect::xml::{Node, Ns, Tree, XmlLimits};

/// The property set of trackgate's own extended properties (a fixed GUID of its own).
pub const PROPERTY_SET: &str = "6c3b1e2a-4f0d-4b8e-9a51-7d2c0e5f3a91";
/// The extended property that links an item to its CRM row: `<entity>:<id>`.
pub const LINK_PROPERTY: &str = "trackgate.crm";

/// Which kind of item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    Appointment,
    Contact,
    Task,
}

impl ItemKind {
    pub const ALL: [ItemKind; 3] = [ItemKind::Appointment, ItemKind::Contact, ItemKind::Task];

    /// The EWS element.
    pub fn element(self) -> &'static str {
        match self {
            ItemKind::Appointment => "CalendarItem",
            ItemKind::Contact => "Contact",
            ItemKind::Task => "Task",
        }
    }

    /// The distinguished folder items of this kind live in.
    pub fn folder(self) -> &'static str {
        match self {
            ItemKind::Appointment => "calendar",
            ItemKind::Contact => "contacts",
            ItemKind::Task => "tasks",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ItemKind::Appointment => "appointment",
            ItemKind::Contact => "contact",
            ItemKind::Task => "task",
        }
    }

    /// The fields synchronisation writes, in the schema's element order.
    fn fields(self) -> &'static [&'static str] {
        match self {
            ItemKind::Appointment => &[
                "Start",
                "End",
                "IsAllDayEvent",
                "LegacyFreeBusyStatus",
                "Location",
                "RequiredAttendees",
                "OptionalAttendees",
            ],
            ItemKind::Contact => &[
                "GivenName",
                "MiddleName",
                "Nickname",
                "CompanyName",
                "EmailAddresses",
                "PhysicalAddresses",
                "PhoneNumbers",
                "AssistantName",
                "BusinessHomePage",
                "Department",
                "JobTitle",
                "SpouseName",
                "Surname",
            ],
            ItemKind::Task => &[
                "CompleteDate",
                "DueDate",
                "PercentComplete",
                "StartDate",
                "Status",
            ],
        }
    }

    /// The FieldURI prefix of the kind's own fields.
    fn prefix(self) -> &'static str {
        match self {
            ItemKind::Appointment => "calendar",
            ItemKind::Contact => "contacts",
            ItemKind::Task => "task",
        }
    }
}

/// Fields every item has that synchronisation writes, in the schema's order (before the
/// extended properties and the kind's own fields).
const ITEM_FIELDS: [&str; 3] = ["Subject", "Body", "Importance"];

/// An item as Exchange holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncItem {
    pub id: String,
    pub change_key: String,
    /// The CRM row it is linked to (`<entity>:<id>`), when it carries the link.
    pub link: Option<String>,
    pub categories: Vec<String>,
    /// RFC 3339.
    pub last_modified: Option<String>,
    /// The organizer's address (calendar items).
    pub organizer: Option<String>,
    pub fields: BTreeMap<String, String>,
}

/// Whether an appointment change sends meeting requests (docs/domain.md §5.1: not for the
/// past, not without attendees, not when nothing attendees see changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invitations {
    None,
    ToAll,
    ToChanged,
}

/// A message sent through the mailbox.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub subject: String,
    pub html_body: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// The link written on the message, by which its saved copy is found again.
    pub link: String,
}

fn link_uri() -> String {
    format!(
        r#"<t:ExtendedFieldURI PropertySetId="{PROPERTY_SET}" PropertyName="{LINK_PROPERTY}" PropertyType="String"/>"#
    )
}

fn link_property(link: &str) -> String {
    format!(
        "<t:ExtendedProperty>{}<t:Value>{}</t:Value></t:ExtendedProperty>",
        link_uri(),
        xml_escape(link)
    )
}

fn mailboxes(addresses: &str, wrap: &str) -> String {
    addresses
        .split(';')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let mailbox = format!(
                "<t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox>",
                xml_escape(a)
            );
            if wrap.is_empty() {
                mailbox
            } else {
                format!("<t:{wrap}>{mailbox}</t:{wrap}>")
            }
        })
        .collect()
}

/// The parts of a physical address entry, in the schema's order.
const ADDRESS_PARTS: [&str; 5] = ["Street", "City", "State", "CountryOrRegion", "PostalCode"];

/// One element of a field whose value is `value` (entries only the ones given).
fn element_xml(list: &str, fields: &BTreeMap<String, Option<String>>) -> String {
    let value = |k: &str| fields.get(k).cloned().flatten();
    match list {
        "Body" => value("Body").map_or_else(String::new, |v| {
            format!(r#"<t:Body BodyType="Text">{}</t:Body>"#, xml_escape(&v))
        }),
        "RequiredAttendees" | "OptionalAttendees" => value(list)
            .filter(|v| !v.trim().is_empty())
            .map_or_else(String::new, |v| {
                format!("<t:{list}>{}</t:{list}>", mailboxes(&v, "Attendee"))
            }),
        "EmailAddresses" | "PhoneNumbers" | "PhysicalAddresses" => {
            // Entry key → (address part's schema rank, element).
            let mut entries: BTreeMap<&str, Vec<(usize, String)>> = BTreeMap::new();
            for (key, v) in fields.iter().filter_map(|(k, v)| Some((k, v.as_ref()?))) {
                let Some(rest) = key.strip_prefix(list).and_then(|r| r.strip_prefix('/')) else {
                    continue;
                };
                let (entry, element) = match rest.split_once('/') {
                    Some((entry, part)) => (
                        entry,
                        (
                            ADDRESS_PARTS.iter().position(|p| *p == part).unwrap_or(9),
                            format!("<t:{part}>{}</t:{part}>", xml_escape(v)),
                        ),
                    ),
                    None => (rest, (0, xml_escape(v))),
                };
                entries.entry(entry).or_default().push(element);
            }
            if entries.is_empty() {
                return String::new();
            }
            let inner: String = entries
                .into_iter()
                .map(|(k, mut parts)| {
                    parts.sort();
                    let v: String = parts.into_iter().map(|(_, e)| e).collect();
                    format!(r#"<t:Entry Key="{}">{v}</t:Entry>"#, xml_escape(k))
                })
                .collect();
            format!("<t:{list}>{inner}</t:{list}>")
        }
        name => value(name).map_or_else(String::new, |v| {
            format!("<t:{name}>{}</t:{name}>", xml_escape(&v))
        }),
    }
}

/// The element of a new item with these fields and its link.
fn new_item_xml(kind: ItemKind, fields: &BTreeMap<String, String>, link: &str) -> String {
    let fields: BTreeMap<String, Option<String>> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let mut out = format!("<t:{}>", kind.element());
    for name in ITEM_FIELDS {
        out.push_str(&element_xml(name, &fields));
    }
    out.push_str(&link_property(link));
    for name in kind.fields() {
        out.push_str(&element_xml(name, &fields));
    }
    out.push_str(&format!("</t:{}>", kind.element()));
    out
}

/// The `FieldURI` (or indexed form) of a field key.
fn field_uri(kind: ItemKind, key: &str) -> String {
    let mut parts = key.split('/');
    let list = parts.next().unwrap_or(key);
    match (list, parts.next(), parts.next()) {
        ("Subject" | "Body" | "Importance", _, _) => {
            format!(r#"<t:FieldURI FieldURI="item:{list}"/>"#)
        }
        ("EmailAddresses", Some(index), None) => {
            format!(r#"<t:IndexedFieldURI FieldURI="contacts:EmailAddress" FieldIndex="{index}"/>"#)
        }
        ("PhoneNumbers", Some(index), None) => {
            format!(r#"<t:IndexedFieldURI FieldURI="contacts:PhoneNumber" FieldIndex="{index}"/>"#)
        }
        ("PhysicalAddresses", Some(index), Some(part)) => format!(
            r#"<t:IndexedFieldURI FieldURI="contacts:PhysicalAddress:{part}" FieldIndex="{index}"/>"#
        ),
        (name, _, _) => format!(r#"<t:FieldURI FieldURI="{}:{name}"/>"#, kind.prefix()),
    }
}

/// The `Updates` of an `UpdateItem`: set or delete each changed field (`None` deletes).
fn updates_xml(kind: ItemKind, changes: &BTreeMap<String, Option<String>>) -> String {
    let mut out = String::new();
    for (key, value) in changes {
        let uri = field_uri(kind, key);
        let list = key.split('/').next().unwrap_or(key);
        match value {
            Some(_) => {
                let single: BTreeMap<String, Option<String>> =
                    [(key.clone(), value.clone())].into_iter().collect();
                let element = element_xml(list, &single);
                if element.is_empty() {
                    out.push_str(&format!("<t:DeleteItemField>{uri}</t:DeleteItemField>"));
                } else {
                    out.push_str(&format!(
                        "<t:SetItemField>{uri}<t:{el}>{element}</t:{el}></t:SetItemField>",
                        el = kind.element()
                    ));
                }
            }
            None => out.push_str(&format!("<t:DeleteItemField>{uri}</t:DeleteItemField>")),
        }
    }
    out
}

/// The `GetItem` of items with every synchronised field and the link.
fn get_request(mailbox: &str, ids: &[&str]) -> String {
    let ids = item_ids_xml(ids);
    impersonated(
        mailbox,
        &format!(
            concat!(
                r#"<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape><t:BodyType>Text</t:BodyType>"#,
                r#"<t:AdditionalProperties><t:FieldURI FieldURI="item:Categories"/><t:FieldURI FieldURI="item:LastModifiedTime"/>{link}</t:AdditionalProperties>"#,
                r#"</m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>"#
            ),
            link = link_uri(),
            ids = ids
        ),
    )
}

/// Reads one item element.
fn read_item(node: Node<'_>) -> SyncItem {
    let mut item = SyncItem::default();
    for child in node.children() {
        let name = child.name();
        match name {
            "ItemId" => {
                item.id = child.attr("Id").unwrap_or_default().to_owned();
                item.change_key = child.attr("ChangeKey").unwrap_or_default().to_owned();
            }
            "Categories" => {
                item.categories = child.children().map(|c| c.text().into_owned()).collect()
            }
            "LastModifiedTime" => item.last_modified = Some(child.text().into_owned()),
            "ExtendedProperty" => {
                let ours = child
                    .child(Ns::Types, "ExtendedFieldURI")
                    .is_some_and(|u| u.attr("PropertyName") == Some(LINK_PROPERTY));
                if ours {
                    item.link = child.child_text("Value");
                }
            }
            "Organizer" => {
                let mut addresses = Vec::new();
                child.descendants("EmailAddress", &mut addresses);
                item.organizer = addresses.first().map(|a| a.text().into_owned());
            }
            "RequiredAttendees" | "OptionalAttendees" => {
                let mut addresses = Vec::new();
                child.descendants("EmailAddress", &mut addresses);
                let list: Vec<String> = addresses.iter().map(|a| a.text().into_owned()).collect();
                item.fields.insert(name.to_owned(), list.join(";"));
            }
            "EmailAddresses" | "PhoneNumbers" | "PhysicalAddresses" => {
                for entry in child.children() {
                    let Some(key) = entry.attr("Key") else {
                        continue;
                    };
                    let parts: Vec<Node<'_>> = entry.children().collect();
                    if parts.is_empty() {
                        item.fields
                            .insert(format!("{name}/{key}"), entry.text().into_owned());
                    }
                    for part in parts {
                        item.fields.insert(
                            format!("{name}/{key}/{}", part.name()),
                            part.text().into_owned(),
                        );
                    }
                }
            }
            _ => {
                let known = ITEM_FIELDS.contains(&name)
                    || ItemKind::ALL.iter().any(|k| k.fields().contains(&name));
                if known {
                    item.fields
                        .insert(name.to_owned(), child.text().into_owned());
                }
            }
        }
    }
    item
}

/// Parses an answer and returns its response messages, or the error the whole answer is.
fn answer(status: u16, body: &[u8]) -> Result<Tree<'_>, ExchangeError> {
    let tree = Tree::parse(body, XmlLimits::default())
        .map_err(|e| ExchangeError::Unreadable(e.to_string()))?;
    let mut codes = Vec::new();
    // In any namespace: a fault's code is in the errors namespace.
    super::sync::by_local_name(tree.root(), "ResponseCode", &mut codes);
    if codes.iter().any(|c| c.text() == "ErrorServerBusy") {
        return Err(ExchangeError::Busy(super::sync::back_off(tree.root())));
    }
    if codes.is_empty() && status != 200 {
        return Err(ExchangeError::Status(status));
    }
    Ok(tree)
}

/// Each response message: its code and the message element.
fn messages<'t>(tree: &'t Tree<'_>) -> Vec<(String, Node<'t>)> {
    let mut out = Vec::new();
    let Ok(body) = tree.body_child() else {
        return out;
    };
    let Some(list) = body.child(Ns::Messages, "ResponseMessages") else {
        return out;
    };
    for message in list.children() {
        let code = message.child_text("ResponseCode").unwrap_or_default();
        out.push((code, message));
    }
    out
}

fn first_item_id(message: Node<'_>) -> Option<(String, String)> {
    let mut ids = Vec::new();
    message.descendants("ItemId", &mut ids);
    let id = ids.first()?;
    Some((
        id.attr("Id")?.to_owned(),
        id.attr("ChangeKey").unwrap_or_default().to_owned(),
    ))
}

fn single_result<'t>(tree: &'t Tree<'_>) -> Result<Node<'t>, ExchangeError> {
    let mut list = messages(tree);
    if list.is_empty() {
        return Err(ExchangeError::Unreadable("no response message".into()));
    }
    let (code, message) = list.remove(0);
    if code != "NoError" {
        return Err(ExchangeError::NotFound(code));
    }
    Ok(message)
}

impl ExchangeClient {
    async fn ews(
        &self,
        mailbox: &str,
        request: String,
    ) -> Result<(u16, bytes::Bytes), ExchangeError> {
        let url = self
            .settings
            .ews_url
            .as_deref()
            .ok_or(ExchangeError::NotConfigured("synchronisation (EWS)"))?;
        let (status, _, body) = self.post_ews(url, mailbox, request).await?;
        Ok((status, body))
    }

    /// Items by id with every synchronised field; ids Exchange no longer has are left out.
    pub async fn get_sync_items(
        &self,
        mailbox: &str,
        ids: &[&str],
    ) -> Result<Vec<SyncItem>, ExchangeError> {
        let mut items = Vec::new();
        for chunk in ids.chunks(50) {
            let (status, body) = self.ews(mailbox, get_request(mailbox, chunk)).await?;
            let tree = answer(status, &body)?;
            for (code, message) in messages(&tree) {
                if code != "NoError" {
                    continue;
                }
                let Some(list) = message.child(Ns::Messages, "Items") else {
                    continue;
                };
                items.extend(list.children().map(read_item));
            }
        }
        Ok(items)
    }

    /// Which of these items Exchange no longer has: only `ErrorItemNotFound` says so (one
    /// response message per id, in order); any other failure is an error, never a deletion.
    pub async fn missing_items(
        &self,
        mailbox: &str,
        ids: &[&str],
    ) -> Result<Vec<String>, ExchangeError> {
        let mut missing = Vec::new();
        for chunk in ids.chunks(100) {
            let items = item_ids_xml(chunk);
            let request = impersonated(
                mailbox,
                &format!(
                    r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds>{items}</m:ItemIds></m:GetItem>"#
                ),
            );
            let (status, body) = self.ews(mailbox, request).await?;
            let tree = answer(status, &body)?;
            let answers = messages(&tree);
            if answers.len() != chunk.len() {
                return Err(ExchangeError::Unreadable(format!(
                    "{} answers for {} items",
                    answers.len(),
                    chunk.len()
                )));
            }
            for ((code, _), id) in answers.iter().zip(chunk) {
                match code.as_str() {
                    "NoError" => {}
                    "ErrorItemNotFound" => missing.push((*id).to_owned()),
                    other => return Err(ExchangeError::NotFound(other.to_owned())),
                }
            }
        }
        Ok(missing)
    }

    /// Creates an item carrying `link`; its id and change key.
    pub async fn create_sync_item(
        &self,
        mailbox: &str,
        kind: ItemKind,
        fields: &BTreeMap<String, String>,
        link: &str,
        invitations: Invitations,
    ) -> Result<(String, String), ExchangeError> {
        let send = match (kind, invitations) {
            (ItemKind::Appointment, Invitations::None) => r#" SendMeetingInvitations="SendToNone""#,
            (ItemKind::Appointment, _) => r#" SendMeetingInvitations="SendToAllAndSaveCopy""#,
            _ => "",
        };
        let request = impersonated(
            mailbox,
            &format!(
                r#"<m:CreateItem{send}><m:SavedItemFolderId><t:DistinguishedFolderId Id="{folder}"/></m:SavedItemFolderId><m:Items>{item}</m:Items></m:CreateItem>"#,
                folder = kind.folder(),
                item = new_item_xml(kind, fields, link),
            ),
        );
        let (status, body) = self.ews(mailbox, request).await?;
        let tree = answer(status, &body)?;
        let message = single_result(&tree)?;
        first_item_id(message).ok_or_else(|| ExchangeError::Unreadable("no item id".into()))
    }

    /// Sets (or, for `None`, deletes) fields of an item; `link` also writes the link. The new
    /// change key.
    pub async fn update_sync_item(
        &self,
        mailbox: &str,
        kind: ItemKind,
        id: &str,
        changes: &BTreeMap<String, Option<String>>,
        link: Option<&str>,
        invitations: Invitations,
    ) -> Result<String, ExchangeError> {
        let send = match (kind, invitations) {
            (ItemKind::Appointment, Invitations::None) => {
                r#" SendMeetingInvitationsOrCancellations="SendToNone""#
            }
            (ItemKind::Appointment, Invitations::ToAll) => {
                r#" SendMeetingInvitationsOrCancellations="SendToAllAndSaveCopy""#
            }
            (ItemKind::Appointment, Invitations::ToChanged) => {
                r#" SendMeetingInvitationsOrCancellations="SendToChangedAndSaveCopy""#
            }
            _ => "",
        };
        let mut updates = updates_xml(kind, changes);
        if let Some(link) = link {
            updates.push_str(&format!(
                "<t:SetItemField>{}<t:{el}>{}</t:{el}></t:SetItemField>",
                link_uri(),
                link_property(link),
                el = kind.element()
            ));
        }
        let request = impersonated(
            mailbox,
            &format!(
                r#"<m:UpdateItem ConflictResolution="AlwaysOverwrite"{send}><m:ItemChanges><t:ItemChange><t:ItemId Id="{id}"/><t:Updates>{updates}</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#,
                id = xml_escape(id),
            ),
        );
        let (status, body) = self.ews(mailbox, request).await?;
        let tree = answer(status, &body)?;
        let message = single_result(&tree)?;
        Ok(first_item_id(message).map(|(_, ck)| ck).unwrap_or_default())
    }

    /// Removes the link from an item (the row stays in the CRM, the item in Exchange).
    pub async fn unlink_sync_item(&self, mailbox: &str, id: &str) -> Result<(), ExchangeError> {
        let request = impersonated(
            mailbox,
            &format!(
                r#"<m:UpdateItem ConflictResolution="AlwaysOverwrite" SendMeetingInvitationsOrCancellations="SendToNone"><m:ItemChanges><t:ItemChange><t:ItemId Id="{id}"/><t:Updates><t:DeleteItemField>{link}</t:DeleteItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#,
                id = xml_escape(id),
                link = link_uri(),
            ),
        );
        let (status, body) = self.ews(mailbox, request).await?;
        let tree = answer(status, &body)?;
        match single_result(&tree) {
            Ok(_) => Ok(()),
            Err(ExchangeError::NotFound(code)) if code == "ErrorItemNotFound" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes an item to Deleted Items, sending no cancellation; gone already counts as done.
    pub async fn delete_sync_item(&self, mailbox: &str, id: &str) -> Result<(), ExchangeError> {
        let request = impersonated(
            mailbox,
            &format!(
                r#"<m:DeleteItem DeleteType="MoveToDeletedItems" SendMeetingCancellations="SendToNone" AffectedTaskOccurrences="AllOccurrences"><m:ItemIds><t:ItemId Id="{}"/></m:ItemIds></m:DeleteItem>"#,
                xml_escape(id)
            ),
        );
        let (status, body) = self.ews(mailbox, request).await?;
        let tree = answer(status, &body)?;
        match single_result(&tree) {
            Ok(_) => Ok(()),
            Err(ExchangeError::NotFound(code)) if code == "ErrorItemNotFound" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every item of a folder carrying a link (id, link), a page of 200 at a time.
    pub async fn linked_items(
        &self,
        mailbox: &str,
        folder: &str,
        restriction_value: Option<&str>,
    ) -> Result<Vec<(String, String, Option<String>)>, ExchangeError> {
        let restriction = match restriction_value {
            None => format!("<t:Exists>{}</t:Exists>", link_uri()),
            Some(v) => format!(
                r#"<t:IsEqualTo>{}<t:FieldURIOrConstant><t:Constant Value="{}"/></t:FieldURIOrConstant></t:IsEqualTo>"#,
                link_uri(),
                xml_escape(v)
            ),
        };
        let mut found = Vec::new();
        let mut offset = 0usize;
        loop {
            let request = impersonated(
                mailbox,
                &format!(
                    r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="message:InternetMessageId"/>{link}</t:AdditionalProperties></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="200" Offset="{offset}" BasePoint="Beginning"/><m:Restriction>{restriction}</m:Restriction><m:ParentFolderIds><t:DistinguishedFolderId Id="{folder}"/></m:ParentFolderIds></m:FindItem>"#,
                    link = link_uri(),
                    folder = xml_escape(folder),
                ),
            );
            let (status, body) = self.ews(mailbox, request).await?;
            let tree = answer(status, &body)?;
            let message = single_result(&tree)?;
            let Some(root) = message.child(Ns::Messages, "RootFolder") else {
                break;
            };
            let mut rows = 0usize;
            for item in root
                .child(Ns::Types, "Items")
                .into_iter()
                .flat_map(|i| i.children())
            {
                let read = read_item(item);
                let message_id = item.child_text("InternetMessageId");
                if let Some(link) = read.link {
                    found.push((read.id, link, message_id));
                }
                rows += 1;
            }
            offset += rows;
            if rows == 0 || root.attr("IncludesLastItemInRange") != Some("false") {
                break;
            }
            if offset > 100_000 {
                return Err(ExchangeError::Unreadable(
                    "more than 100 000 linked items".into(),
                ));
            }
        }
        Ok(found)
    }

    /// The number of items in each distinguished folder (one `GetFolder`): with the change
    /// probe, what tells a deletion (which changes no remaining item) from no change.
    pub async fn folder_counts(
        &self,
        mailbox: &str,
        folders: &[SyncFolder<'_>],
    ) -> Result<Vec<u64>, ExchangeError> {
        let ids: String = folders.iter().map(SyncFolder::xml).collect();
        let request = impersonated(
            mailbox,
            &format!(
                r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="folder:TotalCount"/></t:AdditionalProperties></m:FolderShape><m:FolderIds>{ids}</m:FolderIds></m:GetFolder>"#
            ),
        );
        let (status, body) = self.ews(mailbox, request).await?;
        let tree = answer(status, &body)?;
        let mut counts = Vec::new();
        for (code, message) in messages(&tree) {
            if code != "NoError" {
                return Err(ExchangeError::NotFound(code));
            }
            let mut totals = Vec::new();
            message.descendants("TotalCount", &mut totals);
            counts.push(
                totals
                    .first()
                    .and_then(|t| t.text().trim().parse().ok())
                    .unwrap_or(0),
            );
        }
        Ok(counts)
    }

    /// Sends a message through the mailbox, saving a copy in Sent Items that carries the link.
    pub async fn send_through(&self, mailbox: &str, mail: &Outgoing) -> Result<(), ExchangeError> {
        let recipients = |name: &str, list: &[String]| {
            if list.is_empty() {
                String::new()
            } else {
                format!("<t:{name}>{}</t:{name}>", mailboxes(&list.join(";"), ""))
            }
        };
        let message = format!(
            r#"<t:Message><t:Subject>{subject}</t:Subject><t:Body BodyType="HTML">{body}</t:Body>{link}{to}{cc}{bcc}</t:Message>"#,
            subject = xml_escape(&mail.subject),
            body = xml_escape(&mail.html_body),
            link = link_property(&mail.link),
            to = recipients("ToRecipients", &mail.to),
            cc = recipients("CcRecipients", &mail.cc),
            bcc = recipients("BccRecipients", &mail.bcc),
        );
        let request = impersonated(
            mailbox,
            &format!(
                r#"<m:CreateItem MessageDisposition="SendAndSaveCopy"><m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId><m:Items>{message}</m:Items></m:CreateItem>"#
            ),
        );
        let (status, body) = self.ews(mailbox, request).await?;
        let tree = answer(status, &body)?;
        single_result(&tree).map(|_| ())
    }

    /// The Internet Message-ID of the sent copy carrying `link` (Sent Items, or the Outbox
    /// while it is on its way), if the mail was sent.
    pub async fn sent_with_link(
        &self,
        mailbox: &str,
        link: &str,
    ) -> Result<Option<String>, ExchangeError> {
        for folder in ["sentitems", "outbox"] {
            let found = self.linked_items(mailbox, folder, Some(link)).await?;
            if let Some((_, _, message_id)) = found.into_iter().next() {
                return Ok(Some(message_id.unwrap_or_default()));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_new_contact_writes_its_fields_in_schema_order_with_the_link() {
        let xml = new_item_xml(
            ItemKind::Contact,
            &fields(&[
                ("Surname", "Ng"),
                ("GivenName", "Sam"),
                ("PhoneNumbers/BusinessPhone", "+1 555"),
                ("PhysicalAddresses/Business/City", "Oslo"),
                ("PhysicalAddresses/Business/Street", "Main 1"),
                ("Body", "a < b"),
            ]),
            "contact:1",
        );
        let order = [
            "<t:Body",
            "<t:ExtendedProperty",
            "<t:GivenName",
            "<t:PhysicalAddresses",
            "<t:PhoneNumbers",
            "<t:Surname",
        ];
        let positions: Vec<usize> = order.iter().map(|o| xml.find(o).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
        assert!(xml.contains(
            r#"<t:Entry Key="Business"><t:Street>Main 1</t:Street><t:City>Oslo</t:City></t:Entry>"#
        ));
        assert!(xml.contains("a &lt; b"));
    }

    #[test]
    fn updates_set_indexed_fields_and_delete_emptied_ones() {
        let changes: BTreeMap<String, Option<String>> = [
            ("PhoneNumbers/MobilePhone".to_owned(), Some("1".to_owned())),
            ("JobTitle".to_owned(), None),
            ("Subject".to_owned(), Some("New".to_owned())),
        ]
        .into_iter()
        .collect();
        let xml = updates_xml(ItemKind::Contact, &changes);
        assert!(xml.contains(r#"<t:DeleteItemField><t:FieldURI FieldURI="contacts:JobTitle"/></t:DeleteItemField>"#), "{xml}");
        assert!(xml.contains(r#"<t:IndexedFieldURI FieldURI="contacts:PhoneNumber" FieldIndex="MobilePhone"/><t:Contact><t:PhoneNumbers><t:Entry Key="MobilePhone">1</t:Entry></t:PhoneNumbers></t:Contact>"#), "{xml}");
        assert!(xml.contains(r#"<t:FieldURI FieldURI="item:Subject"/><t:Contact><t:Subject>New</t:Subject></t:Contact>"#));
    }

    #[test]
    fn an_item_reads_back_its_fields_link_and_attendees() {
        let body = format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items><t:CalendarItem><t:ItemId Id="A" ChangeKey="K"/><t:Subject>Review</t:Subject><t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="{PROPERTY_SET}" PropertyName="{LINK_PROPERTY}" PropertyType="String"/><t:Value>appointment:42</t:Value></t:ExtendedProperty><t:Start>2026-12-07T10:00:00Z</t:Start><t:RequiredAttendees><t:Attendee><t:Mailbox><t:EmailAddress>a@x.example</t:EmailAddress></t:Mailbox></t:Attendee><t:Attendee><t:Mailbox><t:EmailAddress>b@x.example</t:EmailAddress></t:Mailbox></t:Attendee></t:RequiredAttendees></t:CalendarItem></m:Items></m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse></s:Body></s:Envelope>"#
        );
        let tree = answer(200, body.as_bytes()).unwrap();
        let (code, message) = messages(&tree).remove(0);
        assert_eq!(code, "NoError");
        let item = read_item(
            message
                .child(Ns::Messages, "Items")
                .unwrap()
                .children()
                .next()
                .unwrap(),
        );
        assert_eq!(item.id, "A");
        assert_eq!(item.link.as_deref(), Some("appointment:42"));
        assert_eq!(item.fields["Subject"], "Review");
        assert_eq!(item.fields["RequiredAttendees"], "a@x.example;b@x.example");
    }
}
