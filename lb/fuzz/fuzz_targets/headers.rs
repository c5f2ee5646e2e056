//! Fuzz the head rewriting (`lb::forward::request` and `lb::forward::response`) with arbitrary
//! header names and values: no panic, and no hop-by-hop header (RFC 9110 §7.6.1) survives except
//! those lb deliberately keeps (`TE: trailers`; `Upgrade` + `Connection: upgrade` on upgrades).

#![no_main]

use http::header;
use http::{Method, StatusCode, Uri, Version};
use lb::h1::{Fields, HeadFields, RequestHead};
use libfuzzer_sys::fuzz_target;

type Pairs = Vec<(String, String)>;

/// The fields of a head with these `pairs` (those that are not valid fields are left out, as a
/// parser would have refused the head).
fn fields(pairs: &Pairs) -> Fields {
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    Fields::from_pairs(&pairs)
}

/// Headers that must never cross lb, whatever the client or backend sent.
const ALWAYS_GONE: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
];

fn has(fields: &Fields, name: &str) -> bool {
    fields
        .names()
        .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

fuzz_target!(|input: (Pairs, Pairs, bool, String, u16, bool)| {
    let (request_fields, response_fields, http10, client_ip, status, response10) = input;

    let version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut head = RequestHead {
        method: Method::GET,
        uri: Uri::from_static("/"),
        version,
        fields: fields(&request_fields),
    };
    let upgrade = lb::forward::is_upgrade(version, &head.fields);
    let added = lb::forward::Added::new(&client_ip, "http");
    let lines = lb::forward::request(&mut head, Uri::from_static("/x"), &added);

    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.uri, "/x");
    for name in ALWAYS_GONE {
        assert!(!has(&head.fields, name), "request kept {name}");
    }
    if !upgrade {
        assert!(!has(&head.fields, "connection"));
        assert!(!has(&head.fields, "upgrade"));
    }
    for te in head.fields.values(&header::TE) {
        assert!(te.eq_ignore_ascii_case(b"trailers"), "TE {te:?}");
    }
    let lines = String::from_utf8_lossy(&lines).to_ascii_lowercase();
    assert!(lines.contains("x-forwarded-for: "), "{lines}");
    assert!(lines.contains("\r\nvia: 1."), "{lines}");
    assert!(lines.ends_with("\r\n"), "{lines}");

    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let version = if response10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut fields = fields(&response_fields);
    let had_te = fields.contains(&header::TRANSFER_ENCODING);
    let via = lb::forward::response(status, version, &mut fields);
    assert!(via.starts_with(b"via: 1."));
    if status != StatusCode::SWITCHING_PROTOCOLS {
        for name in ALWAYS_GONE {
            assert!(!has(&fields, name), "response kept {name}");
        }
        assert!(!has(&fields, "connection"));
    }
    if had_te {
        // The backend framed its body with Transfer-Encoding: its Content-Length is void.
        assert!(!fields.contains(&header::CONTENT_LENGTH));
    }
});
