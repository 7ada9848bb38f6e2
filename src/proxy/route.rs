//! Routing: which upstream a request goes to, and its route class (the only per-request label
//! metrics carry). Paths are matched case-insensitively, as IIS does.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// The class of a route. Bounded, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// `/EWS/…` — Exchange Web Services.
    Ews = 0,
    /// `/autodiscover/…`.
    Autodiscover = 1,
    /// `/v1.0/…`, `/beta/…` — Microsoft Graph.
    Graph = 2,
    /// Everything else (OWA, MAPI, ActiveSync…): forwarded to the EWS upstream untouched.
    Other = 3,
}

impl RouteClass {
    pub const ALL: [RouteClass; 4] = [
        RouteClass::Ews,
        RouteClass::Autodiscover,
        RouteClass::Graph,
        RouteClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Ews => "ews",
            RouteClass::Autodiscover => "autodiscover",
            RouteClass::Graph => "graph",
            RouteClass::Other => "other",
        }
    }

    /// Classifies a request path.
    pub fn of_path(path: &str) -> RouteClass {
        let starts = |prefix: &str| {
            path.len() >= prefix.len()
                && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        };
        if starts("/ews/") || path.eq_ignore_ascii_case("/ews") {
            RouteClass::Ews
        } else if starts("/autodiscover/") {
            RouteClass::Autodiscover
        } else if starts("/v1.0/") || starts("/beta/") || starts("/$batch") {
            RouteClass::Graph
        } else {
            RouteClass::Other
        }
    }
}

/// One upstream base URL, split once so per-request URI building is cheap.
#[derive(Debug, Clone)]
pub struct UpstreamBase {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
    /// The Host header a request gets when the client's is not preserved: the authority without
    /// a default port, as browsers and HTTP clients write it.
    pub host_header: HeaderValue,
}

impl UpstreamBase {
    pub fn new(uri: &Uri) -> Option<UpstreamBase> {
        let scheme = uri.scheme()?.clone();
        let authority = uri.authority()?.clone();
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        // From the host and port only: an authority's user info (`svc:pw@host`) must not go
        // upstream in a Host header.
        let host_header = match authority.port_u16() {
            Some(port) if port != default_port => {
                HeaderValue::from_str(&format!("{}:{port}", authority.host()))
            }
            _ => HeaderValue::from_str(authority.host()),
        }
        .ok()?;
        Some(UpstreamBase {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            host_header,
        })
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The host to connect to (an IPv6 address without its brackets) and the port.
    pub fn socket_target(&self) -> (&str, u16) {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 });
        (host, port)
    }

    /// The request target on the upstream for a client request's target, in origin form
    /// (`/prefix/path?query`), which is what HTTP/1.1 sends to an origin server. A target already
    /// in origin form with no prefix to add — nearly every request — is kept as it is.
    pub fn origin_form(&self, target: &Uri) -> Result<Uri, http::Error> {
        let pq = target.path_and_query();
        if self.prefix.is_empty() {
            if target.scheme().is_none() && target.authority().is_none() && pq.is_some() {
                return Ok(target.clone());
            }
            let pq = pq
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            return Ok(Uri::from(pq));
        }
        let pq = pq.map(PathAndQuery::as_str).unwrap_or("/");
        Ok(Uri::try_from(format!("{}{pq}", self.prefix))?)
    }

    /// A key identifying the connection endpoint (scheme, host, port).
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// The upstream bases per route class.
#[derive(Debug, Clone)]
pub struct Routes {
    pub ews: UpstreamBase,
    pub graph: UpstreamBase,
    pub autodiscover: UpstreamBase,
}

impl Routes {
    pub fn base(&self, class: RouteClass) -> &UpstreamBase {
        self.bases()[Routes::slot(class)]
    }

    /// The bases in slot order; anything kept per upstream (the pools) uses the same slots.
    pub fn bases(&self) -> [&UpstreamBase; 3] {
        [&self.ews, &self.graph, &self.autodiscover]
    }

    /// Which base a route class goes to: its index in [`Routes::bases`].
    pub fn slot(class: RouteClass) -> usize {
        match class {
            RouteClass::Ews | RouteClass::Other => 0,
            RouteClass::Graph => 1,
            RouteClass::Autodiscover => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_ignore_case() {
        assert_eq!(RouteClass::of_path("/ews/exchange.asmx"), RouteClass::Ews);
        assert_eq!(RouteClass::of_path("/EWS/Exchange.asmx"), RouteClass::Ews);
        assert_eq!(
            RouteClass::of_path("/Autodiscover/Autodiscover.xml"),
            RouteClass::Autodiscover
        );
        assert_eq!(RouteClass::of_path("/v1.0/me/messages"), RouteClass::Graph);
        assert_eq!(RouteClass::of_path("/mapi/emsmdb"), RouteClass::Other);
        assert_eq!(RouteClass::of_path("/ewsx"), RouteClass::Other);
    }

    #[test]
    fn origin_form_keeps_prefix_and_query() {
        let base = UpstreamBase::new(&"https://graph.example/root/".parse().unwrap()).unwrap();
        let target: Uri = "/v1.0/me/messages?$top=5".parse().unwrap();
        assert_eq!(
            base.origin_form(&target).unwrap().to_string(),
            "/root/v1.0/me/messages?$top=5"
        );
        // An HTTP/2 client's target carries scheme and authority; only the path goes upstream.
        let base = UpstreamBase::new(&"http://ews.example:8080".parse().unwrap()).unwrap();
        let target: Uri = "https://gw.example/EWS/Exchange.asmx?x=1".parse().unwrap();
        assert_eq!(
            base.origin_form(&target).unwrap().to_string(),
            "/EWS/Exchange.asmx?x=1"
        );
        let target: Uri = "/EWS/Exchange.asmx".parse().unwrap();
        assert_eq!(base.origin_form(&target).unwrap(), target);
    }

    #[test]
    fn host_header_drops_only_the_default_port() {
        let host = |url: &str| {
            UpstreamBase::new(&url.parse().unwrap())
                .unwrap()
                .host_header
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(host("https://mail.example:443/"), "mail.example");
        assert_eq!(host("http://mail.example:80"), "mail.example");
        assert_eq!(host("http://127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(host("https://[::1]:8443"), "[::1]:8443");
        assert_eq!(
            host("https://svc:secret@mail.example:8443"),
            "mail.example:8443"
        );
        let base = UpstreamBase::new(&"https://[::1]".parse().unwrap()).unwrap();
        assert_eq!(base.socket_target(), ("::1", 443));
    }
}
