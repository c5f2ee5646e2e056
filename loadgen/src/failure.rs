//! Why a request got no answer: the [`ErrorClass`]es a report counts, and the one place that
//! sorts what went wrong on a connection (an I/O error, a hyper error) into them.
//!
//! Every request ends either in a response (whatever its status; `--ok-status` judges those) or
//! in exactly one of these classes, so a report always adds up:
//! `requests == responses + errors.total()`.

use std::error::Error as _;
use std::io;

use serde::{Deserialize, Serialize};

/// Why a request got no answer. Every request ends either in a response or in exactly one of
/// these, so `requests == responses + errors` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Nothing listens on the port (TCP RST to our SYN).
    ConnectRefused,
    /// No complete answer within `--timeout` (connect included).
    Timeout,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// The bytes that came back are not a valid HTTP/1.1 response.
    InvalidResponse,
    /// The TLS handshake failed (an untrusted certificate, a plain HTTP server on the port...);
    /// the report says why.
    Tls,
    /// Anything else (no route to host, too many open files, ...).
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::ConnectRefused,
        ErrorClass::Timeout,
        ErrorClass::Reset,
        ErrorClass::InvalidResponse,
        ErrorClass::Tls,
        ErrorClass::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::ConnectRefused => "connect refused",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Reset => "reset",
            ErrorClass::InvalidResponse => "invalid response",
            ErrorClass::Tls => "tls handshake",
            ErrorClass::Other => "other",
        }
    }
}

/// Error counts by class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub connect_refused: u64,
    pub timeout: u64,
    pub reset: u64,
    pub invalid_response: u64,
    /// Absent from reports written before loadgen spoke HTTPS.
    #[serde(default)]
    pub tls: u64,
    pub other: u64,
}

impl ErrorCounts {
    pub fn count(&mut self, class: ErrorClass) {
        *self.slot(class) += 1;
    }

    pub fn get(&self, class: ErrorClass) -> u64 {
        match class {
            ErrorClass::ConnectRefused => self.connect_refused,
            ErrorClass::Timeout => self.timeout,
            ErrorClass::Reset => self.reset,
            ErrorClass::InvalidResponse => self.invalid_response,
            ErrorClass::Tls => self.tls,
            ErrorClass::Other => self.other,
        }
    }

    fn slot(&mut self, class: ErrorClass) -> &mut u64 {
        match class {
            ErrorClass::ConnectRefused => &mut self.connect_refused,
            ErrorClass::Timeout => &mut self.timeout,
            ErrorClass::Reset => &mut self.reset,
            ErrorClass::InvalidResponse => &mut self.invalid_response,
            ErrorClass::Tls => &mut self.tls,
            ErrorClass::Other => &mut self.other,
        }
    }

    pub fn total(&self) -> u64 {
        ErrorClass::ALL.iter().map(|c| self.get(*c)).sum()
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        for c in ErrorClass::ALL {
            *self.slot(c) += other.get(c);
        }
    }
}

/// Sorts an I/O error into the classes the report counts.
pub(crate) fn classify_io(e: &io::Error) -> ErrorClass {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => ErrorClass::ConnectRefused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            ErrorClass::Reset
        }
        TimedOut => ErrorClass::Timeout,
        InvalidData => ErrorClass::InvalidResponse,
        _ => ErrorClass::Other,
    }
}

/// Sorts a hyper error: parse errors are invalid responses, a connection that ended mid-message
/// is a reset, and an I/O error underneath is classified by its kind.
pub(crate) fn classify_hyper(e: &hyper::Error) -> ErrorClass {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return ErrorClass::InvalidResponse;
    }
    if e.is_timeout() {
        return ErrorClass::Timeout;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return classify_io(io);
        }
        source = s.source();
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return ErrorClass::Reset;
    }
    ErrorClass::Other
}
