//! Step 6 of a request (and 8, on the way back): rewrite the client's request into the one the
//! backend sees, and the backend's response head into the one the client sees.
//!
//! A proxy is two HTTP connections glued together, so headers that describe *one connection* must
//! not cross over (RFC 9110 §7.6.1): `Connection` and every header it lists, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate` and
//! `Proxy-Authorization`. Each side is framed anew on the way out (lb's `h1/server.rs` towards the client,
//! `h1` towards the backend, each writing its own Content-Length or chunked), so dropping
//! `Transfer-Encoding` is safe. `Host` stays even if `Connection` names it: it says which site is
//! asked for, not anything about the connection.
//!
//! What we add: `X-Forwarded-For` (the client address appended to any list the client sent; lb does
//! not trust or interpret inbound values, it only extends them), `X-Forwarded-Proto: http` (or
//! `https` behind `-s`; overwritten: we know the truth), and `Via: 1.1 lb` (RFC 9110 §7.6.3). The
//! client's `Host` is kept, as in the original. The three added fields are the same for every
//! request of a connection, so they are written out once, when it is accepted ([`Added`]), and
//! copied after the client's fields as they are (`h1::Conn::start`); only a client that sent its
//! own `X-Forwarded-For` gets them written anew.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, StatusCode, Uri, Version};

use crate::h1::{Fields, HeadFields};

/// Headers that never cross a proxy, beyond those named in `Connection`.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Does this request ask to switch protocols (e.g. WebSocket)? Then `Upgrade` must pass through.
/// Only HTTP/1.1 can: a server must ignore `Upgrade` in an HTTP/1.0 request (RFC 9110 §7.8).
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// The fields lb adds to the requests of one client connection, as the bytes of their lines:
/// `X-Forwarded-For` with the client's address, `X-Forwarded-Proto`, and `Via` (one set for
/// HTTP/1.1 requests, one for HTTP/1.0).
#[derive(Debug, Clone)]
pub struct Added {
    client_ip: HeaderValue,
    scheme: &'static str,
    http11: Bytes,
    http10: Bytes,
}

impl Added {
    /// The fields for a client at `client_ip`, which connected over `scheme` (`http`, `https`).
    pub fn new(client_ip: HeaderValue, scheme: &'static str) -> Self {
        let lines = |version| added_lines(client_ip.as_bytes(), scheme, version);
        Added {
            http11: lines(Version::HTTP_11),
            http10: lines(Version::HTTP_10),
            client_ip,
            scheme,
        }
    }

    /// The lines for a request of `version` whose client sent no `X-Forwarded-For`.
    fn lines(&self, version: Version) -> Bytes {
        match version {
            Version::HTTP_10 => self.http10.clone(),
            _ => self.http11.clone(),
        }
    }
}

/// `x-forwarded-for: <for>\r\nx-forwarded-proto: <scheme>\r\nvia: 1.x lb\r\n`.
fn added_lines(forwarded_for: &[u8], scheme: &str, version: Version) -> Bytes {
    let mut lines = BytesMut::with_capacity(64 + forwarded_for.len());
    lines.put_slice(b"x-forwarded-for: ");
    lines.put_slice(forwarded_for);
    lines.put_slice(b"\r\nx-forwarded-proto: ");
    lines.put_slice(scheme.as_bytes());
    lines.put_slice(b"\r\nvia: ");
    lines.put_slice(via_value(version).as_bytes());
    lines.put_slice(b"\r\n");
    lines.freeze()
}

