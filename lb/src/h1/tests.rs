//! One exchange at a time on a [`Conn`] over an in-memory pipe, the backend played by hand: the
//! bytes lb writes, and what it makes of the bytes it reads.

use std::future::poll_fn;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

fn pipe() -> (Conn<DuplexStream>, DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    (Conn::new(ours), theirs)
}

fn head(method: Method, target: &str, fields: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        method,
        uri: target.parse().unwrap(),
        version: http::Version::HTTP_11,
        fields: Fields::from_pairs(fields),
    }
}

fn get() -> Asked {
    Asked {
        method: Method::GET,
        upgrade: false,
    }
}

/// Send `parts` with `body`, answer with `reply`; return what the backend read and the body lb
/// read (frames joined), with the connection.
async fn exchange(
    parts: RequestHead,
    body: RequestBody,
    asked: Asked,
    reply: &[u8],
) -> (Vec<u8>, Result<(Head, Vec<u8>), Error>, Conn<DuplexStream>) {
    let (mut conn, mut backend) = pipe();
    let mut sending = conn.start(&parts, b"", body);
    poll_fn(|cx| conn.poll_send(&mut sending, cx))
        .await
        .map_err(|_| ())
        .unwrap();
    let mut seen = vec![0u8; 64 * 1024];
    let n = backend.read(&mut seen).await.unwrap();
    seen.truncate(n);
    backend.write_all(reply).await.unwrap();
    drop(backend);
    let result = async {
        let mut head = poll_fn(|cx| conn.poll_head(&asked, cx)).await?;
        let mut data = Vec::new();
        while let Some(frame) = poll_fn(|cx| conn.poll_body(&mut head.body, cx)).await {
            if let Ok(bytes) = frame?.into_data() {
                data.extend_from_slice(&bytes);
            }
        }
        Ok((head, data))
    }
    .await;
    (seen, result, conn)
}

/// `GET /` without a body, answered with `reply`.
async fn get_answered(
    reply: &[u8],
) -> (Vec<u8>, Result<(Head, Vec<u8>), Error>, Conn<DuplexStream>) {
    exchange(
        head(Method::GET, "/", &[]),
        RequestBody::replay(Vec::new()),
        get(),
        reply,
    )
    .await
}

