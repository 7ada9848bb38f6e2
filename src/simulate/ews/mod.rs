//! EWS served from the mailbox store, by meaning: the request is parsed, its operation run
//! against the store, and the answer written as Exchange 2016 writes it — a versioned
//! `ServerVersionInfo` echoing `RequestServerVersion`, one response message per input in order,
//! per-item errors (`ErrorItemNotFound`, `ErrorInvalidIdMalformed`…) and SOAP faults for
//! requests that are wrong as a whole.

mod folders;
mod items;
mod parse;
pub mod render;
pub mod stream;
mod sync;

use std::fmt::Write as _;

pub use crate::common::text::xml_escape;
use crate::inspect::xml::{Node, Ns, Tree, XmlLimits};
use crate::simulate::mailbox::{Inner, Store, StoreError};

pub use parse::FolderRef;

/// Schema versions a client may ask for (`RequestServerVersion`), as Exchange 2016 accepts them.
const VERSIONS: &[&str] = &[
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2009",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2016",
    "V2015_10_05",
    "V2016_01_06",
    "V2016_04_13",
    "V2016_07_13",
    "V2016_10_10",
    "V2017_01_07",
    "V2017_04_14",
    "V2017_07_11",
    "V2017_10_09",
    "V2018_01_08",
];

/// An EWS answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Who is calling, as the HTTP layer established it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The authenticated logon (`DOMAIN\user`, a UPN, or a bearer token's `upn`).
    pub logon: Option<String>,
    /// `X-AnchorMailbox`.
    pub anchor: Option<String>,
}

/// What one request runs with.
pub(crate) struct Ctx<'s> {
    pub store: &'s mut Inner,
    /// The mailbox the request acts on unless a folder names another.
    pub mailbox: u16,
    /// Acting as the impersonated user: only that mailbox's items are reachable (the store
    /// models no delegate rights).
    pub impersonated: bool,
}

impl Ctx<'_> {
    /// Resolves an item id to (mailbox, item key), refusing another mailbox's item under
    /// impersonation as Exchange does.
    pub fn find_item(&self, id: &str) -> Result<(u16, u64), StoreError> {
        let (m, key) = self.store.find_item(id)?;
        if self.impersonated && m != self.mailbox {
            return Err(StoreError::AccessDenied);
        }
        Ok((m, key))
    }

    /// Resolves a folder reference to (mailbox, folder key).
    pub fn folder(&self, folder: &FolderRef) -> Result<(u16, u64), StoreError> {
        match folder {
            FolderRef::Id(id) => self.store.find_folder(id),
            FolderRef::Distinguished { name, mailbox } => {
                let index = match mailbox {
                    Some(address) => self.store.mailbox_index(address)?,
                    None => self.mailbox,
                };
                self.store
                    .mailbox(index)
                    .distinguished(name)
                    .map(|f| (index, f.key))
                    .ok_or(StoreError::FolderNotFound)
            }
        }
    }

    pub fn distinguished(&self, mailbox: u16, name: &str) -> Result<u64, StoreError> {
        self.store
            .mailbox(mailbox)
            .distinguished(name)
            .map(|f| f.key)
            .ok_or(StoreError::FolderNotFound)
    }
}

