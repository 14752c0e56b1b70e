//! gRPC status codes, and the trailers-only responses switchyard sends for its own errors.

use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// The gRPC status codes (`grpc/doc/statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code for a numeric `grpc-status` value.
    pub fn from_u32(v: u32) -> Code {
        use Code::*;
        const ALL: [Code; 17] = [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ];
        ALL.get(v as usize).copied().unwrap_or(Unknown)
    }

    /// The decimal string used in the `grpc-status` header.
    pub fn as_str(self) -> &'static str {
        const S: [&str; 17] =
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
        S[self as usize]
    }
}

/// A gRPC status: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// The code.
    pub code: Code,
    /// The message, sent percent-encoded in `grpc-message`.
    pub message: String,
}

impl GrpcStatus {
    /// A status with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Reads `grpc-status` and `grpc-message` from trailers (or trailers-only headers).
    pub fn from_headers(map: &HeaderMap) -> Option<Self> {
        let code = map.get("grpc-status")?.to_str().ok()?.trim().parse::<u32>().ok()?;
        let message = map.get("grpc-message").and_then(|v| v.to_str().ok()).map(percent_decode).unwrap_or_default();
        Some(Self { code: Code::from_u32(code), message })
    }

    /// Writes this status into a header map, as trailers or as trailers-only headers.
    pub fn write_to(&self, map: &mut HeaderMap) {
        map.insert("grpc-status", HeaderValue::from_static(self.code.as_str()));
        if !self.message.is_empty()
            && let Ok(v) = HeaderValue::from_str(&percent_encode(&self.message))
        {
            map.insert("grpc-message", v);
        }
    }

    /// A trailers-only gRPC response carrying this status, with an empty body.
    pub fn to_response<B: Default>(&self) -> Response<B> {
        let mut resp = Response::new(B::default());
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
        self.write_to(h);
        resp
    }
}

impl std::fmt::Display for GrpcStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec asks (bytes outside 0x20..=0x7E, and `%`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded `grpc-message`; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip() {
        let msg = "switchyard: 100% held — retry";
        assert_eq!(percent_decode(&percent_encode(msg)), msg);
        let st = GrpcStatus::new(Code::Unavailable, msg);
        let mut h = HeaderMap::new();
        st.write_to(&mut h);
        assert_eq!(GrpcStatus::from_headers(&h), Some(st));
    }
}
