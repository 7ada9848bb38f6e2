//! The simulator's view of a SOAP request: the EWS operation, which is the first element child
//! of `soap:Body`, found by namespace and local name whatever the prefixes.

/// The EWS operation of a SOAP envelope (see [`crate::inspect::xml::operation`]).
pub fn operation(body: &[u8]) -> Option<String> {
    crate::inspect::xml::operation(body).map(|op| op.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_operation_whatever_the_prefixes() {
        let prefixed = br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><soap:Header/><soap:Body><m:GetItem/></soap:Body></soap:Envelope>"#;
        assert_eq!(operation(prefixed).as_deref(), Some("GetItem"));
        let defaulted = b"\xEF\xBB\xBF<Envelope xmlns=\"http://schemas.xmlsoap.org/soap/envelope/\"><Body><FindItem xmlns=\"http://schemas.microsoft.com/exchange/services/2006/messages\"><x/></FindItem></Body></Envelope>";
        assert_eq!(operation(defaulted).as_deref(), Some("FindItem"));
    }

    #[test]
    fn refuses_non_soap_and_doctype() {
        assert_eq!(
            operation(b"<Envelope><Body><GetItem/></Body></Envelope>"),
            None
        );
        assert_eq!(operation(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x/>"), None);
        assert_eq!(operation(b"not xml at all"), None);
    }
}
