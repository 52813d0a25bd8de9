//! Where each request on a connection starts and ends, from the raw bytes, before hyper sees
//! them.
//!
//! hyper answers a request head it cannot take (malformed, URI too long, headers too large)
//! with a bare status line and no body, and it accepts a request with both `Content-Length`
//! and `Transfer-Encoding` (it drops the length and closes the connection afterwards), which
//! is the shape of request smuggling. The [`Framer`] checks every head first, with the parser
//! hyper uses (`httparse`) and hyper's own rules, and holds a head back until it is complete
//! and valid; a head it refuses never reaches hyper, and the connection answers with one of
//! the API's JSON errors instead ([`Rejection`]). It then follows the body (a length or the
//! chunked encoding, by the same state machine as hyper's decoder) so that it knows where
//! the next head starts, and passes body bytes on untouched as they arrive. Knowing the
//! phase of the connection (waiting for a head, in a head, in a body) is also what the
//! header, body and keep-alive timeouts need.

use bytes::{Buf as _, BytesMut};

use super::ApiError;

/// Sizes a request head may not exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// The whole head: request line and header fields (431 beyond).
    pub max_head_bytes: usize,
    /// The request target (414 beyond).
    pub max_uri_bytes: usize,
    /// Header fields (431 beyond; hyper's own limit is 100).
    pub max_headers: usize,
}

impl Default for HeadLimits {
    /// 16 KiB heads, 8 KiB targets, 100 fields.
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            max_headers: 100,
        }
    }
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not an HTTP/1.x request head, or one hyper would refuse (400).
    Malformed(&'static str),
    /// Both `Content-Length` and `Transfer-Encoding` (400): a smuggling vector.
    LengthAndChunked,
    /// The request target is longer than the limit (414).
    UriTooLong(usize),
    /// The head is larger, or has more fields, than the limit (431).
    HeadTooLarge(usize, usize),
}

impl From<Rejection> for ApiError {
    /// 400 for a malformed head or one with both lengths, 414, 431.
    fn from(r: Rejection) -> Self {
        let message = r.message();
        match r {
            Rejection::Malformed(_) | Rejection::LengthAndChunked => Self::BadRequest(message),
            Rejection::UriTooLong(_) => Self::UriTooLong(message),
            Rejection::HeadTooLarge(..) => Self::HeadersTooLarge(message),
        }
    }
}

impl Rejection {
    /// The message of its JSON error.
    fn message(&self) -> String {
        match self {
            Self::Malformed(why) => format!("Malformed request: {why}."),
            Self::LengthAndChunked => "A request may not have both Content-Length and \
                                       Transfer-Encoding."
                .to_owned(),
            Self::UriTooLong(max) => {
                format!("The request URI is too long (at most {max} bytes are accepted).")
            }
            Self::HeadTooLarge(bytes, fields) => format!(
                "The request headers are too large (at most {bytes} bytes and {fields} fields \
                 are accepted)."
            ),
        }
    }
}

/// Where the connection is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests: no byte of the next head yet.
    AwaitingHead,
    /// Some bytes of a head, not all.
    InHead,
    /// The head was passed on; its body is still arriving.
    InBody,
    /// The body's framing could not be followed (hyper refuses such a body too and closes
    /// the connection): bytes pass untouched, no head is checked any more.
    Opaque,
}

/// The chunked decoder's states, as hyper's (`proto/h1/decode.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunked),
    Opaque,
}

/// Follows the requests of one connection (see the module docs).
#[derive(Debug)]
pub struct Framer {
    limits: HeadLimits,
    state: State,
    /// How much of a partial head has been searched for its end.
    scanned: usize,
    /// Heads passed on so far.
    heads: u64,
}

/// The body a valid head announces.
enum Body {
    Length(u64),
    Chunked,
}

impl Framer {
    /// A framer at the start of a connection.
    pub fn new(limits: HeadLimits) -> Self {
        Self {
            limits,
            state: State::Head,
            scanned: 0,
            heads: 0,
        }
    }

