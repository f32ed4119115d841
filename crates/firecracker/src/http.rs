//! The little HTTP/1.1 that Firecracker's API speaks: one request, one response, bodies framed
//! by `Content-Length` (Firecracker's `micro_http` never sends chunked bodies). Shared by the
//! client and the fake server so both read messages the same way.

use std::io::{self, Read, Write};

/// Largest head (start line plus headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body accepted; Firecracker's own request limit is 51200 bytes by default.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed HTTP message: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status code of a response's start line (`HTTP/1.1 204 No Content`).
    pub fn status(&self) -> Result<u16, HttpError> {
        let mut parts = self.start_line.split_whitespace();
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed(format!(
                "not an HTTP/1.x status line: {:?}",
                self.start_line
            )));
        }
        parts
            .next()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| HttpError::Malformed(format!("no status code in {:?}", self.start_line)))
    }
}

/// Whether the message being read is a request or the response to one (they differ in how a
/// body without `Content-Length` is framed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Read by the fake server only.
    #[cfg_attr(not(feature = "fake"), allow(dead_code))]
    Request,
    Response,
}

/// Reads one message. `before_read` runs before every `read` (the client sets the socket's
/// read timeout to what is left of its deadline there). `Ok(None)`: the peer closed the
/// connection before sending a byte.
pub(crate) fn read_message(
    stream: &mut impl Read,
    kind: Kind,
    before_read: &mut dyn FnMut() -> io::Result<()>,
) -> Result<Option<Message>, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::Malformed("head larger than 64 KiB".into()));
        }
        before_read()?;
        let n = read_some(stream, &mut chunk)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(HttpError::Malformed(
                "connection closed in the middle of the head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| HttpError::Malformed("head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut message = Message {
        start_line,
        headers,
        body: Vec::new(),
    };
    if message
        .header("Transfer-Encoding")
        .is_some_and(|te| !te.eq_ignore_ascii_case("identity"))
    {
        return Err(HttpError::Malformed(
            "chunked transfer encoding is not supported (Firecracker never uses it)".into(),
        ));
    }
    let mut body = buf.split_off(head_end + 4);
    let length = match message.header("Content-Length") {
        Some(text) => Some(
            text.parse::<usize>()
                .map_err(|_| HttpError::Malformed(format!("bad Content-Length {text:?}")))?,
        ),
        None => match kind {
            Kind::Request => Some(0),
            Kind::Response => {
                let status = message.status()?;
                if status < 200 || status == 204 || status == 304 {
                    Some(0)
                } else {
                    None
                }
            }
        },
    };
    match length {
        Some(length) => {
            if length > MAX_BODY {
                return Err(HttpError::Malformed(format!(
                    "body of {length} bytes is larger than {MAX_BODY}"
                )));
            }
            while body.len() < length {
                before_read()?;
                let n = read_some(stream, &mut chunk)?;
                if n == 0 {
                    return Err(HttpError::Malformed(format!(
                        "connection closed after {} of {length} body bytes",
                        body.len()
                    )));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            // Anything past the body would be a pipelined message; neither side pipelines.
            body.truncate(length);
        }
        None => loop {
            // No length on a response: the body runs to the end of the connection.
            before_read()?;
            let n = read_some(stream, &mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > MAX_BODY {
                return Err(HttpError::Malformed("body larger than 16 MiB".into()));
            }
        },
    }
    message.body = body;
    Ok(Some(message))
}

fn read_some(stream: &mut impl Read, chunk: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes a request with a JSON body (or none).
pub(crate) fn write_request(
    stream: &mut impl Write,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<()> {
    write_message(
        stream,
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"),
        body,
    )
}

/// Sends a start line and headers (`head`, each line ending in CRLF), the JSON body headers
/// when there is a body, the blank line, then the body, in one write.
fn write_message(stream: &mut impl Write, mut head: String, body: Option<&[u8]>) -> io::Result<()> {
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Writes a response the way Firecracker does: `Server` header, JSON bodies with a length.
#[cfg(feature = "fake")]
pub(crate) fn write_response(
    stream: &mut impl Write,
    status: u16,
    body: Option<&[u8]>,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "",
    };
    write_message(
        stream,
        format!(
            "HTTP/1.1 {status} {reason}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
        ),
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], kind: Kind) -> Result<Option<Message>, HttpError> {
        read_message(&mut &bytes[..], kind, &mut || Ok(()))
    }

    #[test]
    fn response_with_length_and_without() {
        let m = read(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            Kind::Response,
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.status().unwrap(), 400);
        assert_eq!(m.body, b"hello");
        let m = read(b"HTTP/1.1 204 \r\nServer: x\r\n\r\n", Kind::Response)
            .unwrap()
            .unwrap();
        assert_eq!(m.status().unwrap(), 204);
        assert!(m.body.is_empty());
        let m = read(b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}", Kind::Response)
            .unwrap()
            .unwrap();
        assert_eq!(m.body, b"{\"a\":1}");
    }

    #[test]
    fn malformed_messages() {
        assert!(read(b"", Kind::Request).unwrap().is_none());
        assert!(read(b"PUT / HTTP/1.1\r\nbad\r\n\r\n", Kind::Request).is_err());
        assert!(read(
            b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            Kind::Request
        )
        .is_err());
        assert!(read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Kind::Response
        )
        .is_err());
        assert!(read(b"garbage 200\r\n\r\n", Kind::Response).is_err());
        let m = read(b"garbage 200\r\nContent-Length: 0\r\n\r\n", Kind::Response)
            .unwrap()
            .unwrap();
        assert!(m.status().is_err());
    }

    #[test]
    fn request_round_trip() {
        let mut out = Vec::new();
        write_request(&mut out, "PUT", "/vm", Some(b"{\"state\":\"Paused\"}")).unwrap();
        let m = read(&out, Kind::Request).unwrap().unwrap();
        assert_eq!(m.start_line, "PUT /vm HTTP/1.1");
        assert_eq!(m.header("content-type"), Some("application/json"));
        assert_eq!(m.body, b"{\"state\":\"Paused\"}");
    }
}
