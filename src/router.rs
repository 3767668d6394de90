//! Host / method / path → route, and the path normal-form check that runs
//! before any matching.

use http::Method;
use std::borrow::Cow;

use crate::forward::Upstream;
use crate::policy::Policy;

/// A compiled route: how it matches, where it forwards, what it enforces.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub upstream: Upstream,
    pub strip_prefix: bool,
    pub policies: Vec<Policy>,
}

/// `routes[].match`, compiled.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Starts with `/`; a trailing `/` (other than the root) is removed at load.
    pub path_prefix: String,
    /// `None` matches every method.
    pub methods: Option<Vec<Method>>,
    /// Lower-case, without port.
    pub host: Option<String>,
}

impl RouteMatch {
    pub fn matches(&self, host: Option<&str>, method: &Method, path: &str) -> bool {
        if let Some(required) = &self.host {
            if host != Some(required.as_str()) {
                return false;
            }
        }
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        prefix_matches(&self.path_prefix, path)
    }

    /// The path after the prefix, for `strip_prefix` (`/` when nothing is left).
    pub fn strip<'p>(&self, path: &'p str) -> &'p str {
        let rest = if self.path_prefix == "/" {
            path
        } else {
            &path[self.path_prefix.len().min(path.len())..]
        };
        if rest.is_empty() {
            "/"
        } else {
            rest
        }
    }
}

/// `/orders` matches `/orders` and `/orders/7`, never `/ordersx`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// First match in file order.
pub fn find<'r>(
    routes: &'r [Route],
    host: Option<&str>,
    method: &Method,
    path: &str,
) -> Option<&'r Route> {
    routes
        .iter()
        .find(|route| route.matcher.matches(host, method, path))
}

/// The `Host` a request names, lower-cased and without port, for matching.
pub fn host_for_matching(authority: &str) -> Cow<'_, str> {
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        // An IPv6 literal: keep `[...]`, drop any port after it.
        match bracketed.find(']') {
            Some(end) => &authority[..end + 2],
            None => authority,
        }
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host)
    };
    // Clients nearly always send a lower-case host: no copy then.
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Refuses paths that are not in normal form, so what is matched is exactly
/// what the upstream will see: dot-segments (plain or percent-encoded),
/// encoded slashes and backslashes, backslashes, NUL, empty segments, and
/// invalid percent-encoding. Nothing is ever normalised on the client's
/// behalf.
pub fn check_normal_form(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("request path must start with /");
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err("request path contains a backslash"),
            0 => return Err("request path contains NUL"),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or("request path has invalid percent-encoding")?;
                let decoded = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
                    .map_err(|_| "request path has invalid percent-encoding")?;
                match decoded {
                    b'/' | b'\\' => {
                        return Err("request path contains an encoded slash or backslash")
                    }
                    0 => return Err("request path contains NUL"),
                    _ => {}
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if path[1..].split('/').any(is_dot_segment) {
        return Err("request path contains a dot-segment");
    }
    if path.contains("//") {
        return Err("request path contains an empty segment");
    }
    Ok(())
}

/// `.` or `..`, each dot written as `.`, `%2e` or `%2E` (RFC 3986 §2.3:
/// an encoded unreserved character is the same character). No allocation:
/// this runs for every segment of every request.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return false,
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(prefix: &str) -> RouteMatch {
        RouteMatch {
            path_prefix: prefix.to_owned(),
            methods: None,
            host: None,
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let orders = matcher("/orders");
        assert!(orders.matches(None, &Method::GET, "/orders"));
        assert!(orders.matches(None, &Method::GET, "/orders/7"));
        assert!(!orders.matches(None, &Method::GET, "/ordersx"));
        assert!(!orders.matches(None, &Method::GET, "/order"));
        assert!(matcher("/").matches(None, &Method::GET, "/anything"));
        assert_eq!(orders.strip("/orders"), "/");
        assert_eq!(orders.strip("/orders/7"), "/7");
        assert_eq!(matcher("/").strip("/a"), "/a");
    }

    #[test]
    fn hosts_and_methods_narrow_a_match() {
        let m = RouteMatch {
            path_prefix: "/".into(),
            methods: Some(vec![Method::GET]),
            host: Some("api.example.com".into()),
        };
        assert!(m.matches(Some("api.example.com"), &Method::GET, "/"));
        assert!(!m.matches(Some("api.example.com"), &Method::POST, "/"));
        assert!(!m.matches(Some("other"), &Method::GET, "/"));
        assert!(!m.matches(None, &Method::GET, "/"));
        assert_eq!(host_for_matching("API.Example.com:8443"), "api.example.com");
        assert_eq!(host_for_matching("[::1]:8080"), "[::1]");
        assert_eq!(host_for_matching("[::1]"), "[::1]");
        assert_eq!(host_for_matching("localhost"), "localhost");
    }

    #[test]
    fn paths_not_in_normal_form_are_refused() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/a//b",
            "//a",
            "/a%zz",
            "/a%2",
            "relative",
        ] {
            assert!(check_normal_form(bad).is_err(), "{bad} should be refused");
        }
        for good in [
            "/",
            "/a",
            "/a/b/",
            "/a/b.c",
            "/a/..b",
            "/a/%20b",
            "/a/.well-known",
            "/a%41",
        ] {
            assert_eq!(check_normal_form(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn dot_segments_are_found_in_every_spelling_without_allocating() {
        for dot in [".", "..", "%2e", "%2E", "%2e%2E", ".%2e", "%2E."] {
            assert!(is_dot_segment(dot), "{dot}");
        }
        for other in [
            "",
            "...",
            "a",
            ".a",
            "%2f",
            "%2",
            "%2e%2e%2e",
            "%2ex",
            "%252e",
        ] {
            assert!(!is_dot_segment(other), "{other}");
        }
    }
}
