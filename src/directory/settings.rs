//! The directory's own settings, given by the composition root: the other names under which a
//! user's sign-in name is found. Windows authentication (NTLM, Negotiate falling back to it)
//! names the user as `DOMAIN\user` with the NetBIOS domain, and ews-javascript-api and other
//! clients send no `X-AnchorMailbox` beside it, while Dataverse often stores the sign-in name as
//! a UPN (`user@dns.domain`). These settings say how one is read as the other.

use std::collections::BTreeMap;

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
}

impl Default for DirectorySettings {
    /// The first-label alias and no configured domains: what a directory with no `[identity]`
    /// section gets.
    fn default() -> Self {
        DirectorySettings {
            netbios_from_upn: true,
            ntlm_domains: BTreeMap::new(),
        }
    }
}
