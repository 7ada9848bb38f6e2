//! The simulator's view of a SOAP request: the EWS operation, which is the first element child
//! of `soap:Body`, found by namespace and local name whatever the prefixes.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";

/// The EWS operation of a SOAP envelope, or `None` when the body is not one (or has a DOCTYPE,
/// which SOAP forbids).
pub fn operation(body: &[u8]) -> Option<String> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = NsReader::from_reader(body);
    let mut depth = 0usize;
    let mut in_body = false;
    loop {
        let (ns, event) = reader.read_resolved_event().ok()?;
        let is_soap = matches!(ns, ResolveResult::Bound(n) if n.into_inner() == SOAP11 || n.into_inner() == SOAP12);
        match event {
            Event::DocType(_) => return None,
            Event::Start(e) | Event::Empty(e) if in_body && depth == 2 => {
                return Some(e.local_name().into_inner().to_owned());
            }
            Event::Start(e) => {
                let local = e.local_name();
                match depth {
                    0 if !(is_soap && local.into_inner() == "Envelope") => return None,
                    1 if is_soap && local.into_inner() == "Body" => in_body = true,
                    _ => {}
                }
                depth += 1;
                if depth > 64 {
                    return None;
                }
            }
            Event::End(_) => {
                depth = depth.checked_sub(1)?;
                if depth == 1 {
                    in_body = false;
                }
            }
            Event::Eof => return None,
            _ => {}
        }
    }
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
