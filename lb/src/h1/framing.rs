//! Where a message's body ends: the one question an HTTP/1.1 proxy must never get wrong.
//!
//! HTTP/1.1 sends messages back to back on one connection, so each side must agree on exactly
//! where one body ends and the next message begins. If lb and a backend (or lb and a client)
//! could disagree, bytes of one response could be read as the next one: *response smuggling*.
//! RFC 9112 §6.3 gives the rules, in order; [`response_body`] applies them to a backend's
//! response, [`request_body`] picks how lb frames the request it sends.

use http::{header, Method, StatusCode, Version};

use super::{Error, HeadFields};

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body, whatever the headers say.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the backend closes the connection.
    UntilClose,
}

/// How a response is framed, and whether its connection can carry another exchange after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub body: ResponseBody,
    /// False when the response itself rules reuse out (`Connection: close`, HTTP/1.0 without
    /// keep-alive, a body that ends with the connection, a suspicious framing).
    pub reusable: bool,
}

/// Apply RFC 9112 §6.3 to a response to a request with `method`.
pub fn response_body(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &impl HeadFields,
) -> Result<Framing, Error> {
    let mut reusable = keeps_alive(version, headers);
    // 1. A response to HEAD, and any 1xx, 204 or 304 response, ends at its head: whatever length
    //    its headers announce describes the resource, not bytes on the wire.
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // A 204 may not announce a body at all, nor a 304 a coding (RFC 9110 §8.6, RFC 9112
        // §6.1): a backend that does may send one anyway, which would be read as the next
        // response. Such a connection is not reused.
        let announces_body = headers.contains(&header::TRANSFER_ENCODING)
            || (status == StatusCode::NO_CONTENT
                && content_length(headers).map_or(true, |n| n.unwrap_or(0) > 0));
        if announces_body && *method != Method::HEAD {
            reusable = false;
        }
        return Ok(Framing {
            body: ResponseBody::None,
            reusable,
        });
    }
    // 3. Transfer-Encoding overrides Content-Length. If both are present the message may be an
    //    attempt at smuggling: read it by Transfer-Encoding and close the connection after it.
    if headers.contains(&header::TRANSFER_ENCODING) {
        if headers.contains(&header::CONTENT_LENGTH) || version == Version::HTTP_10 {
            reusable = false;
        }
        // Chunked must be the final coding; if it is not, the body ends when the connection does.
        return Ok(if final_coding_is_chunked(headers) {
            Framing {
                body: ResponseBody::Chunked,
                reusable,
            }
        } else {
            Framing {
                body: ResponseBody::UntilClose,
                reusable: false,
            }
        });
    }
    // 4-5. A valid Content-Length is the length; an invalid one is an unrecoverable error.
    if let Some(length) = content_length(headers)? {
        return Ok(Framing {
            body: ResponseBody::Length(length),
            reusable,
        });
    }
    // 7. Otherwise the body is everything until the connection closes.
    Ok(Framing {
        body: ResponseBody::UntilClose,
        reusable: false,
    })
}

