//! Items and folders as EWS writes them, by shape: the base shape's fields plus any additional
//! properties the request names, in the order the schema's sequences give (strict clients read
//! by position), each written only when the item has a value, as Exchange does.

use std::fmt::Write as _;

use base64::Engine as _;

use super::xml_escape as esc;
use crate::common::time::format_seconds;
use crate::simulate::mailbox::{Addr, ExtendedProperty, Folder, Item, Kind, Mailbox, PropKey};

/// What the client asked to see.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub base: BaseShape,
    pub html: Option<bool>,
    pub mime: bool,
    /// `FieldURI` values of `AdditionalProperties`.
    pub fields: Vec<String>,
    pub extended: Vec<PropKey>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BaseShape {
    #[default]
    IdOnly,
    Default,
    AllProperties,
}

/// Where an item is written: FindItem and sync rows cannot carry bodies or recipient lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    GetItem,
    FindItem,
}

/// Fields every item kind shares, in `ItemType` order (ExtendedProperty sits between
/// HasAttachments and LastModifiedTime).
const ITEM_FIELDS: &[&str] = &[
    "item:MimeContent",
    "item:ParentFolderId",
    "item:ItemClass",
    "item:Subject",
    "item:Sensitivity",
    "item:Body",
    "item:Attachments",
    "item:DateTimeReceived",
    "item:Size",
    "item:Categories",
    "item:Importance",
    "item:InReplyTo",
    "item:IsSubmitted",
    "item:IsDraft",
    "item:IsFromMe",
    "item:InternetMessageHeaders",
    "item:DateTimeSent",
    "item:DateTimeCreated",
    "item:DisplayCc",
    "item:DisplayTo",
    "item:HasAttachments",
    "item:LastModifiedTime",
    "item:ConversationId",
];

const MESSAGE_FIELDS: &[&str] = &[
    "message:Sender",
    "message:ToRecipients",
    "message:CcRecipients",
    "message:BccRecipients",
    "message:ConversationIndex",
    "message:ConversationTopic",
    "message:From",
    "message:InternetMessageId",
    "message:IsRead",
    "message:References",
];

const CALENDAR_FIELDS: &[&str] = &[
    "calendar:UID",
    "calendar:Start",
    "calendar:End",
    "calendar:IsAllDayEvent",
    "calendar:LegacyFreeBusyStatus",
    "calendar:Location",
    "calendar:IsMeeting",
    "calendar:Organizer",
    "calendar:RequiredAttendees",
    "calendar:OptionalAttendees",
];

const CONTACT_FIELDS: &[&str] = &[
    "contacts:FileAs",
    "contacts:DisplayName",
    "contacts:GivenName",
    "contacts:MiddleName",
    "contacts:Nickname",
    "contacts:CompanyName",
    "contacts:EmailAddresses",
    "contacts:PhysicalAddresses",
    "contacts:PhoneNumbers",
    "contacts:AssistantName",
    "contacts:BusinessHomePage",
    "contacts:Department",
    "contacts:JobTitle",
    "contacts:SpouseName",
    "contacts:Surname",
];

const TASK_FIELDS: &[&str] = &[
    "task:CompleteDate",
    "task:DueDate",
    "task:IsComplete",
    "task:PercentComplete",
    "task:StartDate",
    "task:Status",
];

/// Fields of the Default shape beyond the id (GetItem adds Body and recipients).
const DEFAULT_FIELDS: &[&str] = &[
    "item:ParentFolderId",
    "item:ItemClass",
    "item:Subject",
    "item:Body",
    "item:DateTimeReceived",
    "item:Size",
    "item:Categories",
    "item:Importance",
    "item:IsDraft",
    "item:DateTimeSent",
    "item:DateTimeCreated",
    "item:DisplayTo",
    "item:HasAttachments",
    "item:ConversationId",
    "message:Sender",
    "message:ToRecipients",
    "message:CcRecipients",
    "message:From",
    "message:InternetMessageId",
    "message:IsRead",
    "calendar:Start",
    "calendar:End",
    "calendar:Location",
    "calendar:Organizer",
    "contacts:DisplayName",
    "contacts:GivenName",
    "contacts:CompanyName",
    "contacts:EmailAddresses",
    "contacts:Surname",
    "task:DueDate",
    "task:Status",
];

