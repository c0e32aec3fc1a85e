//! Request-line parsing: the URL path into a [`Route`] and the query string into [`Query`].
//! Knows the API server's path grammar, not which resources exist (see `resources`).

use std::collections::HashMap;

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`
    ResourceList {
        group: String,
        version: String,
    },
    OpenApiV2,
    OpenApiV3Index,
    /// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`
    OpenApiV3 {
        group: String,
        version: String,
    },
    Resource(ResourcePath),
    Unknown,
}

/// A path under a group version addressing objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourcePath {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
    pub(crate) plural: String,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

/// Parses a request path.
pub(crate) fn parse(path: &str) -> Route {
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "readyz" | "livez", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group((*group).to_owned()),
        ["api", version] => Route::ResourceList {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["apis", group, version] => Route::ResourceList {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3Index,
        ["openapi", "v3", "api", version] => Route::OpenApiV3 {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["openapi", "v3", "apis", group, version] => Route::OpenApiV3 {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => Route::Unknown,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let owned = |s: &str| Some(s.to_owned());
    let (namespace, plural, name, subresource) = match rest {
        ["namespaces", namespace, sub @ ("status" | "finalize")] if group.is_empty() => {
            (None, "namespaces", owned(namespace), owned(sub))
        }
        ["namespaces", namespace, plural] => (owned(namespace), *plural, None, None),
        ["namespaces", namespace, plural, name] => (owned(namespace), *plural, owned(name), None),
        ["namespaces", namespace, plural, name, sub] => (owned(namespace), *plural, owned(name), owned(sub)),
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, owned(name), None),
        [plural, name, sub] => (None, *plural, owned(name), owned(sub)),
        _ => return Route::Unknown,
    };
    Route::Resource(ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        plural: plural.to_owned(),
        name,
        subresource,
    })
}

/// Decoded query parameters (the last occurrence of a key wins).
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    params: HashMap<String, String>,
}

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Self {
        let params = query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(key), form_decode(value))
            })
            .collect();
        Query { params }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Whether a boolean parameter is set (`true` or `1`).
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn form_decode(text: &str) -> String {
    percent_decode(&text.replace('+', " "))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(group: &str, namespace: Option<&str>, plural: &str, name: Option<&str>, sub: Option<&str>) -> Route {
        Route::Resource(ResourcePath {
            group: group.to_owned(),
            version: "v1".to_owned(),
            namespace: namespace.map(str::to_owned),
            plural: plural.to_owned(),
            name: name.map(str::to_owned),
            subresource: sub.map(str::to_owned),
        })
    }

    #[test]
    fn parses_resource_paths() {
        assert_eq!(parse("/api/v1/namespaces"), path("", None, "namespaces", None, None));
        assert_eq!(
            parse("/api/v1/namespaces/foo"),
            path("", None, "namespaces", Some("foo"), None)
        );
        assert_eq!(
            parse("/api/v1/namespaces/foo/status"),
            path("", None, "namespaces", Some("foo"), Some("status"))
        );
        assert_eq!(
            parse("/api/v1/namespaces/foo/pods"),
            path("", Some("foo"), "pods", None, None)
        );
        assert_eq!(
            parse("/api/v1/namespaces/foo/serviceaccounts/sa/token"),
            path("", Some("foo"), "serviceaccounts", Some("sa"), Some("token"))
        );
        assert_eq!(
            parse("/apis/x.io/v1/namespaces/ns/status"),
            path("x.io", Some("ns"), "status", None, None)
        );
        assert_eq!(
            parse("/apis/x.io/v1/widgets"),
            path("x.io", None, "widgets", None, None)
        );
        assert_eq!(
            parse("/apis/x.io/v1"),
            Route::ResourceList {
                group: "x.io".to_owned(),
                version: "v1".to_owned()
            }
        );
        assert_eq!(parse("/livez/ping"), Route::Health);
        assert_eq!(parse("/nope"), Route::Unknown);
    }

    #[test]
    fn decodes_queries() {
        let query = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&limit=5"));
        assert_eq!(query.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(query.flag("watch"));
        assert_eq!(query.get("limit"), Some("5"));
        assert_eq!(query.get("missing"), None);
    }
}