    /// Heads passed on so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// The phase, given what is still held back in `input` (a partial head).
    pub fn phase(&self, input: &BytesMut) -> Phase {
        match self.state {
            State::Head if input.is_empty() => Phase::AwaitingHead,
            State::Head => Phase::InHead,
            State::Length(_) | State::Chunked(_) => Phase::InBody,
            State::Opaque => Phase::Opaque,
        }
    }

    /// Moves from `input` (bytes read from the client) to `out` (bytes hyper may see) every
    /// complete and valid head and every body byte; a partial head stays in `input`.
    ///
    /// # Errors
    /// The [`Rejection`] of a head that must not reach hyper; what follows it is left in
    /// `input`, and the framer must not be fed again.
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(), Rejection> {
        loop {
            if input.is_empty() {
                return Ok(());
            }
            match self.state {
                State::Head => {
                    if !self.head(input, out)? {
                        return Ok(());
                    }
                }
                State::Length(rem) => {
                    let n = usize::try_from(rem).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input.advance(n);
                    let rem = rem - n as u64;
                    self.state = if rem == 0 {
                        State::Head
                    } else {
                        State::Length(rem)
                    };
                }
                State::Chunked(c) => self.chunked(c, input, out),
                State::Opaque => {
                    out.extend_from_slice(input);
                    input.clear();
                }
            }
        }
    }

    /// Passes on one head when it is complete; `false` when more bytes are needed.
    fn head(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool, Rejection> {
        // Empty lines before a request line are ignored (RFC 9112 §2.2), as by httparse.
        if self.scanned == 0 {
            let blank = input
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            input.advance(blank);
            if input.is_empty() {
                return Ok(false);
            }
        }
        let Some(end) = head_end(input, self.scanned) else {
            self.scanned = input.len();
            if input.len() > self.limits.max_head_bytes {
                return Err(self.too_large(input));
            }
            return Ok(false);
        };
        if end > self.limits.max_head_bytes {
            return Err(self.too_large(input));
        }
        let body = self.check(&input[..end])?;
        out.extend_from_slice(&input[..end]);
        input.advance(end);
        self.scanned = 0;
        self.heads += 1;
        self.state = match body {
            Body::Length(0) => State::Head,
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::Chunked(Chunked::Start),
        };
        Ok(true)
    }

    /// 414 when the request line alone is over the URI limit, else 431.
    fn too_large(&self, input: &[u8]) -> Rejection {
        let line = input
            .iter()
            .position(|b| *b == b'\n')
            .unwrap_or(input.len());
        if line > self.limits.max_uri_bytes {
            Rejection::UriTooLong(self.limits.max_uri_bytes)
        } else {
            self.head_too_large()
        }
    }

    fn head_too_large(&self) -> Rejection {
        Rejection::HeadTooLarge(self.limits.max_head_bytes, self.limits.max_headers)
    }

    /// Parses a complete head and applies hyper's rules and ours; returns its body's framing.
    fn check(&self, head: &[u8]) -> Result<Body, Rejection> {
        let mut fields = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(Rejection::Malformed("the request head is incomplete"));
            }
            Err(httparse::Error::TooManyHeaders) => return Err(self.head_too_large()),
            Err(e) => return Err(Rejection::Malformed(parse_error(e))),
        }
        let path = req.path.unwrap_or_default();
        if path.len() > self.limits.max_uri_bytes {
            return Err(Rejection::UriTooLong(self.limits.max_uri_bytes));
        }
        if axum::http::Uri::try_from(path).is_err() {
            return Err(Rejection::Malformed(
                "the request target is not a valid URI",
            ));
        }
        let http_11 = req.version == Some(1);
        let mut length: Option<u64> = None;
        let mut chunked: Option<bool> = None;
        for f in req.headers.iter() {
            if f.name.eq_ignore_ascii_case("content-length") {
                let n = digits(f.value)
                    .ok_or(Rejection::Malformed("Content-Length is not a number"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Rejection::Malformed("Content-Length is given twice"));
                }
                length = Some(n);
            } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
                if !http_11 {
                    return Err(Rejection::Malformed(
                        "HTTP/1.0 requests cannot have a Transfer-Encoding",
                    ));
                }
                // The last field decides, as in hyper: chunked must be the final coding.
                let last = f.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        match (length, chunked) {
            (Some(_), Some(_)) => Err(Rejection::LengthAndChunked),
            (_, Some(false)) => Err(Rejection::Malformed(
                "Transfer-Encoding must end with chunked",
            )),
            (_, Some(true)) => Ok(Body::Chunked),
            (Some(n), None) => Ok(Body::Length(n)),
            (None, None) => Ok(Body::Length(0)),
        }
    }