/// Turn the client's request head into the backend's: new target, HTTP/1.1, no hop-by-hop
/// fields. Returns the lines of the fields lb adds, to be written after the head's own.
pub fn request(parts: &mut request::Parts, target: Uri, added: &Added, backend: &str) -> Bytes {
    let upgrade = is_upgrade(parts.version, &parts.headers);
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    let version = parts.version;
    remove_hop_by_hop(&mut parts.headers);
    if let (true, Some(protocol)) = (upgrade, upgrade_value) {
        parts.headers.insert(header::UPGRADE, protocol);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    parts.uri = target;
    parts.version = Version::HTTP_11;
    // HTTP/1.0 clients may omit Host; an HTTP/1.1 request must carry one (RFC 9112 §3.2).
    if !parts.headers.contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(backend) {
            parts.headers.insert(header::HOST, host);
        }
    }
    // lb's X-Forwarded-Proto replaces the client's; its X-Forwarded-For extends the client's.
    let (mut proto_sent, mut forwarded_sent) = (false, false);
    for name in parts.headers.keys() {
        proto_sent |= name == X_FORWARDED_PROTO;
        forwarded_sent |= name == X_FORWARDED_FOR;
    }
    if proto_sent {
        parts.headers.remove(&X_FORWARDED_PROTO);
    }
    if !forwarded_sent {
        return added.lines(version);
    }
    let list = forwarded_for(&parts.headers, &added.client_ip);
    parts.headers.remove(&X_FORWARDED_FOR);
    added_lines(list.as_bytes(), added.scheme, version)
}

/// Clean the fields of a backend's response (status `status`, HTTP/1.x `version`) for the client.
/// A `101 Switching Protocols` keeps its `Upgrade`/`Connection` headers, since the client needs
/// them to finish the switch. Returns the line lb adds, `Via`, to be written after them.
pub fn response(status: StatusCode, version: Version, fields: &mut Fields) -> &'static [u8] {
    // A backend that sends both Content-Length and Transfer-Encoding was framed by the latter,
    // and the Content-Length is wrong: it must not reach the client (RFC 9112 §6.3 item 3).
    if fields.contains(&header::TRANSFER_ENCODING) {
        fields.remove(b"content-length");
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        remove_hop_by_hop(fields);
    }
    match version {
        Version::HTTP_10 => b"via: 1.0 lb\r\n",
        _ => b"via: 1.1 lb\r\n",
    }
}

/// The `Via` value lb adds to a message that came to it in HTTP `version` (RFC 9110 §7.6.3).
fn via_value(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0 lb",
        _ => "1.1 lb",
    }
}

/// Remove `Connection`, every header it names, and the fixed hop-by-hop list. `TE: trailers` is the
/// one `TE` value a proxy may forward.
fn remove_hop_by_hop(headers: &mut impl HeadFields) {
    // Most heads carry none of them: one look at each name is cheaper than nine lookups.
    let hop = |name: &[u8]| {
        name.eq_ignore_ascii_case(b"te")
            || HOP_BY_HOP
                .iter()
                .any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
    };
    if !headers.names().any(hop) {
        return;
    }
    let named: Vec<Vec<u8>> = connection_tokens(headers)
        .filter(|token| !token.eq_ignore_ascii_case(b"host"))
        .map(<[u8]>::to_vec)
        .collect();
    for name in named.iter().map(Vec::as_slice) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name.as_bytes());
    }
    let te_trailers = headers
        .values(&header::TE)
        .all(|v| v.eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(b"te");
    }
}

