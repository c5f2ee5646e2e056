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
//! copied after the client's fields as they are (`h1::Conn::start`); they are written anew only
//! for a request that needs other lines: its client sent its own `X-Forwarded-For`, it asks for
//! an upgrade, or it is HTTP/1.0 (`Via: 1.0 lb`).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{StatusCode, Uri, Version};

use crate::h1::{visible_text, Fields, HeadFields, RequestHead};

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
pub fn is_upgrade(version: Version, headers: &impl HeadFields) -> bool {
    version == Version::HTTP_11
        && headers.contains(&header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// The fields lb adds to the requests of one client connection, as the bytes of their lines:
/// `X-Forwarded-For` with the client's address, `X-Forwarded-Proto`, and `Via`, written once for
/// the connection's HTTP/1.1 requests (one small allocation per connection, kept while it idles).
#[derive(Debug, Clone)]
pub struct Added {
    lines: Bytes,
    /// The length of the client's address, which follows `x-forwarded-for: ` in `lines`.
    ip_len: usize,
    scheme: &'static str,
}

const FORWARDED_FOR: &[u8] = b"x-forwarded-for: ";

impl Added {
    /// The fields for a client at `client_ip`, which connected over `scheme` (`http`, `https`).
    pub fn new(client_ip: &str, scheme: &'static str) -> Self {
        Added {
            lines: added_lines(client_ip.as_bytes(), scheme, Version::HTTP_11),
            ip_len: client_ip.len(),
            scheme,
        }
    }

    /// The client's address.
    fn client_ip(&self) -> &[u8] {
        &self.lines[FORWARDED_FOR.len()..FORWARDED_FOR.len() + self.ip_len]
    }

    /// The lines for a request of `version` whose client sent no `X-Forwarded-For` (an HTTP/1.0
    /// request's are written for it: its `Via` says 1.0).
    fn lines(&self, version: Version) -> Bytes {
        match version {
            Version::HTTP_10 => added_lines(self.client_ip(), self.scheme, version),
            _ => self.lines.clone(),
        }
    }
}

/// `x-forwarded-for: <for>\r\nx-forwarded-proto: <scheme>\r\nvia: 1.x lb\r\n`.
fn added_lines(forwarded_for: &[u8], scheme: &str, version: Version) -> Bytes {
    let mut lines = BytesMut::with_capacity(64 + forwarded_for.len());
    lines.put_slice(FORWARDED_FOR);
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
pub fn request(head: &mut RequestHead, target: Uri, added: &Added) -> Bytes {
    let version = head.version;
    let upgrade = match is_upgrade(version, &head.fields) {
        true => head.fields.get_shared(&header::UPGRADE),
        false => None,
    };
    remove_hop_by_hop(&mut head.fields);
    head.uri = target;
    head.version = Version::HTTP_11;
    // lb's X-Forwarded-Proto replaces the client's; its X-Forwarded-For extends the client's.
    let (mut proto_sent, mut forwarded_sent) = (false, false);
    for name in head.fields.names() {
        proto_sent |= name.eq_ignore_ascii_case(X_FORWARDED_PROTO.as_str().as_bytes());
        forwarded_sent |= name.eq_ignore_ascii_case(X_FORWARDED_FOR.as_str().as_bytes());
    }
    if proto_sent {
        head.fields.remove(X_FORWARDED_PROTO.as_str().as_bytes());
    }
    if !forwarded_sent && upgrade.is_none() {
        return added.lines(version); // the usual case: the connection's lines, as they are
    }
    let mut lines = BytesMut::new();
    if let Some(protocol) = upgrade {
        // A protocol switch keeps its `Upgrade`, and says so in lb's own `Connection`.
        lines.put_slice(b"upgrade: ");
        lines.put_slice(&protocol);
        lines.put_slice(b"\r\nconnection: upgrade\r\n");
    }
    if forwarded_sent {
        let list = forwarded_for(&head.fields, added.client_ip());
        head.fields.remove(X_FORWARDED_FOR.as_str().as_bytes());
        lines.put_slice(&added_lines(list.as_bytes(), added.scheme, version));
    } else {
        lines.put_slice(&added.lines(version));
    }
    lines.freeze()
}

/// `lines` with a `Host` naming `backend` in front: HTTP/1.0 clients may omit Host, and an
/// HTTP/1.1 request must carry one (RFC 9112 §3.2). Written per attempt, since a retry goes to
/// another backend.
pub fn with_host(lines: &[u8], backend: &str) -> Bytes {
    let mut with_host = BytesMut::with_capacity(lines.len() + backend.len() + 8);
    with_host.put_slice(b"host: ");
    with_host.put_slice(backend.as_bytes());
    with_host.put_slice(b"\r\n");
    with_host.put_slice(lines);
    with_host.freeze()
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

/// `<what the client sent>, <client ip>`: the value of lb's one `X-Forwarded-For` line. Values
/// that are not visible ASCII are left out.
fn forwarded_for(headers: &Fields, client_ip: &[u8]) -> String {
    let mut list = String::new();
    for text in headers.values(&X_FORWARDED_FOR).filter_map(visible_text) {
        list.push_str(text);
        list.push_str(", ");
    }
    list.push_str(visible_text(client_ip).unwrap_or_default());
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(fields: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: http::Method::GET,
            uri: Uri::from_static("/x"),
            version: Version::HTTP_11,
            fields: Fields::from_pairs(fields),
        }
    }

    fn has(head: &RequestHead, name: &'static str) -> bool {
        head.fields.contains(&HeaderName::from_static(name))
    }

    fn value<'h>(head: &'h RequestHead, name: &'static str) -> Option<&'h str> {
        head.fields.get_str(&HeaderName::from_static(name))
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
        let added = Added::new("10.0.0.1", "http");
        let lines = request(&mut p, Uri::from_static("/y"), &added);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(!has(&p, gone), "{gone} should be removed");
        }
        assert_eq!(value(&p, "x-kept"), Some("yes"));
        assert_eq!(value(&p, "host"), Some("h"));
        assert_eq!(p.uri, "/y");
        assert_eq!(
            lines,
            "x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nvia: 1.1 lb\r\n"
        );
    }

    /// Forward `p` to target `/` for client 127.0.0.1 over https; the lines lb adds.
    fn forward(p: &mut RequestHead) -> Bytes {
        let added = Added::new("127.0.0.1", "https");
        request(p, Uri::from_static("/"), &added)
    }

    #[test]
    fn forwarded_for_is_appended_and_forwarded_proto_replaced() {
        let mut p = parts(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("X-Forwarded-For", "5.6.7.8"),
            ("x-forwarded-proto", "gopher"),
            ("via", "1.0 squid"),
        ]);
        let lines = forward(&mut p);
        assert_eq!(
            lines,
            "x-forwarded-for: 1.2.3.4, 5.6.7.8, 127.0.0.1\r\nx-forwarded-proto: https\r\n\
             via: 1.1 lb\r\n"
        );
        assert!(!has(&p, "x-forwarded-for"), "one line, lb's");
        assert!(!has(&p, "x-forwarded-proto"), "lb's replaces it");
        assert_eq!(
            value(&p, "via"),
            Some("1.0 squid"),
            "lb's Via is added after"
        );
        assert_eq!(
            with_host(&lines, "b:1")[..],
            b"host: b:1\r\nx-forwarded-for: 1.2.3.4, 5.6.7.8, 127.0.0.1\r\n\
              x-forwarded-proto: https\r\nvia: 1.1 lb\r\n"[..],
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
        forward(&mut p);
        assert_eq!(value(&p, "host"), Some("site.test"));
        assert!(!has(&p, "x-a"));
    }

    #[test]
    fn an_http_1_0_request_says_so_in_via() {
        let mut p = parts(&[("host", "h")]);
        p.version = Version::HTTP_10;
        let lines = forward(&mut p);
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
        let lines = forward(&mut p);
        assert_eq!(value(&p, "te"), Some("trailers"));
        assert!(
            lines.starts_with(b"upgrade: websocket\r\nconnection: upgrade\r\nx-forwarded-for"),
            "{lines:?}"
        );
        assert!(
            !has(&p, "upgrade") && !has(&p, "connection"),
            "lb writes its own"
        );
    }
}