/// Serves one EWS request body.
pub fn serve(store: &Store, body: &[u8], caller: &Caller) -> Answer {
    let limits = XmlLimits {
        max_depth: 64,
        max_elements: 100_000,
    };
    let tree = match Tree::parse(body, limits) {
        Ok(tree) => tree,
        Err(e) => return client_fault(&format!("The request failed schema validation: {e}")),
    };
    let Ok(operation) = tree.body_child() else {
        return client_fault("The request is not a SOAP envelope with a body.");
    };
    let header = tree.header();
    let version = match requested_version(header) {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    let mut inner = store.lock();
    let (mailbox, impersonated) = match acting_mailbox(&inner, header, caller) {
        Ok(m) => m,
        Err(e) => return fault(e.ews_code(), &e.to_string(), None),
    };
    let mut ctx = Ctx {
        store: &mut inner,
        mailbox,
        impersonated,
    };
    let name = operation.name();
    let mut out = String::with_capacity(4096);
    let known = dispatch(&mut ctx, name, operation, &mut out);
    if !known {
        return fault(
            "ErrorInvalidRequest",
            &format!(
                "The request is invalid: the simulated Exchange does not serve the {name} operation."
            ),
            None,
        );
    }
    Answer {
        status: 200,
        body: envelope(&version, &out),
    }
}

fn dispatch(ctx: &mut Ctx<'_>, name: &str, op: Node<'_>, out: &mut String) -> bool {
    match name {
        "GetFolder" => folders::get_folder(ctx, op, out),
        "FindFolder" => folders::find_folder(ctx, op, out),
        "CreateFolder" => folders::create_folder(ctx, op, out),
        "SyncFolderHierarchy" => sync::sync_folder_hierarchy(ctx, op, out),
        "SyncFolderItems" => sync::sync_folder_items(ctx, op, out),
        "FindItem" => items::find_item(ctx, op, out),
        "GetItem" => items::get_item(ctx, op, out),
        "CreateItem" => items::create_item(ctx, op, out),
        "SendItem" => items::send_item(ctx, op, out),
        "UpdateItem" => items::update_item(ctx, op, out),
        "MoveItem" => items::move_or_copy(ctx, op, out, false),
        "CopyItem" => items::move_or_copy(ctx, op, out, true),
        "DeleteItem" => items::delete_item(ctx, op, out),
        "ConvertId" => folders::convert_id(ctx, op, out),
        "ResolveNames" => folders::resolve_names(ctx, op, out),
        "Subscribe" => sync::subscribe(ctx, op, out),
        "Unsubscribe" => sync::unsubscribe(op, out),
        _ => return false,
    }
    true
}

fn requested_version(header: Option<Node<'_>>) -> Result<String, Answer> {
    let requested = header
        .and_then(|h| h.child(Ns::Types, "RequestServerVersion"))
        .and_then(|v| v.attr("Version"))
        .map(str::trim);
    match requested {
        None => Ok("Exchange2016".into()),
        Some(v) if VERSIONS.contains(&v) => Ok(v.to_owned()),
        Some(v) => Err(fault(
            "ErrorInvalidServerVersion",
            &format!("The specified server version {v:?} is invalid."),
            None,
        )),
    }
}

/// Impersonation first, then the caller's logon, then `X-AnchorMailbox`, then the first
/// mailbox; and whether it is impersonated.
fn acting_mailbox(
    store: &Inner,
    header: Option<Node<'_>>,
    caller: &Caller,
) -> Result<(u16, bool), StoreError> {
    let impersonated = header
        .and_then(|h| h.path(&["ExchangeImpersonation", "ConnectingSID"]))
        .and_then(|sid| {
            ["SmtpAddress", "PrimarySmtpAddress", "PrincipalName"]
                .iter()
                .find_map(|n| sid.child_text(n))
        });
    if let Some(address) = impersonated {
        return store.mailbox_index(&address).map(|m| (m, true));
    }
    if let Some(logon) = &caller.logon {
        if let Some(account) = store
            .accounts()
            .iter()
            .find(|a| a.logon.eq_ignore_ascii_case(logon))
        {
            return store.mailbox_index(&account.mailbox).map(|m| (m, false));
        }
        if let Ok(index) = store.mailbox_index(logon) {
            return Ok((index, false));
        }
    }
    if let Some(anchor) = &caller.anchor
        && let Ok(index) = store.mailbox_index(anchor)
    {
        return Ok((index, false));
    }
    if store.mailboxes().is_empty() {
        return Err(StoreError::NoMailbox("(none configured)".into()));
    }
    Ok((0, false))
}

pub const MESSAGES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const TYPES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

fn envelope(version: &str, body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>"#,
            r#"<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="39" Version="{version}" "#,
            r#"xmlns:h="{types}" xmlns="{types}" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>"#,
            r#"</s:Header><s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">{body}</s:Body></s:Envelope>"#
        ),
        version = version,
        types = TYPES_NS,
        body = body
    )
}

/// Opens `<m:{op}Response>` and its `ResponseMessages`.
pub(crate) fn open(out: &mut String, op: &str) {
    let _ = write!(
        out,
        r#"<m:{op}Response xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><m:ResponseMessages>"#
    );
}

pub(crate) fn close(out: &mut String, op: &str) {
    let _ = write!(out, "</m:ResponseMessages></m:{op}Response>");
}

/// A successful response message around `payload`.
pub(crate) fn success(out: &mut String, op: &str, payload: &str) {
    let _ = write!(
        out,
        r#"<m:{op}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>{payload}</m:{op}ResponseMessage>"#
    );
}

/// A failed response message; the rest of the batch goes on.
pub(crate) fn error(out: &mut String, op: &str, code: &str, text: &str, payload: &str) {
    let _ = write!(
        out,
        r#"<m:{op}ResponseMessage ResponseClass="Error"><m:MessageText>{}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{payload}</m:{op}ResponseMessage>"#,
        xml_escape(text)
    );
}

pub(crate) fn store_error(out: &mut String, op: &str, e: &StoreError, payload: &str) {
    error(out, op, e.ews_code(), &e.to_string(), payload);
}

/// A SOAP fault (HTTP 500) with the EWS response code in its detail, as Exchange sends them.
pub fn fault(code: &str, message: &str, back_off_ms: Option<u64>) -> Answer {
    let detail = back_off_ms
        .map(|ms| {
            format!(
                "<t:MessageXml><t:Value Name=\"BackOffMilliseconds\">{ms}</t:Value></t:MessageXml>"
            )
        })
        .unwrap_or_default();
    let message = xml_escape(message);
    Answer {
        status: 500,
        body: format!(
            concat!(
                r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>"#,
                r#"<faultcode xmlns:a="{types}">a:{code}</faultcode>"#,
                r#"<faultstring xml:lang="en-US">{message}</faultstring><detail>"#,
                r#"<e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{code}</e:ResponseCode>"#,
                r#"<e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{message}</e:Message>"#,
                r#"<t:ExceptionDetail xmlns:t="{types}">{detail}</t:ExceptionDetail>"#,
                r#"</detail></s:Fault></s:Body></s:Envelope>"#
            ),
            types = TYPES_NS,
            code = code,
            message = message,
            detail = detail
        ),
    }
}

/// A fault blaming the client (malformed XML, not SOAP).
fn client_fault(message: &str) -> Answer {
    Answer {
        status: 500,
        body: format!(
            concat!(
                r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>"#,
                r#"<faultcode>s:Client</faultcode><faultstring xml:lang="en-US">{}</faultstring>"#,
                r#"<detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorSchemaValidation</e:ResponseCode></detail>"#,
                r#"</s:Fault></s:Body></s:Envelope>"#
            ),
            xml_escape(message)
        ),
    }
}

#[cfg(test)]
mod tests;
