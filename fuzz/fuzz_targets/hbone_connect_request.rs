//! The HBONE CONNECT parser sees every request a client opens, before any policy: it must never
//! panic, and whatever it accepts must be a CONNECT to `ip:port` with a nonzero port.
//!
//! The request is built through `http`'s own checks, as h2 builds it, so the fuzzer spends its
//! time on values the server can actually receive rather than on bytes `http` would refuse.
#![no_main]

use ambit_hbone::ConnectRequest;
use arbitrary::Arbitrary;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: MethodChoice<'a>,
    uri: UriChoice<'a>,
    headers: Vec<(NameChoice<'a>, &'a [u8])>,
}

#[derive(Arbitrary, Debug)]
enum MethodChoice<'a> {
    Connect,
    Get,
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
enum UriChoice<'a> {
    /// As h2 builds a classic CONNECT: `:authority` alone.
    Authority(&'a str),
    /// As h2 builds other requests (or an extended CONNECT): the pseudo-headers it received.
    Parts {
        scheme: Option<&'a str>,
        authority: Option<&'a str>,
        path: Option<&'a str>,
    },
    /// Whatever `Uri` parses from a string.
    Raw(&'a str),
}

#[derive(Arbitrary, Debug)]
enum NameChoice<'a> {
    Forwarded,
    Baggage,
    Traceparent,
    Other(&'a str),
}

fn method(choice: &MethodChoice<'_>) -> Option<Method> {
    match choice {
        MethodChoice::Connect => Some(Method::CONNECT),
        MethodChoice::Get => Some(Method::GET),
        MethodChoice::Other(name) => Method::from_bytes(name.as_bytes()).ok(),
    }
}

fn uri(choice: &UriChoice<'_>) -> Option<Uri> {
    match choice {
        UriChoice::Authority(authority) => {
            let mut parts = http::uri::Parts::default();
            parts.authority = Some(authority.parse::<Authority>().ok()?);
            Uri::from_parts(parts).ok()
        }
        UriChoice::Parts {
            scheme,
            authority,
            path,
        } => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = scheme.map(str::parse::<Scheme>).transpose().ok()?;
            parts.authority = authority.map(str::parse::<Authority>).transpose().ok()?;
            parts.path_and_query = path.map(str::parse::<PathAndQuery>).transpose().ok()?;
            Uri::from_parts(parts).ok()
        }
        UriChoice::Raw(text) => text.parse().ok(),
    }
}

fn name(choice: &NameChoice<'_>) -> Option<HeaderName> {
    match choice {
        NameChoice::Forwarded => Some(http::header::FORWARDED),
        NameChoice::Baggage => Some(HeaderName::from_static("baggage")),
        NameChoice::Traceparent => Some(HeaderName::from_static("traceparent")),
        NameChoice::Other(name) => HeaderName::from_bytes(name.as_bytes()).ok(),
    }
}

fuzz_target!(|input: Input<'_>| {
    let (Some(method), Some(uri)) = (method(&input.method), uri(&input.uri)) else {
        return;
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    for (choice, value) in &input.headers {
        // Values may hold obs-text (non-UTF-8) bytes: h2 delivers them, the parser must cope.
        if let (Some(name), Ok(value)) = (name(choice), HeaderValue::from_bytes(value)) {
            request.headers_mut().append(name, value);
        }
    }
    if let Ok(parsed) = ConnectRequest::from_http(&request) {
        assert_eq!(request.method(), Method::CONNECT);
        assert_ne!(parsed.target.port(), 0, "accepted port 0 from {:?}", request.uri());
        let headers = request.headers();
        assert!(parsed.forwarded_for.is_none() || headers.contains_key(http::header::FORWARDED));
        assert!(parsed.baggage.is_none() || headers.contains_key("baggage"));
        assert!(parsed.traceparent.is_none() || headers.contains_key("traceparent"));
    }
});