    /// Follows a chunked body over `input`, passing every byte on.
    fn chunked(&mut self, mut c: Chunked, input: &mut BytesMut, out: &mut BytesMut) {
        let mut i = 0;
        while i < input.len() {
            if let Chunked::Data(rem) = c {
                let n = usize::try_from(rem)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                i += n;
                let rem = rem - n as u64;
                c = if rem == 0 {
                    Chunked::DataCr
                } else {
                    Chunked::Data(rem)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            let next = match (c, b) {
                (Chunked::Start, _) => hex(b).map(Chunked::Size),
                (Chunked::Size(n), b'\t' | b' ') => Some(Chunked::SizeLws(n)),
                (Chunked::Size(n) | Chunked::SizeLws(n), b';') => Some(Chunked::Extension(n)),
                (Chunked::Size(n) | Chunked::SizeLws(n) | Chunked::Extension(n), b'\r') => {
                    Some(Chunked::SizeLf(n))
                }
                (Chunked::Size(n), _) => hex(b)
                    .and_then(|d| n.checked_mul(16)?.checked_add(d))
                    .map(Chunked::Size),
                (Chunked::SizeLws(n), b'\t' | b' ') => Some(Chunked::SizeLws(n)),
                (Chunked::Extension(_), b'\n') => None,
                (Chunked::Extension(n), _) => Some(Chunked::Extension(n)),
                (Chunked::SizeLf(0), b'\n') => Some(Chunked::EndCr),
                (Chunked::SizeLf(n), b'\n') => Some(Chunked::Data(n)),
                (Chunked::DataCr, b'\r') => Some(Chunked::DataLf),
                (Chunked::DataLf, b'\n') => Some(Chunked::Start),
                (Chunked::EndCr, b'\r') => Some(Chunked::EndLf),
                (Chunked::Trailer, b'\r') => Some(Chunked::TrailerLf),
                (Chunked::EndCr | Chunked::Trailer, _) => Some(Chunked::Trailer),
                (Chunked::TrailerLf, b'\n') => Some(Chunked::EndCr),
                (Chunked::EndLf, b'\n') => {
                    // The body is complete: the next byte starts a head.
                    out.extend_from_slice(&input[..i]);
                    input.advance(i);
                    self.state = State::Head;
                    return;
                }
                _ => None,
            };
            match next {
                Some(n) => c = n,
                None => {
                    // hyper refuses this body and closes; follow no more heads.
                    self.state = State::Opaque;
                    out.extend_from_slice(input);
                    input.clear();
                    return;
                }
            }
        }
        out.extend_from_slice(input);
        input.clear();
        self.state = State::Chunked(c);
    }
}

/// The index just after the empty line that ends a head, searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let mut i = start;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// A decimal `Content-Length` (digits only, as hyper reads it).
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        let d = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(d)
    })
}

