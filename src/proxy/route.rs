//! Routing: which upstream a request goes to, and its route class (the only per-request label
//! metrics carry). Paths are matched case-insensitively, as IIS does.

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

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
}

impl UpstreamBase {
    pub fn new(uri: &Uri) -> Option<UpstreamBase> {
        Some(UpstreamBase {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The upstream URI for a client request's path and query.
    pub fn join(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let pq = path_and_query.map(PathAndQuery::as_str).unwrap_or("/");
        let builder = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if self.prefix.is_empty() {
            builder.path_and_query(pq).build()
        } else {
            builder
                .path_and_query(format!("{}{pq}", self.prefix))
                .build()
        }
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
        match class {
            RouteClass::Ews | RouteClass::Other => &self.ews,
            RouteClass::Graph => &self.graph,
            RouteClass::Autodiscover => &self.autodiscover,
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
    fn join_keeps_prefix_and_query() {
        let base = UpstreamBase::new(&"https://graph.example/root/".parse().unwrap()).unwrap();
        let pq: PathAndQuery = "/v1.0/me/messages?$top=5".parse().unwrap();
        assert_eq!(
            base.join(Some(&pq)).unwrap().to_string(),
            "https://graph.example/root/v1.0/me/messages?$top=5"
        );
    }
}