/// Fields FindItem and SyncFolderItems cannot return (Exchange refuses or omits them).
const NOT_IN_FIND: &[&str] = &[
    "item:Body",
    "item:MimeContent",
    "item:Attachments",
    "item:InternetMessageHeaders",
    "message:ToRecipients",
    "message:CcRecipients",
    "message:BccRecipients",
    "calendar:RequiredAttendees",
];

fn kind_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Message => MESSAGE_FIELDS,
        Kind::CalendarItem => CALENDAR_FIELDS,
        Kind::Contact => CONTACT_FIELDS,
        Kind::Task => TASK_FIELDS,
    }
}

pub fn element(kind: Kind) -> &'static str {
    match kind {
        Kind::Message => "Message",
        Kind::CalendarItem => "CalendarItem",
        Kind::Contact => "Contact",
        Kind::Task => "Task",
    }
}

/// Writes `<t:Message>…</t:Message>` (or the kind's element) for `item` in `shape`.
pub fn item(out: &mut String, mailbox: &Mailbox, item: &Item, shape: &Shape, context: Context) {
    let kind = item.kind();
    let wanted = |uri: &str| -> bool {
        if context == Context::FindItem && NOT_IN_FIND.contains(&uri) {
            return false;
        }
        if uri == "item:MimeContent" {
            return shape.mime || shape.fields.iter().any(|f| f == uri);
        }
        shape.fields.iter().any(|f| f == uri)
            || match shape.base {
                BaseShape::IdOnly => false,
                BaseShape::Default => DEFAULT_FIELDS.contains(&uri),
                BaseShape::AllProperties => true,
            }
    };
    let el = element(kind);
    let _ = write!(out, "<t:{el}>");
    if wanted("item:MimeContent") {
        mime_content(out, item);
    }
    let _ = write!(
        out,
        r#"<t:ItemId Id="{}" ChangeKey="{}"/>"#,
        esc(&item.id),
        item.change_key()
    );
    for uri in ITEM_FIELDS.iter().skip(1) {
        if *uri == "item:LastModifiedTime" {
            extended(out, item, shape);
        }
        if wanted(uri) {
            item_field(out, mailbox, item, uri, shape);
        }
    }
    for uri in kind_fields(kind) {
        if wanted(uri) {
            kind_field(out, item, uri);
        }
    }
    let _ = write!(out, "</t:{el}>");
}

fn mime_content(out: &mut String, item: &Item) {
    let raw = item.mime.clone().unwrap_or_else(|| to_mime(item));
    let _ = write!(
        out,
        r#"<t:MimeContent CharacterSet="UTF-8">{}</t:MimeContent>"#,
        base64::engine::general_purpose::STANDARD.encode(raw)
    );
}