fn hex(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_head_bytes: 256,
            max_uri_bytes: 64,
            max_headers: 8,
        }
    }

    /// Feeds `bytes` `step` at a time; returns what was passed on, or the rejection.
    fn run(bytes: &[u8], step: usize) -> (Result<(), Rejection>, Vec<u8>, Framer) {
        let mut f = Framer::new(limits());
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in bytes.chunks(step) {
            input.extend_from_slice(piece);
            if let Err(r) = f.feed(&mut input, &mut out) {
                return (Err(r), out.to_vec(), f);
            }
        }
        (Ok(()), out.to_vec(), f)
    }

    fn passes(bytes: &[u8], heads: u64) {
        for step in [1, 2, 7, bytes.len()] {
            let (r, out, f) = run(bytes, step);
            assert_eq!(r, Ok(()), "step {step}");
            assert_eq!(out, bytes.trim_ascii_start(), "step {step}");
            assert_eq!(f.heads(), heads, "step {step}");
            assert_eq!(f.state, State::Head, "step {step}: ends between requests");
        }
    }

    fn refused(bytes: &[u8]) -> Rejection {
        let (r1, out, _) = run(bytes, bytes.len());
        let (r2, _, _) = run(bytes, 1);
        assert_eq!(r1, r2, "the same rejection byte by byte");
        assert!(out.is_empty(), "nothing of a refused head is passed on");
        r1.unwrap_err()
    }

    #[test]
    fn heads_and_length_bodies_pass_untouched() {
        passes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1);
        passes(
            b"POST /rides HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\n\r\n",
            2,
        );
        passes(b"\r\n\r\nGET / HTTP/1.1\nHost: x\n\n", 1);
    }

    #[test]
    fn chunked_bodies_are_followed_to_their_end() {
        passes(
            b"POST /rides HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n\
              GET / HTTP/1.1\r\n\r\n",
            2,
        );
        passes(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            1,
        );
    }

    #[test]
    fn a_body_hyper_would_refuse_stops_the_checks() {
        let bytes =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n";
        let (r, out, f) = run(bytes, 3);
        assert_eq!(r, Ok(()));
        assert_eq!(out, bytes);
        assert_eq!(f.phase(&BytesMut::new()), Phase::Opaque);
    }

    #[test]
    fn phases() {
        let mut f = Framer::new(limits());
        let mut out = BytesMut::new();
        let mut input = BytesMut::new();
        assert_eq!(f.phase(&input), Phase::AwaitingHead);
        input.extend_from_slice(b"POST / HTTP/1.1\r\nContent-Len");
        f.feed(&mut input, &mut out).unwrap();
        assert_eq!(f.phase(&input), Phase::InHead);
        input.extend_from_slice(b"gth: 3\r\n\r\nab");
        f.feed(&mut input, &mut out).unwrap();
        assert_eq!(f.phase(&input), Phase::InBody);
        input.extend_from_slice(b"c");
        f.feed(&mut input, &mut out).unwrap();
        assert_eq!(f.phase(&input), Phase::AwaitingHead);
        assert_eq!(f.heads(), 1);
    }

    #[test]
    fn length_and_chunked_together_are_refused() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        ] {
            assert_eq!(refused(head), Rejection::LengthAndChunked);
        }
    }

    #[test]
    fn malformed_heads_are_400() {
        for head in [
            &b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"[..],
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let r = refused(head);
            assert!(matches!(r, Rejection::Malformed(_)), "{r:?}");
            assert_eq!(ApiError::from(r).status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn long_targets_are_414_and_large_heads_431() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(refused(long.as_bytes()), Rejection::UriTooLong(64));
        let endless = format!("GET /{}", "a".repeat(300));
        assert_eq!(refused(endless.as_bytes()), Rejection::UriTooLong(64));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
        assert_eq!(refused(big.as_bytes()), Rejection::HeadTooLarge(256, 8));
        let many: String = (0..9).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refused(many.as_bytes()), Rejection::HeadTooLarge(256, 8));
        assert_eq!(
            ApiError::from(Rejection::HeadTooLarge(256, 8)).status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(
            ApiError::from(Rejection::UriTooLong(64)).status(),
            StatusCode::URI_TOO_LONG
        );
        assert_eq!(
            ApiError::from(Rejection::LengthAndChunked).status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn head_end_finds_every_line_ending() {
        assert_eq!(head_end(b"a\r\n\r\nb", 0), Some(5));
        assert_eq!(head_end(b"a\n\nb", 0), Some(3));
        assert_eq!(head_end(b"a\r\nb\r\n", 0), None);
        assert_eq!(
            head_end(b"a\r\n\r\n", 4),
            Some(5),
            "a search resumed mid-terminator"
        );
    }
}