/// The comma-separated options of every `Connection` header (RFC 9110 §7.6.1), trimmed.
fn connection_tokens(headers: &impl HeadFields) -> impl Iterator<Item = &[u8]> {
    headers
        .values(&header::CONNECTION)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// `<what the client sent>, <client ip>`: the value of lb's one `X-Forwarded-For` line.
fn forwarded_for(headers: &HeaderMap, client_ip: &HeaderValue) -> String {
    let mut list = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(text) = value.to_str() {
            list.push_str(text);
            list.push_str(", ");
        }
    }
    list.push_str(client_ip.to_str().unwrap_or_default());
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = http::Request::builder().uri("/x").version(Version::HTTP_11);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut p = parts(&[
            ("host", "h"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("proxy-authorization", "basic x"),
            ("x-kept", "yes"),
        ]);
        let added = Added::new(HeaderValue::from_static("10.0.0.1"), "http");
        let lines = request(&mut p, Uri::from_static("/y"), &added, "b:1");
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(!p.headers.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(p.headers["x-kept"], "yes");
        assert_eq!(p.headers["host"], "h");
        assert_eq!(p.uri, "/y");
        assert_eq!(
            lines,
            "x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nvia: 1.1 lb\r\n"
        );
    }

    /// Forward `p` to target `/` for client 127.0.0.1 over https, backend `b:1`; the lines lb adds.
    fn forward_to_b1(p: &mut request::Parts) -> Bytes {
        let added = Added::new(HeaderValue::from_static("127.0.0.1"), "https");
        request(p, Uri::from_static("/"), &added, "b:1")
    }

    #[test]
    fn forwarded_for_is_appended_and_forwarded_proto_replaced() {
        let mut p = parts(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "gopher"),
            ("via", "1.0 squid"),
        ]);
        let lines = forward_to_b1(&mut p);
        assert_eq!(
            lines,
            "x-forwarded-for: 1.2.3.4, 5.6.7.8, 127.0.0.1\r\nx-forwarded-proto: https\r\n\
             via: 1.1 lb\r\n"
        );
        assert!(!p.headers.contains_key("x-forwarded-for"), "one line, lb's");
        assert!(
            !p.headers.contains_key("x-forwarded-proto"),
            "lb's replaces it"
        );
        assert_eq!(p.headers["via"], "1.0 squid", "lb's Via is added after");
        assert_eq!(
            p.headers["host"], "b:1",
            "a missing Host is filled in with the backend"
        );
    }

    /// `Connection: host` must not make lb drop the client's Host (and put a backend's name in).
    #[test]
    fn host_named_in_connection_is_kept() {
        let mut p = parts(&[
            ("host", "site.test"),
            ("connection", "host, x-a"),
            ("x-a", "1"),
        ]);
        forward_to_b1(&mut p);
        assert_eq!(p.headers["host"], "site.test");
        assert!(!p.headers.contains_key("x-a"));
    }

    #[test]
    fn an_http_1_0_request_says_so_in_via() {
        let mut p = parts(&[("host", "h")]);
        p.version = Version::HTTP_10;
        let lines = forward_to_b1(&mut p);
        assert!(lines.ends_with(b"\r\nvia: 1.0 lb\r\n"), "{lines:?}");
        assert_eq!(p.version, Version::HTTP_11);
    }

    /// A backend's response: `Connection` and what it names go (whatever their case), and so do
    /// the fixed hop-by-hop fields; a `Content-Length` beside `Transfer-Encoding` is dropped;
    /// everything else stays as it came, and lb's `Via` goes after it.
    #[test]
    fn a_response_loses_its_hop_by_hop_fields() {
        let mut fields = Fields::of_response(
            b"HTTP/1.1 200 OK\r\nConnection: X-Backend-Secret, keep-alive\r\n\
              x-backend-secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n\
              Transfer-Encoding: chunked\r\nContent-Length: 12\r\nX-Served-By: b1\r\n\r\n",
        )
        .unwrap();
        let via = response(StatusCode::OK, Version::HTTP_11, &mut fields);
        assert_eq!(fields.names().collect::<Vec<_>>(), [&b"X-Served-By"[..]]);
        assert_eq!(via, b"via: 1.1 lb\r\n");

        let mut fields = Fields::of_response(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n");
        let via = response(StatusCode::OK, Version::HTTP_10, fields.as_mut().unwrap());
        assert_eq!(
            fields.unwrap().get(&header::CONTENT_LENGTH),
            Some(&b"3"[..])
        );
        assert_eq!(via, b"via: 1.0 lb\r\n");
    }

    /// A `101` keeps `Upgrade` and `Connection`: the client needs them to finish the switch.
    #[test]
    fn a_switching_response_keeps_its_upgrade() {
        let mut fields = Fields::of_response(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        response(
            StatusCode::SWITCHING_PROTOCOLS,
            Version::HTTP_11,
            &mut fields,
        );
        assert_eq!(
            fields.names().collect::<Vec<_>>(),
            [&b"Upgrade"[..], b"Connection"]
        );
    }

    #[test]
    fn te_trailers_and_upgrades_pass() {
        let mut p = parts(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        forward_to_b1(&mut p);
        assert_eq!(p.headers["te"], "trailers");
        assert_eq!(p.headers["upgrade"], "websocket");
        assert_eq!(p.headers["connection"], "upgrade");
    }
}