#[tokio::test]
async fn a_get_is_written_as_its_head_alone() {
    let parts = head(Method::GET, "/x?y=1", &[("host", "h"), ("x-a", "1")]);
    let (seen, result, _) = exchange(
        parts,
        RequestBody::replay(Vec::new()),
        get(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(seen, b"GET /x?y=1 HTTP/1.1\r\nhost: h\r\nx-a: 1\r\n\r\n");
    let (head, body) = result.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(body, b"hi");
}

/// lb writes the framing header itself, from the body's known length: the client's own
/// `Content-Length` is never copied (nor its `Transfer-Encoding`), so the backend sees exactly one.
/// (A body of unknown length goes chunked: the hardening suite's chunked rows send such bodies.)
#[tokio::test]
async fn the_framing_header_is_lbs_own() {
    let chunks = || vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")];
    let ok = b"HTTP/1.1 204 No Content\r\n\r\n";
    for fields in [
        &[("content-length", "5")][..],
        &[("content-length", "0005")],
        &[("transfer-encoding", "chunked")],
        &[],
    ] {
        let parts = head(Method::POST, "/", fields);
        let (seen, _, _) = exchange(parts, RequestBody::replay(chunks()), get(), ok).await;
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nabcde",
            "{fields:?}"
        );
    }
    // An empty body announced as such keeps its `Content-Length: 0`; none announced, none sent.
    let parts = head(Method::POST, "/", &[("content-length", "0")]);
    let (seen, _, _) = exchange(parts, RequestBody::replay(Vec::new()), get(), ok).await;
    assert_eq!(seen, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    let parts = head(Method::POST, "/", &[]);
    let (seen, _, _) = exchange(parts, RequestBody::replay(Vec::new()), get(), ok).await;
    assert_eq!(seen, b"POST / HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let (_, result, conn) = get_answered(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
    )
    .await;
    let (head, body) = result.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(body, b"x");
    assert!(conn.is_reusable());
}

#[tokio::test]
async fn a_chunked_body_is_decoded_and_the_connection_stays_reusable() {
    let (_, result, conn) = get_answered(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(result.unwrap().1, b"hello");
    assert!(conn.is_reusable());
}

/// Bytes after the end of a response (a body on a 204, a stray byte) make the connection unfit:
/// they would be read as the next response.
#[tokio::test]
async fn extra_bytes_after_a_response_forbid_reuse() {
    for reply in [
        &b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiX",
    ] {
        let (_, result, conn) = get_answered(reply).await;
        assert!(result.is_ok());
        assert!(!conn.is_reusable(), "{:?}", String::from_utf8_lossy(reply));
    }
}

#[tokio::test]
async fn a_head_response_has_no_body_whatever_it_announces() {
    let asked = Asked {
        method: Method::HEAD,
        upgrade: false,
    };
    let (_, result, conn) = exchange(
        head(Method::HEAD, "/", &[]),
        RequestBody::replay(Vec::new()),
        asked,
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
    )
    .await;
    let (head, body) = result.unwrap();
    assert_eq!(
        head.fields.get(&http::header::CONTENT_LENGTH),
        Some(&b"1000"[..])
    );
    assert!(body.is_empty());
    assert!(conn.is_reusable());
}

/// A response's fields are kept as the backend wrote them (names in its case, values without the
/// spaces around them, repeated fields in order), and lookups ignore case.
#[tokio::test]
async fn a_response_keeps_its_fields_as_they_came() {
    let (_, result, _) = get_answered(
        b"HTTP/1.1 200 OK\r\nX-Served-By:  b1 \r\nSet-Cookie: a=1\r\n\
          content-length: 0\r\nset-cookie: b=2\r\n\r\n",
    )
    .await;
    let (mut head, _) = result.unwrap();
    let fields: Vec<(&[u8], &[u8])> = head.fields.iter().collect();
    assert_eq!(
        fields,
        [
            (&b"X-Served-By"[..], &b"b1"[..]),
            (b"Set-Cookie", b"a=1"),
            (b"content-length", b"0"),
            (b"set-cookie", b"b=2"),
        ]
    );
    let cookies: Vec<&[u8]> = head.fields.values(&http::header::SET_COOKIE).collect();
    assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
    head.fields.remove(b"SET-COOKIE");
    assert_eq!(
        head.fields.names().collect::<Vec<_>>(),
        [&b"X-Served-By"[..], b"content-length"]
    );
}

#[tokio::test]
async fn a_body_without_framing_ends_with_the_connection() {
    let (_, result, conn) = get_answered(b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
    assert_eq!(result.unwrap().1, b"all of it");
    assert!(!conn.is_reusable());
}

#[tokio::test]
async fn cut_bodies_and_closed_connections_are_errors() {
    type Expected = fn(&Error) -> bool;
    let cases: [(&[u8], Expected); 4] = [
        (b"", |e| matches!(e, Error::Closed)),
        (b"HTTP/1.1 200 OK\r\ncontent-le", |e| {
            matches!(e, Error::Malformed(_))
        }),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", |e| {
            matches!(e, Error::BodyCut)
        }),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            |e| matches!(e, Error::BodyCut),
        ),
    ];
    for (reply, expected) in cases {
        let (_, result, conn) = get_answered(reply).await;
        let error = result.expect_err("must fail");
        assert!(
            expected(&error),
            "{:?}: {error:?}",
            String::from_utf8_lossy(reply)
        );
        assert!(!conn.is_reusable());
    }
}

#[tokio::test]
async fn garbage_and_bad_lengths_are_malformed() {
    for reply in [
        &b"HTTP/1.1 2OO OK\r\n\r\n"[..],
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    ] {
        let (_, result, _) = get_answered(reply).await;
        assert!(
            matches!(result, Err(Error::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(reply)
        );
    }
}

/// A `101` to an upgrade request ends the HTTP exchange; what follows belongs to the tunnel.
#[tokio::test]
async fn switching_protocols_hands_over_the_bytes_behind_it() {
    let (mut conn, mut backend) = pipe();
    let parts = head(
        Method::GET,
        "/ws",
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    );
    let mut sending = conn.start(&parts, b"", RequestBody::replay(Vec::new()));
    poll_fn(|cx| conn.poll_send(&mut sending, cx))
        .await
        .map_err(|_| ())
        .unwrap();
    backend
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\nframe")
        .await
        .unwrap();
    let asked = Asked {
        method: Method::GET,
        upgrade: true,
    };
    let head = poll_fn(|cx| conn.poll_head(&asked, cx)).await.unwrap();
    assert_eq!(head.status, 101);
    assert!(!conn.is_reusable());
    let (_, early) = conn.into_tunnel();
    assert_eq!(early, "frame");
}

/// A pooled connection the backend closed is noticed before a request is sent on it.
#[tokio::test]
async fn an_idle_connection_closed_by_the_backend_is_noticed() {
    let (mut conn, backend) = pipe();
    assert!(!conn.closed_while_idle());
    drop(backend);
    assert!(conn.closed_while_idle());
}

/// The body reaches the backend even when it arrives in many small frames; the response is the
/// request body echoed, frames joined.
#[tokio::test]
async fn a_streamed_body_and_response_round_trip() {
    let chunks: Vec<Bytes> = (0..100)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; 100]))
        .collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let (mut conn, mut backend) = pipe();
    let parts = head(Method::PUT, "/", &[("content-length", "10000")]);
    let mut sending = conn.start(&parts, b"", RequestBody::replay(chunks));
    let backend_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let body_start = |seen: &[u8]| {
            seen.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4)
        };
        while body_start(&seen).is_none_or(|start| seen.len() < start + 10_000) {
            let n = backend.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        let start = body_start(&seen).unwrap();
        let body = seen[start..].to_vec();
        backend
            .write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
            )
            .await
            .unwrap();
        backend.write_all(&body).await.unwrap();
        backend
    });
    poll_fn(|cx| conn.poll_send(&mut sending, cx))
        .await
        .map_err(|_| ())
        .unwrap();
    let _backend = backend_task.await.unwrap();
    let mut head = poll_fn(|cx| conn.poll_head(&get(), cx)).await.unwrap();
    let mut body = Vec::new();
    while let Some(frame) = poll_fn(|cx| conn.poll_body(&mut head.body, cx)).await {
        body.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(body, expected);
    assert!(conn.is_reusable());
}

