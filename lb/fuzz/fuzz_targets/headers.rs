//! Fuzz the head rewriting (`lb::forward::request` and `lb::forward::response`) with arbitrary
//! header names and values: no panic, and no hop-by-hop header (RFC 9110 §7.6.1) survives except
//! those lb deliberately keeps (`TE: trailers`; `Upgrade` + `Connection: upgrade` on upgrades).

#![no_main]

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri, Version};
use libfuzzer_sys::fuzz_target;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn header_map(fields: Fields) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// Headers that must never cross lb, whatever the client or backend sent.
const ALWAYS_GONE: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
];

fuzz_target!(|input: (Fields, Fields, bool, u16, u16, String)| {
    let (request_fields, response_fields, http10, port, status, backend) = input;

    let (mut request, ()) = http::Request::new(()).into_parts();
    request.version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    request.headers = header_map(request_fields);
    let upgrade = lb::forward::is_upgrade(&request.headers);
    let client = SocketAddr::from(([127, 0, 0, 1], port));
    lb::forward::request(&mut request, Uri::from_static("/x"), client, "http", &backend);

    assert_eq!(request.version, Version::HTTP_11);
    assert_eq!(request.uri, "/x");
    for name in ALWAYS_GONE {
        assert!(!request.headers.contains_key(name), "request kept {name}");
    }
    if !upgrade {
        assert!(!request.headers.contains_key(header::CONNECTION));
        assert!(!request.headers.contains_key(header::UPGRADE));
    }
    for te in request.headers.get_all(header::TE) {
        assert!(te.as_bytes().eq_ignore_ascii_case(b"trailers"), "TE {te:?}");
    }
    assert!(request.headers.contains_key("x-forwarded-for"));
    assert!(request.headers.contains_key(header::VIA));

    let (mut response, ()) = http::Response::new(()).into_parts();
    response.status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers = header_map(response_fields);
    let had_te = response.headers.contains_key(header::TRANSFER_ENCODING);
    lb::forward::response(&mut response);
    if response.status != StatusCode::SWITCHING_PROTOCOLS {
        for name in ALWAYS_GONE {
            assert!(!response.headers.contains_key(name), "response kept {name}");
        }
        assert!(!response.headers.contains_key(header::CONNECTION));
    }
    if had_te {
        // The backend framed its body with Transfer-Encoding: its Content-Length is void.
        assert!(!response.headers.contains_key(header::CONTENT_LENGTH));
    }
});
