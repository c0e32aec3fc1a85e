//! The HBONE CONNECT request: its fields, how they map to HTTP/2 headers both ways, and the
//! statuses a server answers with. Parsing is lenient only where Istio peers vary (`forwarded`
//! syntax); the target address is strict because it decides where bytes go.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use crate::error::Error;
use crate::server::Rejection;

/// `forwarded` (RFC 7239): the original source IP. Istio ztunnel sends `for=<source ip>` on every
/// CONNECT so the destination sees the real client address.
pub(crate) const FORWARDED: HeaderName = http::header::FORWARDED;
/// `baggage` (W3C Baggage): workload metadata Istio propagates for telemetry labels.
pub(crate) const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// `traceparent` (W3C Trace Context): the distributed trace this tunnel belongs to.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// What a CONNECT carries: the target, and metadata headers Istio ambient sends with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Where the tunnel goes, sent as `:authority` = `ip:port`.
    pub target: SocketAddr,
    /// The original client IP, sent as `forwarded: for=<ip>`.
    pub forwarded_for: Option<IpAddr>,
    /// The W3C `baggage` header, passed through verbatim.
    pub baggage: Option<String>,
    /// The W3C `traceparent` header, passed through verbatim.
    pub traceparent: Option<String>,
}

impl ConnectRequest {
    /// A request for `target` with no metadata headers.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            forwarded_for: None,
            baggage: None,
            traceparent: None,
        }
    }

    /// The HTTP/2 request a client sends: `CONNECT`, `:authority` = target, no `:scheme`/`:path`
    /// (RFC 9113 §8.5; h2 omits them for a classic CONNECT).
    pub(crate) fn to_http(&self) -> Result<Request<()>, Error> {
        let uri: Uri = self
            .target
            .to_string()
            .parse()
            .map_err(|_| Error::InvalidHeader { field: "target" })?;
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        if let Some(ip) = self.forwarded_for {
            let value = HeaderValue::try_from(format_forwarded(ip))
                .map_err(|_| Error::InvalidHeader { field: "forwarded_for" })?;
            headers.insert(FORWARDED, value);
        }
        if let Some(baggage) = &self.baggage {
            let value =
                HeaderValue::try_from(baggage.as_str()).map_err(|_| Error::InvalidHeader { field: "baggage" })?;
            headers.insert(BAGGAGE, value);
        }
        if let Some(traceparent) = &self.traceparent {
            let value = HeaderValue::try_from(traceparent.as_str())
                .map_err(|_| Error::InvalidHeader { field: "traceparent" })?;
            headers.insert(TRACEPARENT, value);
        }
        Ok(request)
    }

    /// Parses what a server received. Method and target are checked strictly; metadata headers
    /// that do not parse are dropped (they are informational and peers vary in syntax).
    ///
    /// Public so the fuzz targets in `fuzz/` can drive it with untrusted requests; the server
    /// calls it for every stream a client opens.
    pub fn from_http<B>(request: &Request<B>) -> Result<Self, Rejection> {
        if request.method() != Method::CONNECT {
            return Err(Rejection::NotConnect);
        }
        let authority = request.uri().authority().ok_or(Rejection::MissingAuthority)?;
        let target = parse_target(authority.as_str()).ok_or(Rejection::BadAuthority)?;
        let headers = request.headers();
        Ok(Self {
            target,
            forwarded_for: header_str(headers, &FORWARDED).and_then(parse_forwarded_for),
            baggage: header_str(headers, &BAGGAGE).map(str::to_owned),
            traceparent: header_str(headers, &TRACEPARENT).map(str::to_owned),
        })
    }
}