/// An RFC 822 rendering of a message created without MIME.
pub fn to_mime(item: &Item) -> Vec<u8> {
    let mut m = String::new();
    let addrs = |list: &[Addr]| {
        list.iter()
            .map(|a| match &a.name {
                Some(n) => format!("\"{n}\" <{}>", a.address),
                None => a.address.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(from) = &item.from {
        let _ = write!(m, "From: {}\r\n", addrs(std::slice::from_ref(from)));
    }
    if !item.to.is_empty() {
        let _ = write!(m, "To: {}\r\n", addrs(&item.to));
    }
    if !item.cc.is_empty() {
        let _ = write!(m, "Cc: {}\r\n", addrs(&item.cc));
    }
    let _ = write!(m, "Subject: {}\r\n", item.subject);
    if let Some(id) = &item.message_id {
        let _ = write!(m, "Message-ID: {id}\r\n");
    }
    if let Some(id) = &item.in_reply_to {
        let _ = write!(m, "In-Reply-To: {id}\r\n");
    }
    let content_type = if item.body_html {
        "text/html"
    } else {
        "text/plain"
    };
    let _ = write!(
        m,
        "MIME-Version: 1.0\r\nContent-Type: {content_type}; charset=utf-8\r\n\r\n{}\r\n",
        item.body
    );
    m.into_bytes()
}

fn mailbox_xml(out: &mut String, addr: &Addr) {
    let _ = write!(
        out,
        "<t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>OneOff</t:MailboxType></t:Mailbox>",
        esc(addr.display()),
        esc(&addr.address)
    );
}

fn recipients(out: &mut String, element: &str, list: &[Addr]) {
    if list.is_empty() {
        return;
    }
    let _ = write!(out, "<t:{element}>");
    for a in list {
        mailbox_xml(out, a);
    }
    let _ = write!(out, "</t:{element}>");
}

fn single(out: &mut String, element: &str, addr: &Option<Addr>) {
    if let Some(a) = addr {
        let _ = write!(out, "<t:{element}>");
        mailbox_xml(out, a);
        let _ = write!(out, "</t:{element}>");
    }
}

fn simple(out: &mut String, element: &str, value: &str) {
    let _ = write!(out, "<t:{element}>{}</t:{element}>", esc(value));
}

fn time(out: &mut String, element: &str, secs: Option<i64>) {
    if let Some(secs) = secs {
        simple(out, element, &format_seconds(secs));
    }
}

fn display(list: &[Addr]) -> String {
    list.iter()
        .map(Addr::display)
        .collect::<Vec<_>>()
        .join("; ")
}

fn item_field(out: &mut String, mailbox: &Mailbox, item: &Item, uri: &str, shape: &Shape) {
    match uri {
        "item:ParentFolderId" => {
            if let Some(f) = mailbox.folders.get(&item.folder) {
                let _ = write!(
                    out,
                    r#"<t:ParentFolderId Id="{}" ChangeKey="{}"/>"#,
                    esc(&f.id),
                    f.change_key()
                );
            }
        }
        "item:ItemClass" => simple(out, "ItemClass", &item.item_class),
        "item:Subject" => simple(out, "Subject", &item.subject),
        "item:Sensitivity" => simple(out, "Sensitivity", "Normal"),
        "item:Body" => {
            let html = shape.html.unwrap_or(item.body_html);
            let text = if html && !item.body_html {
                format!("<html><body>{}</body></html>", esc(&item.body))
            } else {
                item.body.clone()
            };
            let _ = write!(
                out,
                r#"<t:Body BodyType="{}">{}</t:Body>"#,
                if html { "HTML" } else { "Text" },
                esc(&text)
            );
        }
        "item:DateTimeReceived" => time(out, "DateTimeReceived", Some(item.received)),
        "item:Size" => simple(out, "Size", &(item.body.len() + 512).to_string()),
        "item:Categories" if !item.categories.is_empty() => {
            out.push_str("<t:Categories>");
            for c in &item.categories {
                simple(out, "String", c);
            }
            out.push_str("</t:Categories>");
        }
        "item:Importance" => simple(
            out,
            "Importance",
            item.importance.as_deref().unwrap_or("Normal"),
        ),
        "item:InReplyTo" => {
            if let Some(v) = &item.in_reply_to {
                simple(out, "InReplyTo", v);
            }
        }
        "item:IsSubmitted" => simple(out, "IsSubmitted", "false"),
        "item:IsDraft" => simple(out, "IsDraft", bool_text(item.is_draft)),
        "item:IsFromMe" => simple(
            out,
            "IsFromMe",
            bool_text(
                item.from
                    .as_ref()
                    .is_some_and(|f| f.address.eq_ignore_ascii_case(&mailbox.address)),
            ),
        ),
        "item:InternetMessageHeaders" => headers(out, item),
        "item:DateTimeSent" => time(out, "DateTimeSent", item.sent),
        "item:DateTimeCreated" => time(out, "DateTimeCreated", Some(item.created)),
        "item:DisplayCc" => simple(out, "DisplayCc", &display(&item.cc)),
        "item:DisplayTo" => simple(out, "DisplayTo", &display(&item.to)),
        "item:HasAttachments" => simple(out, "HasAttachments", "false"),
        "item:LastModifiedTime" => time(out, "LastModifiedTime", Some(item.modified)),
        "item:ConversationId" if item.kind() == Kind::Message => {
            let _ = write!(
                out,
                r#"<t:ConversationId Id="{}"/>"#,
                item.conversation_id()
            );
        }
        _ => {}
    }
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn headers(out: &mut String, item: &Item) {
    out.push_str("<t:InternetMessageHeaders>");
    for (name, value) in item.internet_headers() {
        let _ = write!(
            out,
            r#"<t:InternetMessageHeader HeaderName="{}">{}</t:InternetMessageHeader>"#,
            esc(&name),
            esc(&value)
        );
    }
    out.push_str("</t:InternetMessageHeaders>");
}

fn attendees(out: &mut String, element: &str, list: &[Addr]) {
    let _ = write!(out, "<t:{element}>");
    for a in list {
        out.push_str("<t:Attendee>");
        mailbox_xml(out, a);
        out.push_str("<t:ResponseType>Unknown</t:ResponseType></t:Attendee>");
    }
    let _ = write!(out, "</t:{element}>");
}

/// Indexed entries kept as written: phone numbers, and physical addresses with their parts in
/// schema order.
fn entries(out: &mut String, item: &Item, uri: &str) {
    let list = uri.rsplit(':').next().unwrap_or(uri);
    let prefix = format!("{list}/");
    let mut keys: Vec<&str> = item
        .extra
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .map(|k| k.split('/').next().unwrap_or(k))
        .collect();
    keys.dedup();
    if keys.is_empty() {
        return;
    }
    let _ = write!(out, "<t:{list}>");
    for key in keys {
        let _ = write!(out, r#"<t:Entry Key="{}">"#, esc(key));
        if let Some(value) = item.extra.get(&format!("{prefix}{key}")) {
            out.push_str(&esc(value));
        }
        for part in ["Street", "City", "State", "CountryOrRegion", "PostalCode"] {
            if let Some(value) = item.extra.get(&format!("{prefix}{key}/{part}")) {
                simple(out, part, value);
            }
        }
        out.push_str("</t:Entry>");
    }
    let _ = write!(out, "</t:{list}>");
}

fn kind_field(out: &mut String, item: &Item, uri: &str) {
    match uri {
        "message:Sender" => single(out, "Sender", &item.from),
        "message:ToRecipients" => recipients(out, "ToRecipients", &item.to),
        "message:CcRecipients" => recipients(out, "CcRecipients", &item.cc),
        "message:BccRecipients" => recipients(out, "BccRecipients", &item.bcc),
        "message:ConversationTopic" => simple(out, "ConversationTopic", item.conversation_topic()),
        "message:From" => single(out, "From", &item.from),
        "message:InternetMessageId" => {
            if let Some(v) = &item.message_id {
                simple(out, "InternetMessageId", v);
            }
        }
        "message:IsRead" => simple(out, "IsRead", bool_text(item.is_read)),
        "message:References" => {
            if let Some(v) = &item.references {
                simple(out, "References", v);
            }
        }
        "calendar:UID" => simple(out, "UID", &item.id),
        "calendar:Start" => time(out, "Start", item.start),
        "calendar:End" => time(out, "End", item.end),
        "calendar:IsAllDayEvent" => simple(
            out,
            "IsAllDayEvent",
            item.extra
                .get("IsAllDayEvent")
                .map_or("false", String::as_str),
        ),
        "calendar:OptionalAttendees" if !item.cc.is_empty() => {
            attendees(out, "OptionalAttendees", &item.cc)
        }
        "calendar:Location" => {
            if let Some(v) = &item.location {
                simple(out, "Location", v);
            }
        }
        "calendar:IsMeeting" => simple(out, "IsMeeting", bool_text(!item.to.is_empty())),
        "calendar:Organizer" => single(out, "Organizer", &item.from),
        "calendar:RequiredAttendees" if !item.to.is_empty() => {
            attendees(out, "RequiredAttendees", &item.to)
        }
        "contacts:FileAs" => simple(out, "FileAs", &item.subject),
        "contacts:DisplayName" => simple(out, "DisplayName", &item.subject),
        "contacts:GivenName" => {
            if let Some(v) = &item.given_name {
                simple(out, "GivenName", v);
            }
        }
        "contacts:CompanyName" => {
            if let Some(v) = &item.company {
                simple(out, "CompanyName", v);
            }
        }
        "contacts:EmailAddresses" if !item.emails.is_empty() => {
            out.push_str("<t:EmailAddresses>");
            for (i, e) in item.emails.iter().take(3).enumerate() {
                let _ = write!(
                    out,
                    r#"<t:Entry Key="EmailAddress{}">{}</t:Entry>"#,
                    i + 1,
                    esc(e)
                );
            }
            out.push_str("</t:EmailAddresses>");
        }
        "contacts:Surname" => {
            if let Some(v) = &item.surname {
                simple(out, "Surname", v);
            }
        }
        "task:DueDate" => time(out, "DueDate", item.due),
        "task:IsComplete" => simple(
            out,
            "IsComplete",
            bool_text(item.status.as_deref() == Some("Completed")),
        ),
        "task:PercentComplete" => simple(
            out,
            "PercentComplete",
            match item.extra.get("PercentComplete") {
                Some(written) => written,
                None if item.status.as_deref() == Some("Completed") => "100",
                None => "0",
            },
        ),
        "task:Status" => simple(
            out,
            "Status",
            item.status.as_deref().unwrap_or("NotStarted"),
        ),
        "contacts:PhoneNumbers" | "contacts:PhysicalAddresses" => entries(out, item, uri),
        other => {
            let name = other.rsplit(':').next().unwrap_or(other);
            if let Some(value) = item.extra.get(name) {
                simple(out, name, value);
            }
        }
    }
}

/// Extended properties the request asked for (AllProperties does not include them, as in
/// Exchange: they must be named).
fn extended(out: &mut String, item: &Item, shape: &Shape) {
    for key in &shape.extended {
        if let Some(prop) = item.extended.iter().find(|p| p.key == *key) {
            extended_property(out, prop);
        }
    }
}

fn extended_property(out: &mut String, prop: &ExtendedProperty) {
    out.push_str("<t:ExtendedProperty>");
    field_uri(out, &prop.key, &prop.property_type);
    simple(out, "Value", &prop.value);
    out.push_str("</t:ExtendedProperty>");
}

pub fn field_uri(out: &mut String, key: &PropKey, property_type: &str) {
    out.push_str("<t:ExtendedFieldURI");
    if let Some(set) = &key.set {
        if set.contains('-') {
            let _ = write!(out, r#" PropertySetId="{}""#, esc(set));
        } else {
            let _ = write!(out, r#" DistinguishedPropertySetId="{}""#, esc(set));
        }
    }
    if let Some(tag) = &key.tag {
        let _ = write!(out, r#" PropertyTag="{}""#, esc(tag));
    }
    if let Some(name) = &key.name {
        let _ = write!(out, r#" PropertyName="{}""#, esc(name));
    }
    if let Some(id) = &key.id {
        let _ = write!(out, r#" PropertyId="{}""#, esc(id));
    }
    let _ = write!(out, r#" PropertyType="{}"/>"#, esc(property_type));
}

/// Writes `<t:Folder>` (or the calendar/contacts/tasks folder element) for `folder`.
pub fn folder(out: &mut String, mailbox: &Mailbox, folder: &Folder, full: bool) {
    let el = match folder.class.as_str() {
        "IPF.Appointment" => "CalendarFolder",
        "IPF.Contact" => "ContactsFolder",
        "IPF.Task" => "TasksFolder",
        _ => "Folder",
    };
    let _ = write!(
        out,
        r#"<t:{el}><t:FolderId Id="{}" ChangeKey="{}"/>"#,
        esc(&folder.id),
        folder.change_key()
    );
    if full {
        if let Some(parent) = folder.parent.and_then(|p| mailbox.folders.get(&p)) {
            let _ = write!(
                out,
                r#"<t:ParentFolderId Id="{}" ChangeKey="{}"/>"#,
                esc(&parent.id),
                parent.change_key()
            );
        }
        simple(out, "FolderClass", &folder.class);
        simple(out, "DisplayName", &folder.name);
        let (total, unread) = mailbox.counts(folder.key);
        simple(out, "TotalCount", &total.to_string());
        simple(
            out,
            "ChildFolderCount",
            &mailbox.children(folder.key).count().to_string(),
        );
        if el == "Folder" {
            simple(out, "UnreadCount", &unread.to_string());
        }
    }
    let _ = write!(out, "</t:{el}>");
}
