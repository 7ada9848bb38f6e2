//! The directory's own settings, given by the composition root: the other names under which a
//! user's sign-in name is found. Windows authentication (NTLM, Negotiate falling back to it)
//! names the user as `DOMAIN\user` with the NetBIOS domain, and ews-javascript-api and other
//! clients send no `X-AnchorMailbox` beside it, while Dataverse often stores the sign-in name as
//! a UPN (`user@dns.domain`). These settings say how one is read as the other.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::DirectoryDocument;

/// How the directory indexes the names clients authenticate with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySettings {
    /// A UPN-form `domainname` `user@first.rest` also finds its user as `first\user`: the
    /// NetBIOS name of a domain is usually its first DNS label.
    pub netbios_from_upn: bool,
    /// NetBIOS domain name → DNS domain (matched case-insensitively): `netbios\user` finds the
    /// user whose `domainname` or `internalemailaddress` is `user@dns`. For domains whose
    /// NetBIOS name is not the first DNS label.
    pub ntlm_domains: BTreeMap<String, String>,
    /// What the gateway keeps beside the source, laid over every document before it is
    /// indexed.
    pub overlay: Overlay,
}

impl Default for DirectorySettings {
    /// The first-label alias and no configured domains: what a directory with no `[identity]`
    /// section gets.
    fn default() -> Self {
        DirectorySettings {
            netbios_from_upn: true,
            ntlm_domains: BTreeMap::new(),
            overlay: Overlay::default(),
        }
    }
}

/// Changes to the CRM state that the gateway keeps itself because its source cannot hold them
/// (the options page's, for options Dataverse has no column for, or when the directory is the
/// embedded example). Applied to each document as it is indexed, so every refresh keeps them.
pub trait DocumentOverlay: Send + Sync {
    fn apply(&self, doc: &mut DirectoryDocument);
}

/// An optional [`DocumentOverlay`]; two are equal when they are the same one.
#[derive(Clone, Default)]
pub struct Overlay(Option<Arc<dyn DocumentOverlay>>);

impl Overlay {
    pub fn new(overlay: Arc<dyn DocumentOverlay>) -> Overlay {
        Overlay(Some(overlay))
    }

    pub fn apply(&self, doc: &mut DirectoryDocument) {
        if let Some(overlay) = &self.0 {
            overlay.apply(doc);
        }
    }
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Overlay(set)"
        } else {
            "Overlay(none)"
        })
    }
}

impl PartialEq for Overlay {
    fn eq(&self, other: &Overlay) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Overlay {}