/// `ip:port` or `[ipv6]:port`; no host names, no user info, no port 0 (nothing listens there).
fn parse_target(authority: &str) -> Option<SocketAddr> {
    let target: SocketAddr = authority.parse().ok()?;
    (target.port() != 0).then_some(target)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// RFC 7239 §6: an IPv6 node must be bracketed and therefore quoted; IPv4 is a plain token.
fn format_forwarded(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// The `for=` node of the first `forwarded` element. Accepts the RFC 7239 forms (`for=1.2.3.4`,
/// `for="[::1]"`, with or without a port) and the unquoted, unbracketed IPv6 some peers send.
fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    let first_element = value.split(',').next()?;
    let node = first_element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then_some(value.trim())
    })?;
    let node = node.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(node);
    if let Some(rest) = node.strip_prefix('[') {
        let (ip, _port) = rest.split_once(']')?;
        return ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// How a server refuses a CONNECT. Status codes are Istio ztunnel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// 400: the request is malformed.
    BadRequest,
    /// 401: denied by authorization policy.
    Unauthorized,
    /// 503: the target could not be reached.
    Unavailable,
}

impl Refusal {
    /// The status sent on the wire.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<Refusal> for StatusCode {
    fn from(r: Refusal) -> Self {
        r.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_view(req: &ConnectRequest) -> Result<ConnectRequest, Rejection> {
        let http = req.to_http().expect("valid request");
        ConnectRequest::from_http(&http)
    }

    #[test]
    fn round_trips_all_fields() {
        let req = ConnectRequest {
            target: "10.0.0.7:8080".parse().expect("addr"),
            forwarded_for: Some("10.0.0.1".parse().expect("ip")),
            baggage: Some("k8s.namespace.name=default".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        assert_eq!(server_view(&req), Ok(req));
    }

    #[test]
    fn round_trips_ipv6() {
        let mut req = ConnectRequest::new("[fd00::7]:443".parse().expect("addr"));
        req.forwarded_for = Some("fd00::1".parse().expect("ip"));
        let http = req.to_http().expect("valid");
        assert_eq!(http.uri().authority().map(|a| a.as_str()), Some("[fd00::7]:443"));
        assert_eq!(server_view(&req), Ok(req));
    }

    #[test]
    fn forwarded_forms() {
        let v4: IpAddr = "192.0.2.43".parse().expect("ip");
        let v6: IpAddr = "2001:db8:cafe::17".parse().expect("ip");
        for (value, want) in [
            ("for=192.0.2.43", Some(v4)),
            ("For=\"192.0.2.43:4711\"", Some(v4)),
            ("for=192.0.2.43, for=198.51.100.17", Some(v4)),
            ("proto=http;for=192.0.2.43;by=203.0.113.60", Some(v4)),
            ("for=\"[2001:db8:cafe::17]\"", Some(v6)),
            ("for=\"[2001:db8:cafe::17]:4711\"", Some(v6)),
            ("for=2001:db8:cafe::17", Some(v6)),
            ("for=unknown", None),
            ("for=_hidden", None),
            ("for=\"[1.2.3.4]\"", None),
            ("for=[", None),
            ("by=192.0.2.43", None),
            ("", None),
        ] {
            assert_eq!(parse_forwarded_for(value), want, "{value:?}");
        }
    }

    #[test]
    fn rejects_bad_targets() {
        for bad in ["foo", "foo:80", "1.2.3.4", "1.2.3.4:99999", "1.2.3.4:0", "u@1.2.3.4:80"] {
            assert_eq!(parse_target(bad), None, "{bad:?}");
        }
        assert!(parse_target("[::1]:15008").is_some());
    }

    #[test]
    fn rejects_non_connect() {
        let mut http = ConnectRequest::new("1.2.3.4:80".parse().expect("addr"))
            .to_http()
            .expect("valid");
        *http.method_mut() = Method::GET;
        assert_eq!(ConnectRequest::from_http(&http), Err(Rejection::NotConnect));
    }

    #[test]
    fn unsendable_header_is_an_error() {
        let mut req = ConnectRequest::new("1.2.3.4:80".parse().expect("addr"));
        req.baggage = Some("a\nb".into());
        assert!(matches!(req.to_http(), Err(Error::InvalidHeader { field: "baggage" })));
    }
}