/// A socket that counts the writes made to it (and fails them, if `broken`: a pooled connection
/// the backend has just reset).
struct Counted {
    io: DuplexStream,
    writes: usize,
    broken: bool,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes += 1;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.writes += 1;
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A small body that is already here leaves with its head, in one write (one packet, where two
/// would cost the backend two reads), a large one right behind it in the same write.
#[tokio::test]
async fn a_head_and_the_body_that_came_with_it_leave_in_one_write() {
    for size in [11, 64 * 1024] {
        let (ours, mut backend) = tokio::io::duplex(256 * 1024);
        let mut conn = Conn::new(Counted {
            io: ours,
            writes: 0,
            broken: false,
        });
        let length = size.to_string();
        let parts = head(Method::POST, "/sum", &[("content-length", &length)]);
        let body = RequestBody::replay(vec![Bytes::from(vec![b'n'; size])]);
        let mut sending = conn.start(&parts, b"via: 1.1 lb\r\n", body);
        poll_fn(|cx| conn.poll_send(&mut sending, cx))
            .await
            .map_err(|_| ())
            .unwrap();
        assert_eq!(conn.io.writes, 1, "a body of {size} bytes");
        let mut seen = vec![0u8; 128 * 1024];
        let n = backend.read(&mut seen).await.unwrap();
        let head = format!("POST /sum HTTP/1.1\r\ncontent-length: {size}\r\nvia: 1.1 lb\r\n\r\n");
        assert_eq!(n, head.len() + size);
        assert!(seen.starts_with(head.as_bytes()));
    }
}

/// The body that went with a head into a first write that failed comes back whole: the request
/// can go to a fresh connection as if it had never been tried (the pooled connection the backend
/// closed in that instant must not cost a 502, or a retry elsewhere).
#[tokio::test]
async fn a_body_held_for_a_failed_first_write_is_handed_back() {
    let (ours, _backend) = tokio::io::duplex(1024);
    let mut conn = Conn::new(Counted {
        io: ours,
        writes: 0,
        broken: true,
    });
    let chunks = vec![Bytes::from_static(b"n1=1&"), Bytes::from_static(b"n2=2.5")];
    let parts = head(Method::POST, "/sum", &[("content-length", "11")]);
    let mut sending = conn.start(&parts, b"", RequestBody::replay(chunks));
    let sent = poll_fn(|cx| conn.poll_send(&mut sending, cx)).await;
    assert!(matches!(
        sent,
        Err(SendError::Backend { written: false, .. })
    ));
    let mut body = sending
        .into_untouched_body()
        .expect("nothing left: the body comes back");
    assert_eq!(body.size_hint().exact(), Some(11));
    let mut again = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        again.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(again, b"n1=1&n2=2.5");
}