/// RFC 9112 §9.3: an HTTP/1.1 connection persists unless `Connection: close`; an HTTP/1.0 one
/// only with `Connection: keep-alive`.
pub fn keeps_alive(version: Version, headers: &impl HeadFields) -> bool {
    let lists = |token: &str| {
        headers
            .values(&header::CONNECTION)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    match version {
        Version::HTTP_11 => !lists("close"),
        _ => lists("keep-alive") && !lists("close"),
    }
}

/// Is `chunked` the last coding of the (possibly several) Transfer-Encoding headers?
fn final_coding_is_chunked(headers: &impl HeadFields) -> bool {
    headers
        .values(&header::TRANSFER_ENCODING)
        .last()
        .and_then(|v| v.rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// RFC 9110 §8.6: Content-Length is digits. Several fields or a list are accepted only when every
/// value is the same (§8.6 lets a recipient take that as one); anything else is an error.
fn content_length(headers: &impl HeadFields) -> Result<Option<u64>, Error> {
    let mut length = None;
    for value in headers.values(&header::CONTENT_LENGTH) {
        for item in value.split(|&b| b == b',') {
            let n = parse_digits(item.trim_ascii())
                .ok_or(Error::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|seen| seen != n) {
                return Err(Error::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Decimal digits only (no sign, no spaces, no `0x`; leading zeros are fine), within 64 bits.
pub fn parse_digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// How a request's body is delimited: as a client sent it ([`client_request`]), or as lb sends it
/// on ([`request_body`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// No body: nothing after the head.
    None,
    /// The head carries `Content-Length`; exactly this many bytes follow.
    Length(u64),
    /// The chunked coding (`Transfer-Encoding: chunked`): lb decodes a client's, and chunks a body
    /// it sends on whose length it does not know.
    Chunked,
}

/// How a client's request is framed: RFC 9112 §6.3 items 3 to 6, the rules that apply to
/// requests. Returns the framing, and whether the connection must close after this request.
/// Anything that two parsers could read two ways is an error (400, then close), never a guess:
/// that ambiguity is what *request smuggling* exploits.
pub fn client_request(
    version: Version,
    headers: &mut impl HeadFields,
) -> Result<(RequestBody, bool), Error> {
    if headers.contains(&header::TRANSFER_ENCODING) {
        // §6.1: HTTP/1.0 has no transfer codings; a server must treat such framing as faulty.
        if version != Version::HTTP_11 {
            return Err(Error::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        // Item 4: a request whose final coding is not chunked has no knowable length.
        if !final_coding_is_chunked(headers) {
            return Err(Error::Malformed(
                "Transfer-Encoding without chunked as its final coding",
            ));
        }
        // Item 3: with both headers, Transfer-Encoding wins and Content-Length is dropped; the
        // message may be an attempt to smuggle a request past a proxy that reads the other one,
        // so the connection closes after it (what follows is never read as a request).
        let both = headers.contains(&header::CONTENT_LENGTH);
        headers.remove(b"content-length");
        return Ok((RequestBody::Chunked, both));
    }
    // Item 5 (and item 6: neither header, no body).
    Ok(match content_length(headers)? {
        Some(n) => (RequestBody::Length(n), false),
        None => (RequestBody::None, false),
    })
}

/// How the request lb sends is framed. lb always writes the framing header itself (and never
/// copies the client's `Content-Length` or `Transfer-Encoding`), so the backend can only ever see
/// one framing: a body of known length (`exact`: the client's `Content-Length`, checked by [`client_request`], or it
/// is a kept copy) goes with `Content-Length`, as does an empty body the client announced with
/// `Content-Length: 0`; a body of unknown length (it came chunked) goes chunked; no body, nothing.
pub fn request_body(headers: &impl HeadFields, exact: Option<u64>, has_body: bool) -> RequestBody {
    let announced = headers.contains(&header::CONTENT_LENGTH);
    match exact {
        Some(n) if has_body || announced => RequestBody::Length(n),
        _ if !has_body => RequestBody::None,
        _ => RequestBody::Chunked,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn framing(method: Method, status: u16, fields: &[(&str, &str)]) -> Result<Framing, Error> {
        response_body(
            &method,
            StatusCode::from_u16(status).unwrap(),
            Version::HTTP_11,
            &headers(fields),
        )
    }

    fn body(method: Method, status: u16, fields: &[(&str, &str)]) -> ResponseBody {
        framing(method, status, fields).unwrap().body
    }

    /// §6.3 rule 1.
    #[test]
    fn head_1xx_204_and_304_have_no_body_whatever_the_headers_say() {
        let lying = [("content-length", "5")];
        assert_eq!(body(Method::HEAD, 200, &lying), ResponseBody::None);
        assert_eq!(body(Method::GET, 204, &lying), ResponseBody::None);
        assert_eq!(body(Method::GET, 304, &lying), ResponseBody::None);
        assert_eq!(body(Method::GET, 100, &lying), ResponseBody::None);
        let chunked = [("transfer-encoding", "chunked")];
        assert_eq!(body(Method::HEAD, 200, &chunked), ResponseBody::None);
        assert_eq!(body(Method::GET, 204, &chunked), ResponseBody::None);
    }

    /// §6.3 rule 3: chunked wins over Content-Length, and the connection is not reused.
    #[test]
    fn transfer_encoding_overrides_content_length_and_closes() {
        let both = framing(
            Method::GET,
            200,
            &[("content-length", "3"), ("transfer-encoding", "chunked")],
        )
        .unwrap();
        assert_eq!(both.body, ResponseBody::Chunked);
        assert!(!both.reusable);
        let chunked = framing(Method::GET, 200, &[("transfer-encoding", "chunked")]).unwrap();
        assert_eq!(chunked.body, ResponseBody::Chunked);
        assert!(chunked.reusable);
    }

    /// §6.3 rule 3: chunked not last means the body runs to the close.
    #[test]
    fn chunked_must_be_the_final_coding() {
        assert_eq!(
            body(Method::GET, 200, &[("transfer-encoding", "gzip, chunked")]),
            ResponseBody::Chunked
        );
        assert_eq!(
            body(
                Method::GET,
                200,
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "Chunked")
                ]
            ),
            ResponseBody::Chunked
        );
        for coding in ["chunked, gzip", "gzip", "identity"] {
            let f = framing(Method::GET, 200, &[("transfer-encoding", coding)]).unwrap();
            assert_eq!(f.body, ResponseBody::UntilClose, "{coding}");
            assert!(!f.reusable);
        }
    }

    /// §6.3 rule 4: an invalid Content-Length is an unrecoverable error (lb answers 502).
    #[test]
    fn invalid_content_length_is_an_error() {
        for bad in [
            "-1",
            "+5",
            "5 5",
            "0x10",
            "abc",
            "",
            "99999999999999999999999",
        ] {
            assert!(
                framing(Method::GET, 200, &[("content-length", bad)]).is_err(),
                "{bad:?} must be refused"
            );
        }
        assert!(framing(
            Method::GET,
            200,
            &[("content-length", "5"), ("content-length", "6")]
        )
        .is_err());
        assert!(framing(Method::GET, 200, &[("content-length", "5, 6")]).is_err());
    }

    /// RFC 9110 §8.6: the same length repeated is one length.
    #[test]
    fn repeated_identical_lengths_are_one() {
        assert_eq!(
            body(Method::GET, 200, &[("content-length", "5, 5")]),
            ResponseBody::Length(5)
        );
        assert_eq!(
            body(
                Method::GET,
                200,
                &[("content-length", "5"), ("content-length", "5")]
            ),
            ResponseBody::Length(5)
        );
    }

    /// §6.3 rule 5.
    #[test]
    fn content_length_is_the_length() {
        let f = framing(Method::GET, 200, &[("content-length", "13")]).unwrap();
        assert_eq!(f.body, ResponseBody::Length(13));
        assert!(f.reusable);
        assert_eq!(
            body(Method::GET, 200, &[("content-length", "0")]),
            ResponseBody::Length(0)
        );
    }

    /// §6.3 rule 7.
    #[test]
    fn no_framing_reads_until_close() {
        let f = framing(Method::GET, 200, &[]).unwrap();
        assert_eq!(f.body, ResponseBody::UntilClose);
        assert!(!f.reusable);
    }

    /// RFC 9112 §9.3: when the connection persists.
    #[test]
    fn persistence_follows_the_version_and_connection_header() {
        let f = framing(
            Method::GET,
            200,
            &[("content-length", "1"), ("connection", "Close")],
        )
        .unwrap();
        assert!(!f.reusable);
        let ok = [("content-length", "1")];
        let http10 = |fields: &[(&str, &str)]| {
            response_body(
                &Method::GET,
                StatusCode::OK,
                Version::HTTP_10,
                &headers(fields),
            )
            .unwrap()
            .reusable
        };
        assert!(!http10(&ok));
        assert!(http10(&[
            ("content-length", "1"),
            ("connection", "keep-alive")
        ]));
    }

    fn client_framing(
        version: Version,
        fields: &[(&str, &str)],
    ) -> Result<(RequestBody, bool), Error> {
        client_request(version, &mut headers(fields))
    }

    /// §6.3 items 3 to 6, for requests.
    #[test]
    fn a_client_request_is_framed_by_chunked_else_its_length_else_has_no_body() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            client_framing(v11, &[]).unwrap(),
            (RequestBody::None, false)
        );
        assert_eq!(
            client_framing(v11, &[("content-length", "007")]).unwrap(),
            (RequestBody::Length(7), false)
        );
        assert_eq!(
            client_framing(v11, &[("transfer-encoding", "chunked")]).unwrap(),
            (RequestBody::Chunked, false)
        );
        // Both: chunked wins, the length goes, and the connection closes after.
        let mut both = headers(&[("content-length", "3"), ("transfer-encoding", "chunked")]);
        assert_eq!(
            client_request(v11, &mut both).unwrap(),
            (RequestBody::Chunked, true)
        );
        assert!(!both.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn a_client_request_framed_two_ways_is_refused() {
        let v11 = Version::HTTP_11;
        for fields in [
            &[("transfer-encoding", "gzip")][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "identity"),
            ],
            &[("transfer-encoding", "xchunked")],
            &[("content-length", "3"), ("content-length", "5")],
            &[("content-length", "3,2")],
            &[("content-length", "+1")],
            &[("content-length", "-1")],
        ] {
            assert!(client_framing(v11, fields).is_err(), "{fields:?}");
        }
        assert!(client_framing(Version::HTTP_10, &[("transfer-encoding", "chunked")]).is_err());
    }

    #[test]
    fn requests_keep_their_length_or_are_chunked() {
        let length = headers(&[("content-length", "1024")]);
        assert_eq!(
            request_body(&length, Some(1024), true),
            RequestBody::Length(1024)
        );
        let zero = headers(&[("content-length", "0")]);
        assert_eq!(request_body(&zero, Some(0), false), RequestBody::Length(0));
        assert_eq!(
            request_body(&headers(&[]), None, true),
            RequestBody::Chunked
        );
        assert_eq!(
            request_body(&headers(&[]), Some(0), false),
            RequestBody::None
        );
        // A kept copy of a body that came chunked has a known length: it goes with one.
        assert_eq!(
            request_body(&headers(&[]), Some(5), true),
            RequestBody::Length(5)
        );
    }

    #[test]
    fn lengths_may_have_leading_zeros_but_not_overflow() {
        assert_eq!(parse_digits(b"00000000000000000005"), Some(5));
        assert_eq!(parse_digits(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_digits(b"18446744073709551616"), None);
        assert_eq!(
            body(
                Method::GET,
                200,
                &[("content-length", "000000000000000000007")]
            ),
            ResponseBody::Length(7)
        );
    }

    /// A 204 that announces a body (or a 304 a coding) may send one: its connection is not reused.
    #[test]
    fn bodiless_statuses_that_announce_a_body_are_not_reused() {
        let f = framing(Method::GET, 204, &[("content-length", "5")]).unwrap();
        assert_eq!(f.body, ResponseBody::None);
        assert!(!f.reusable);
        assert!(
            !framing(Method::GET, 304, &[("transfer-encoding", "chunked")])
                .unwrap()
                .reusable
        );
        assert!(
            framing(Method::GET, 204, &[("content-length", "0")])
                .unwrap()
                .reusable
        );
        assert!(
            framing(Method::GET, 304, &[("content-length", "5")])
                .unwrap()
                .reusable
        );
        assert!(
            framing(Method::HEAD, 200, &[("content-length", "5")])
                .unwrap()
                .reusable
        );
    }
}
