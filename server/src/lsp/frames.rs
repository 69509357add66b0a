//! The framing layer between the editor and tower-lsp-server, both ways.
//!
//! In: stdin -> [`FrameParser`] -> tower-lsp-server. The parser reads a header
//! block and exactly `Content-Length` bytes, refuses frames over a size cap,
//! resynchronises on the next `Content-Length:` after garbage, and lets
//! through only well-formed JSON-RPC 2.0 objects (re-framed with a plain
//! `Content-Length` header). tower-lsp-server reads with tokio-util's
//! `FramedRead`, which ends its stream after the first message it cannot
//! decode, so nothing it could fail on may reach it: one bad frame would leave
//! the server deaf. What is dropped is logged and answered: a parse error
//! (-32700) with `id: null`, or an invalid request (-32600) with the request's
//! id when one can be read. Malformed *responses* from the client are logged
//! only: an error carrying their id would look like the answer to one of the
//! client's own requests.
//!
//! Out: stdout has one writer ([`Output`]). tower-lsp-server's frames (through
//! [`FrameSink`]) and the answers to bad input go through one channel as whole
//! frames, so the bytes of two messages never interleave.
//!
//! Must not know: LSP methods, the backend, tasks.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;
use tower_lsp_server::jsonrpc::{Request, Response};

/// Largest message body accepted, in bytes (64 MiB). A frame declaring more is
/// answered with a parse error and skipped up to the next `Content-Length:`.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Longest header block, in bytes; input without an empty line within this
/// many bytes is garbage.
pub const MAX_HEADER_BYTES: usize = 8 << 10;
/// How long a message whose body is already a whole JSON value waits for the
/// rest of a too-large `Content-Length` before it is refused.
pub const STALLED_BODY: Duration = Duration::from_secs(2);
/// JSON-RPC "Parse error": the bytes are not a JSON message.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "Invalid Request": JSON, but not a JSON-RPC 2.0 request.
pub const INVALID_REQUEST: i64 = -32600;

/// Frames queued for stdout before writers wait.
const OUTPUT_QUEUE: usize = 64;
/// Bytes read from stdin at a time.
const READ_CHUNK: usize = 64 << 10;
/// Longest `Content-Length: <digits>` header line the body scan recognises.
const HEADER_LINE_MAX: usize = 64;
const CONTENT_LENGTH: &[u8] = b"content-length";

/// What the parser made of some input.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A well-formed JSON-RPC 2.0 request, notification or response: its
    /// body, unchanged, to pass on.
    Message(Vec<u8>),
    /// Input that was dropped, with the answer it gets.
    Dropped(Dropped),
}

/// Input that was dropped: logged, and answered when `id` is `Some`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    /// The JSON-RPC error code: [`PARSE_ERROR`] or [`INVALID_REQUEST`].
    pub code: i64,
    /// The id to answer (`Value::Null` when none could be read); `None`: not
    /// answered (a malformed response, or bytes left at end of input).
    pub id: Option<Value>,
    /// What was wrong, for the log and the error's message.
    pub reason: String,
}

impl Dropped {
    fn parse_error(reason: String) -> Dropped {
        Dropped {
            code: PARSE_ERROR,
            id: Some(Value::Null),
            reason,
        }
    }

    fn invalid(id: Value, reason: String) -> Dropped {
        Dropped {
            code: INVALID_REQUEST,
            id: Some(id),
            reason,
        }
    }

    fn unanswered(reason: String) -> Dropped {
        Dropped {
            code: INVALID_REQUEST,
            id: None,
            reason,
        }
    }

    /// The framed JSON-RPC error response to write, or `None` when this input
    /// is not answered.
    pub fn response(&self) -> Option<Vec<u8>> {
        let id = self.id.as_ref()?;
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": self.code, "message": format!("docsmith dropped a message: {}", self.reason)},
        })
        .to_string();
        Some(framed(body.as_bytes()))
    }
}

/// `body` behind a `Content-Length` header.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// An incremental LSP frame parser (no I/O): push bytes in, take [`Frame`]s
/// out. The frames it yields do not depend on how the input was split.
#[derive(Debug)]
pub struct FrameParser {
    /// Input not yet consumed.
    buf: Vec<u8>,
    /// The declared body length, once a header block was read.
    body: Option<usize>,
    /// How much of the pending body was already searched for a header.
    searched: usize,
    /// Dropping bytes up to the next `Content-Length` (the error was reported).
    resyncing: bool,
    ready: VecDeque<Frame>,
    max_body: usize,
}

impl Default for FrameParser {
    fn default() -> Self {
        FrameParser::new(MAX_FRAME_BYTES)
    }
}

impl FrameParser {
    /// A parser refusing bodies over `max_body` bytes.
    pub fn new(max_body: usize) -> FrameParser {
        FrameParser {
            buf: Vec::new(),
            body: None,
            searched: 0,
            resyncing: false,
            ready: VecDeque::new(),
            max_body,
        }
    }

    /// Appends input.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame the input so far makes, or `None` until more input comes.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Some(f);
            }
            if !self.step() {
                return None;
            }
        }
    }

    /// Whether a body is being read and some of it has arrived.
    pub fn in_body(&self) -> bool {
        self.body.is_some() && !self.buf.is_empty()
    }

    /// Called when no input came for [`STALLED_BODY`] while a body was being
    /// read: when what arrived is already a whole JSON value, the declared
    /// length was too large and the message is refused (answered with its id).
    /// Returns whether it was.
    pub fn stalled(&mut self) -> bool {
        let Some(len) = self.body else { return false };
        if self.buf.is_empty() || serde_json::from_slice::<Value>(&self.buf).is_err() {
            return false;
        }
        let body = std::mem::take(&mut self.buf);
        let why = format!(
            "Content-Length {len} is larger than the message: {} bytes arrived, then nothing for {} s",
            body.len(),
            STALLED_BODY.as_secs()
        );
        self.end_body();
        self.refuse_cut(&body, why);
        true
    }

    /// At end of input: what was left of an unfinished frame, logged only.
    pub fn finish(&mut self) -> Option<Dropped> {
        let left = self.buf.len();
        let in_body = self.body.is_some();
        self.buf.clear();
        self.end_body();
        (left > 0 || in_body).then(|| {
            Dropped::unanswered(format!(
                "input ended inside a message ({left} bytes left unread)"
            ))
        })
    }

    fn end_body(&mut self) {
        self.body = None;
        self.searched = 0;
    }

    /// One step of progress; false when more input is needed.
    fn step(&mut self) -> bool {
        match self.body {
            Some(len) => self.step_body(len),
            None => self.step_header(),
        }
    }

    fn step_body(&mut self, len: usize) -> bool {
        let end = self.buf.len().min(len);
        let from = self
            .searched
            .saturating_sub(CONTENT_LENGTH.len() + HEADER_LINE_MAX);
        if let Some(at) = find_header_line(&self.buf[..end], from) {
            // A header inside the body: no JSON body holds raw `Content-Length:
            // <n>` and a line break, so the declared length ran into the next frame.
            let body: Vec<u8> = self.buf.drain(..at).collect();
            self.end_body();
            let why = format!(
                "Content-Length {len} is larger than the message: the next header starts after {at} bytes"
            );
            self.refuse_cut(&body, why);
            return true;
        }
        self.searched = end;
        if self.buf.len() < len {
            return false;
        }
        let body: Vec<u8> = self.buf.drain(..len).collect();
        self.end_body();
        match validate(&body) {
            Ok(()) => {
                self.resyncing = false;
                self.ready.push_back(Frame::Message(body));
            }
            Err(dropped) => {
                // A too-small Content-Length leaves the rest of the message
                // behind: skip it quietly up to the next header. A slightly
                // too-large one ends the body inside the next header line: put
                // that part back so the next frame is not lost.
                if let Some(at) = cut_header_start(&body) {
                    self.buf.splice(0..0, body[at..].iter().copied());
                }
                self.resyncing = true;
                self.ready.extend(dropped.into_iter().map(Frame::Dropped));
            }
        }
        true
    }

    /// Refuses a body cut short by a wrong Content-Length: answered with its
    /// id when it is a whole JSON request, else a parse error.
    fn refuse_cut(&mut self, body: &[u8], why: String) {
        let d = match serde_json::from_slice::<Value>(body) {
            Ok(v) if is_response(&v) => Dropped::unanswered(why),
            Ok(v) => Dropped::invalid(readable_id(v.get("id")), why),
            Err(_) => Dropped::parse_error(why),
        };
        self.resyncing = false;
        self.ready.push_back(Frame::Dropped(d));
    }

    fn step_header(&mut self) -> bool {
        let blank = self
            .buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if blank > 0 {
            self.buf.drain(..blank);
        }
        if self.buf.is_empty() {
            return false;
        }
        if self.resyncing {
            match find_ci(&self.buf, CONTENT_LENGTH, 0) {
                Some(0) => self.resyncing = false,
                Some(at) => {
                    self.buf.drain(..at);
                    self.resyncing = false;
                }
                None => {
                    let keep = CONTENT_LENGTH.len() - 1;
                    let drop = self.buf.len().saturating_sub(keep);
                    self.buf.drain(..drop);
                    return false;
                }
            }
        }
        let window = &self.buf[..self.buf.len().min(MAX_HEADER_BYTES)];
        let Some((block, next)) = header_end(window) else {
            if self.buf.len() >= MAX_HEADER_BYTES {
                self.header_failed(format!(
                    "no end of headers (an empty line) within {MAX_HEADER_BYTES} bytes"
                ));
                return true;
            }
            return false;
        };
        match parse_headers(&self.buf[..block]) {
            Ok(len) if len > self.max_body as u64 => {
                self.header_failed(format!(
                    "Content-Length {len} is over the limit of {} bytes",
                    self.max_body
                ));
            }
            Ok(len) => {
                self.buf.drain(..next);
                self.body = Some(len as usize);
                self.searched = 0;
            }
            Err(why) => self.header_failed(why),
        }
        true
    }

    /// Reports a bad header block (once per run of garbage) and skips to the
    /// next `Content-Length` after its start.
    fn header_failed(&mut self, why: String) {
        if !self.resyncing {
            self.ready
                .push_back(Frame::Dropped(Dropped::parse_error(why)));
        }
        self.resyncing = true;
        let skip = find_ci(&self.buf, CONTENT_LENGTH, 1).unwrap_or(
            self.buf
                .len()
                .saturating_sub(CONTENT_LENGTH.len() - 1)
                .max(1),
        );
        self.buf.drain(..skip.min(self.buf.len()));
    }
}

/// The end of the header block: (length of the block, offset of the body).
/// Lines end with CRLF or a bare LF; the block ends at the first empty line.
fn header_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some((i, i + 2)),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some((i, i + 3)),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// The body length from a header block: ASCII `Name: value` lines; exactly one
/// `Content-Length` value (repeats must agree), decimal digits only; other
/// headers (`Content-Type`) are ignored.
fn parse_headers(block: &[u8]) -> Result<u64, String> {
    let mut len: Option<u64> = None;
    for raw in block.split(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(line).map_err(|_| ()).and_then(|l| {
            if l.is_ascii() {
                Ok(l)
            } else {
                Err(())
            }
        }) else {
            return Err(format!(
                "a header line is not ASCII: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            ));
        };
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a header line has no `:`: {:?}", clip(line)));
        };
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(format!("bad header name: {:?}", clip(line)));
        }
        if !name.eq_ignore_ascii_case("content-length") {
            // `xContent-Length: 9` is garbage run into the next frame's header:
            // refusing it resynchronises on that header instead of skipping it.
            if find_ci(line.as_bytes(), CONTENT_LENGTH, 0).is_some() {
                return Err(format!(
                    "a header line runs into a Content-Length: {:?}",
                    clip(line)
                ));
            }
            continue;
        }
        let value = value.trim_matches([' ', '\t']);
        let n = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| format!("Content-Length {value:?} is not a number of bytes"))?;
        match len {
            Some(m) if m != n => {
                return Err(format!(
                    "two different Content-Length headers ({m} and {n})"
                ))
            }
            _ => len = Some(n),
        }
    }
    len.ok_or_else(|| "no Content-Length header".to_string())
}

/// An HTTP token character (RFC 9110 `tchar`).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// First index `>= from` where `needle` (lowercase ASCII) starts, ignoring case.
fn find_ci(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| {
        hay[i] | 0x20 == needle[0] && hay[i..i + needle.len()].eq_ignore_ascii_case(needle)
    })
}

/// First index `>= from` where a whole `Content-Length: <digits>` line (up to
/// its line break) starts. Valid JSON cannot contain one: the words can only
/// be inside a string, and a string cannot hold a raw line break.
fn find_header_line(hay: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = find_ci(hay, CONTENT_LENGTH, at) {
        let rest = &hay[i + CONTENT_LENGTH.len()..];
        let mut j = rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        if rest.get(j) == Some(&b':') {
            j += 1;
            j += rest[j..]
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count();
            let digits = rest[j..].iter().take_while(|b| b.is_ascii_digit()).count();
            j += digits;
            j += rest[j..]
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count();
            if digits > 0 && j < HEADER_LINE_MAX && matches!(rest.get(j), Some(b'\r' | b'\n')) {
                return Some(i);
            }
        }
        at = i + 1;
    }
    None
}

/// Where a `Content-Length: <digits>` line that the end of `body` cut short
/// begins: the first index near the end from which the rest of `body` is the
/// beginning of such a line.
fn cut_header_start(body: &[u8]) -> Option<usize> {
    let from = body
        .len()
        .saturating_sub(CONTENT_LENGTH.len() + HEADER_LINE_MAX);
    (from..body.len()).find(|&i| is_header_line_start(&body[i..]))
}

/// Whether `s` is a beginning of `Content-Length: <digits>` (case ignored),
/// possibly with its CR.
fn is_header_line_start(s: &[u8]) -> bool {
    let n = s.len().min(CONTENT_LENGTH.len());
    if !s[..n].eq_ignore_ascii_case(&CONTENT_LENGTH[..n]) {
        return false;
    }
    let rest = &s[n..];
    let blanks = |from: usize| {
        from + rest[from..]
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count()
    };
    let mut j = blanks(0);
    if j == rest.len() {
        return true;
    }
    if rest[j] != b':' {
        return false;
    }
    j = blanks(j + 1);
    j += rest[j..].iter().take_while(|b| b.is_ascii_digit()).count();
    j = blanks(j);
    j == rest.len() || (rest[j] == b'\r' && j + 1 == rest.len())
}

/// The id to echo in an error: a number or a string as sent, else `null`.
fn readable_id(id: Option<&Value>) -> Value {
    match id {
        Some(v @ (Value::Number(_) | Value::String(_))) => v.clone(),
        _ => Value::Null,
    }
}

/// A response-shaped object: `result` or `error` and no `method`.
fn is_response(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        !o.contains_key("method") && (o.contains_key("result") || o.contains_key("error"))
    })
}

/// Checks that `body` is one JSON-RPC 2.0 message tower-lsp-server will decode.
/// Errors: what to answer and log, one entry per request of a batch.
pub fn validate(body: &[u8]) -> Result<(), Vec<Dropped>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        vec![Dropped::parse_error(format!(
            "the message is not UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))]
    })?;
    if text.trim().is_empty() {
        return Err(vec![Dropped::parse_error("the message is empty".into())]);
    }
    let v: Value = serde_json::from_str(text).map_err(|e| {
        vec![Dropped::parse_error(format!(
            "the message is not JSON: {e}"
        ))]
    })?;
    match &v {
        Value::Object(_) => validate_object(&v, text).map_err(|d| vec![d]),
        Value::Array(items) => {
            const WHY: &str = "a batch (a JSON array); LSP sends each message in its own frame";
            let mut out: Vec<Dropped> = items
                .iter()
                .filter(|m| m.get("method").is_some() && m.get("id").is_some())
                .map(|m| Dropped::invalid(readable_id(m.get("id")), WHY.into()))
                .collect();
            if out.is_empty() {
                let why = if items.is_empty() {
                    "an empty batch (`[]`)".to_string()
                } else {
                    WHY.to_string()
                };
                out.push(Dropped::invalid(Value::Null, why));
            }
            Err(out)
        }
        other => Err(vec![Dropped::invalid(
            Value::Null,
            format!("a JSON-RPC message is an object, not {}", json_kind(other)),
        )]),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn validate_object(v: &Value, text: &str) -> Result<(), Dropped> {
    let version_ok = v.get("jsonrpc") == Some(&json!("2.0"));
    if is_response(v) {
        // Never answered: an error with this id would read as the answer to
        // the client's own request with that id.
        if !version_ok {
            return Err(Dropped::unanswered(
                "a response without \"jsonrpc\": \"2.0\"".into(),
            ));
        }
        return serde_json::from_str::<Response>(text)
            .map(|_| ())
            .map_err(|e| Dropped::unanswered(format!("a malformed response: {e}")));
    }
    let id = readable_id(v.get("id"));
    let bad = |why: &str| Err(Dropped::invalid(id.clone(), why.to_string()));
    if !version_ok {
        return bad("\"jsonrpc\" must be \"2.0\"");
    }
    match v.get("method") {
        Some(Value::String(_)) => {}
        Some(_) => return bad("\"method\" must be a string"),
        None => return bad("no \"method\" (and no \"result\" or \"error\")"),
    }
    if v.get("result").is_some() || v.get("error").is_some() {
        return bad("both \"method\" and \"result\"/\"error\"");
    }
    if !matches!(
        v.get("params"),
        None | Some(Value::Object(_) | Value::Array(_) | Value::Null)
    ) {
        return bad("\"params\" must be an object or an array");
    }
    match v.get("id") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(Value::Number(n)) if n.is_i64() => {}
        Some(_) => return bad("\"id\" must be an integer or a string"),
    }
    // The last word is tower-lsp-server's own decoder (it refuses, e.g.,
    // duplicate keys, which a `Value` silently merges).
    serde_json::from_str::<Request>(text)
        .map(|_| ())
        .map_err(|e| Dropped::invalid(id, format!("not a JSON-RPC request: {e}")))
}

/// The single writer of stdout: whole frames, one at a time, in the order
/// they were queued. Cheap to clone; the writer task ends once every clone
/// and every [`FrameSink`] is dropped and the queue is written.
#[derive(Clone)]
pub struct Output {
    tx: mpsc::Sender<Vec<u8>>,
}

impl Output {
    /// Starts the writer task on `w`. Returns the handle and the task.
    pub fn start<W>(w: W) -> (Output, JoinHandle<()>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        (Output { tx }, tokio::spawn(write_frames(w, rx)))
    }

    /// Queues one whole frame; false when the writer is gone.
    pub async fn send(&self, frame: Vec<u8>) -> bool {
        self.tx.send(frame).await.is_ok()
    }

    /// A byte sink for tower-lsp-server: it cuts what it is given into whole
    /// frames and queues each one.
    pub fn sink(&self) -> FrameSink {
        FrameSink {
            tx: PollSender::new(self.tx.clone()),
            buf: Vec::new(),
            queued: VecDeque::new(),
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        let written = async {
            w.write_all(&frame).await?;
            w.flush().await
        };
        if let Err(e) = written.await {
            tracing::warn!("writing to stdout: {e}");
            return;
        }
    }
}

/// The [`AsyncWrite`] tower-lsp-server writes its frames to (see [`Output::sink`]).
pub struct FrameSink {
    tx: PollSender<Vec<u8>>,
    buf: Vec<u8>,
    queued: VecDeque<Vec<u8>>,
}

impl FrameSink {
    fn poll_send_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queued.is_empty() {
            ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
            let frame = self.queued.pop_front().expect("not empty");
            self.tx.send_item(frame).map_err(|_| closed())?;
        }
        Poll::Ready(Ok(()))
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the stdout writer has stopped")
}

/// Length of the first whole frame in `buf`, if it holds one. A header that is
/// not `Content-Length: <n>` (tower-lsp-server never writes one) makes the
/// whole buffer one piece, so no byte is lost.
fn whole_frame(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let len = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|h| h.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse::<usize>().ok());
    match len {
        Some(n) => (buf.len() >= end + 4 + n).then_some(end + 4 + n),
        None => Some(buf.len()),
    }
}

impl AsyncWrite for FrameSink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send_queued(cx))?;
        this.buf.extend_from_slice(data);
        while let Some(n) = whole_frame(&this.buf) {
            let frame: Vec<u8> = this.buf.drain(..n).collect();
            this.queued.push_back(frame);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send_queued(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() {
            let rest = std::mem::take(&mut this.buf);
            this.queued.push_back(rest);
        }
        ready!(this.poll_send_queued(cx))?;
        this.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// Reads `input` until it ends: well-formed messages go to `server`, each
/// behind a plain `Content-Length` header; dropped input is logged and, where
/// it gets an answer, answered through `out`. Errors: reading `input` or
/// writing `server` failed (the server side is gone).
pub async fn pump<R, W>(mut input: R, mut server: W, out: Output) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut parser = FrameParser::default();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = if parser.in_body() {
            match tokio::time::timeout(STALLED_BODY, input.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => {
                    parser.stalled();
                    deliver(&mut parser, &mut server, &out).await?;
                    continue;
                }
            }
        } else {
            input.read(&mut chunk).await?
        };
        if n == 0 {
            if let Some(d) = parser.finish() {
                log_dropped(&d);
            }
            return Ok(());
        }
        parser.push(&chunk[..n]);
        deliver(&mut parser, &mut server, &out).await?;
    }
}

async fn deliver<W: AsyncWrite + Unpin>(
    parser: &mut FrameParser,
    server: &mut W,
    out: &Output,
) -> io::Result<()> {
    let mut wrote = false;
    while let Some(frame) = parser.next_frame() {
        match frame {
            Frame::Message(body) => {
                server.write_all(&framed(&body)).await?;
                wrote = true;
            }
            Frame::Dropped(d) => {
                log_dropped(&d);
                if let Some(resp) = d.response() {
                    out.send(resp).await;
                }
            }
        }
    }
    if wrote {
        server.flush().await?;
    }
    Ok(())
}

fn log_dropped(d: &Dropped) {
    match &d.id {
        Some(id) => {
            tracing::warn!(code = d.code, %id, "dropped input from the editor: {}", d.reason)
        }
        None => tracing::warn!("dropped input from the editor (not answered): {}", d.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"jsonrpc":"2.0","id":7,"method":"textDocument/codeLens","params":{}}"#;

    fn frame(body: &str) -> Vec<u8> {
        framed(body.as_bytes())
    }

    fn run(input: &[u8]) -> Vec<Frame> {
        run_with(FrameParser::default(), input)
    }

    fn run_with(mut p: FrameParser, input: &[u8]) -> Vec<Frame> {
        p.push(input);
        std::iter::from_fn(|| p.next_frame()).collect()
    }

    fn dropped(code: i64, id: Option<Value>) -> impl Fn(&Frame) -> bool {
        move |f| matches!(f, Frame::Dropped(d) if d.code == code && d.id == id)
    }

    /// Every malformed case the adversarial run sent, as raw input.
    /// A malformed input: its name, its bytes, and the (code, id) of each drop it causes.
    type Case = (&'static str, Vec<u8>, Vec<(i64, Option<Value>)>);

    fn malformed() -> Vec<Case> {
        let p = PARSE_ERROR;
        let i = INVALID_REQUEST;
        let null = Some(Value::Null);
        let req3 = r#"{"jsonrpc":"2.0","id":3,"method":"textDocument/codeLens","params":{}}"#;
        let mut cases = vec![
            ("missing Content-Length", b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"x\"}".to_vec(), vec![(p, null.clone())]),
            ("non-numeric Content-Length", b"Content-Length: abc\r\n\r\n{}".to_vec(), vec![(p, null.clone())]),
            ("negative Content-Length", b"Content-Length: -5\r\n\r\n{}".to_vec(), vec![(p, null.clone())]),
            ("Content-Length over u64", b"Content-Length: 99999999999999999999999\r\n\r\n{}".to_vec(), vec![(p, null.clone())]),
            ("Content-Length over the cap", b"Content-Length: 67108865\r\n\r\n{}".to_vec(), vec![(p, null.clone())]),
            ("invalid UTF-8 in a header", b"Content-L\xffength: 2\r\n\r\n{}".to_vec(), vec![(p, null.clone())]),
            ("header line without a colon", b"hello world\r\n\r\n".to_vec(), vec![(p, null.clone())]),
            ("garbage without headers", b"\x00\x01garbage garbage".to_vec(), vec![(p, null.clone())]),
            // Resynchronised on the second header (a truncated frame followed by
            // a new one looks the same), whose 3 bytes are not JSON either.
            ("two different Content-Lengths", b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), vec![(p, null.clone()), (p, null.clone())]),
            ("Content-Length too small", format!("Content-Length: 10\r\n\r\n{req3}").into_bytes(), vec![(p, null.clone())]),
            ("Content-Length zero", format!("Content-Length: 0\r\n\r\n{req3}").into_bytes(), vec![(p, null.clone())]),
            ("Content-Length too large", format!("Content-Length: {}\r\n\r\n{req3}", req3.len() + 40).into_bytes(), vec![(i, Some(json!(3)))]),
            ("invalid UTF-8 in a string", frame_bytes(b"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"x\",\"params\":{\"s\":\"\xc3\x28\"}}"), vec![(p, null.clone())]),
            ("not JSON", frame("{oops"), vec![(p, null.clone())]),
            ("empty object", frame("{}"), vec![(i, null.clone())]),
            ("empty array", frame("[]"), vec![(i, null.clone())]),
            ("a number", frame("42"), vec![(i, null.clone())]),
            ("a string", frame("\"hi\""), vec![(i, null.clone())]),
            ("a batch", frame(&format!("[{req3}, {{\"jsonrpc\":\"2.0\",\"id\":\"b\",\"method\":\"y\"}}]")), vec![(i, Some(json!(3))), (i, Some(json!("b")))]),
            ("a batch of notifications", frame(r#"[{"jsonrpc":"2.0","method":"y"}]"#), vec![(i, null.clone())]),
            ("jsonrpc 1.0", frame(r#"{"jsonrpc":"1.0","id":5,"method":"textDocument/codeLens"}"#), vec![(i, Some(json!(5)))]),
            ("no jsonrpc", frame(r#"{"id":"s","method":"textDocument/codeLens"}"#), vec![(i, Some(json!("s")))]),
            ("method not a string", frame(r#"{"jsonrpc":"2.0","id":6,"method":1,"params":"bar"}"#), vec![(i, Some(json!(6)))]),
            ("params a number", frame(r#"{"jsonrpc":"2.0","id":8,"method":"x","params":5}"#), vec![(i, Some(json!(8)))]),
            ("fractional id", frame(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#), vec![(i, Some(json!(1.5)))]),
            ("object id", frame(r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#), vec![(i, null.clone())]),
            ("duplicate keys", frame(r#"{"jsonrpc":"2.0","id":9,"id":10,"method":"x"}"#), vec![(i, Some(json!(10)))]),
            ("id without method", frame(r#"{"jsonrpc":"2.0","id":11}"#), vec![(i, Some(json!(11)))]),
            ("method and result", frame(r#"{"jsonrpc":"2.0","id":12,"method":"x","result":1}"#), vec![(i, Some(json!(12)))]),
        ];
        // Not answered: malformed responses.
        cases.push((
            "response with a bad error",
            frame(r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x"}}"#),
            vec![(i, None)],
        ));
        cases.push((
            "response without jsonrpc",
            frame(r#"{"id":1,"result":null}"#),
            vec![(i, None)],
        ));
        cases
    }

    fn frame_bytes(body: &[u8]) -> Vec<u8> {
        framed(body)
    }

    #[test]
    fn a_valid_message_passes_unchanged() {
        assert_eq!(
            run(&frame(OK)),
            vec![Frame::Message(OK.as_bytes().to_vec())]
        );
        // Notifications, null params, responses, a string id, LF-only headers,
        // Content-Type, a repeated equal Content-Length, blank lines between frames.
        for body in [
            r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"shutdown","params":null}"#,
            r#"{"jsonrpc":"2.0","id":"a","result":[null]}"#,
            r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"no"}}"#,
        ] {
            assert_eq!(
                run(&frame(body)),
                vec![Frame::Message(body.as_bytes().to_vec())]
            );
        }
        let input = format!(
            "\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\nContent-Length: {n}\ncontent-length: {n}\n\n{OK}",
            n = OK.len()
        );
        assert_eq!(
            run(input.as_bytes()),
            vec![Frame::Message(OK.as_bytes().to_vec())]
        );
    }

    #[test]
    fn every_malformed_case_is_answered_and_the_next_message_passes() {
        for (name, bad, want) in malformed() {
            let mut input = bad.clone();
            input.extend(frame(OK));
            let out = run(&input);
            let (last, drops) = out.split_last().unwrap();
            assert_eq!(
                last,
                &Frame::Message(OK.as_bytes().to_vec()),
                "{name}: the next message passes: {out:?}"
            );
            assert_eq!(drops.len(), want.len(), "{name}: {drops:?}");
            for (d, (code, id)) in drops.iter().zip(want) {
                assert!(
                    dropped(code, id.clone())(d),
                    "{name}: want {code} {id:?}, got {d:?}"
                );
            }
        }
    }

    #[test]
    fn answers_are_framed_json_rpc_errors() {
        let out = run(&frame("[]"));
        let Frame::Dropped(d) = &out[0] else { panic!() };
        let resp = d.response().unwrap();
        let text = String::from_utf8(resp).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(head, format!("Content-Length: {}", body.len()));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], INVALID_REQUEST);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("empty batch"));
        let unanswered = Dropped::unanswered("x".into());
        assert!(unanswered.response().is_none());
    }

    #[test]
    fn the_same_frames_come_out_however_the_input_is_split() {
        let mut input = Vec::new();
        for (_, bad, _) in malformed() {
            input.extend(bad);
            input.extend(frame(OK));
        }
        let whole = run(&input);
        assert!(whole.len() > 60, "{}", whole.len());
        for cut in 0..=input.len() {
            let mut p = FrameParser::default();
            let mut out = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                p.push(part);
                out.extend(std::iter::from_fn(|| p.next_frame()));
            }
            assert_eq!(out, whole, "split at byte {cut}");
        }
        let mut p = FrameParser::default();
        let mut out = Vec::new();
        for b in &input {
            p.push(std::slice::from_ref(b));
            out.extend(std::iter::from_fn(|| p.next_frame()));
        }
        assert_eq!(out, whole, "one byte at a time");
    }

    #[test]
    fn a_length_a_few_bytes_too_large_does_not_swallow_the_next_frame() {
        let bad = r#"{"jsonrpc":"2.0","id":3,"method":"x"}"#;
        for extra in 1..40 {
            let mut input =
                format!("Content-Length: {}\r\n\r\n{bad}", bad.len() + extra).into_bytes();
            input.extend(frame(OK));
            let out = run(&input);
            assert_eq!(
                out.last(),
                Some(&Frame::Message(OK.as_bytes().to_vec())),
                "{extra} bytes too many: {out:?}"
            );
            assert_eq!(out.len(), 2, "{extra}: {out:?}");
        }
        // Garbage that runs into the next header line.
        let mut input = b"Content-Length: 3\n}]}}Content-Length: 9\r\n".to_vec();
        input.extend(frame(OK));
        let out = run(&input);
        assert_eq!(
            out.last(),
            Some(&Frame::Message(OK.as_bytes().to_vec())),
            "{out:?}"
        );
    }

    #[test]
    fn a_frame_over_the_cap_is_refused_and_skipped() {
        let big = format!(
            r#"{{"jsonrpc":"2.0","method":"x","params":{{"s":"{}"}}}}"#,
            "a".repeat(2000)
        );
        let mut input = frame(&big);
        input.extend(frame(OK));
        let out = run_with(FrameParser::new(1024), &input);
        assert_eq!(out.len(), 2, "{out:?}");
        let Frame::Dropped(d) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!((d.code, d.id.clone()), (PARSE_ERROR, Some(Value::Null)));
        assert!(d.reason.contains("over the limit of 1024"), "{}", d.reason);
        assert_eq!(out[1], Frame::Message(OK.as_bytes().to_vec()));
        // Right at the cap is fine.
        let at_cap = run_with(FrameParser::new(OK.len()), &frame(OK));
        assert_eq!(at_cap, vec![Frame::Message(OK.as_bytes().to_vec())]);
    }

    #[test]
    fn a_header_block_that_never_ends_is_garbage() {
        let mut input = vec![b'x'; MAX_HEADER_BYTES + 10];
        input.extend(frame(OK));
        let out = run(&input);
        assert!(dropped(PARSE_ERROR, Some(Value::Null))(&out[0]), "{out:?}");
        assert_eq!(out.last().unwrap(), &Frame::Message(OK.as_bytes().to_vec()));
        assert_eq!(out.len(), 2, "one error per run of garbage: {out:?}");
    }

    #[test]
    fn a_body_mentioning_content_length_in_a_string_is_not_cut() {
        let body = r#"{"jsonrpc":"2.0","method":"textDocument/didOpen","params":{"text":"Content-Length: 12\r\n\r\nContent-Length:3\n"}}"#;
        assert_eq!(
            run(&frame(body)),
            vec![Frame::Message(body.as_bytes().to_vec())]
        );
    }

    #[test]
    fn a_too_large_length_followed_by_silence_is_refused_when_stalled() {
        let mut p = FrameParser::default();
        p.push(format!("Content-Length: {}\r\n\r\n{OK}", OK.len() + 5).as_bytes());
        assert_eq!(p.next_frame(), None);
        assert!(p.in_body());
        assert!(p.stalled());
        let f = p.next_frame().unwrap();
        assert!(dropped(INVALID_REQUEST, Some(json!(7)))(&f), "{f:?}");
        p.push(&frame(OK));
        assert_eq!(p.next_frame(), Some(Frame::Message(OK.as_bytes().to_vec())));
        // A body that is not yet whole JSON keeps waiting (it may be slow, not wrong).
        let mut p = FrameParser::default();
        p.push(format!("Content-Length: {}\r\n\r\n{}", OK.len(), &OK[..20]).as_bytes());
        assert_eq!(p.next_frame(), None);
        assert!(!p.stalled());
        p.push(&OK.as_bytes()[20..]);
        assert_eq!(p.next_frame(), Some(Frame::Message(OK.as_bytes().to_vec())));
    }

    #[test]
    fn end_of_input_inside_a_frame_is_logged_not_answered() {
        let mut p = FrameParser::default();
        p.push(b"Content-Length: 50\r\n\r\n{\"js");
        assert_eq!(p.next_frame(), None);
        let d = p.finish().unwrap();
        assert!(d.id.is_none() && d.reason.contains("4 bytes"), "{d:?}");
        assert!(p.finish().is_none());
    }

    #[tokio::test]
    async fn the_sink_queues_whole_frames_however_it_is_written() {
        let (out, mut rx) = {
            let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
            (Output { tx }, rx)
        };
        let mut sink = out.sink();
        let mut bytes = frame(OK);
        bytes.extend(frame("{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":null}"));
        for part in bytes.chunks(7) {
            sink.write_all(part).await.unwrap();
        }
        sink.flush().await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), frame(OK));
        assert_eq!(
            rx.recv().await.unwrap(),
            frame("{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":null}")
        );
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn pump_passes_good_frames_and_answers_bad_ones() {
        let mut input = frame(OK);
        input.extend(frame("{}"));
        input.extend(b"Content-Length: 5\r\n\r\n{oops");
        input.extend(frame(r#"{"jsonrpc":"2.0","id":"r","result":null}"#));
        let (to_server, mut from_pump) = tokio::io::duplex(1 << 16);
        let (stdout, mut written) = tokio::io::duplex(1 << 16);
        let (out, writer) = Output::start(stdout);
        pump(&input[..], to_server, out).await.unwrap();
        writer.await.unwrap();
        let mut passed = Vec::new();
        from_pump.read_to_end(&mut passed).await.unwrap();
        let mut want = frame(OK);
        want.extend(frame(r#"{"jsonrpc":"2.0","id":"r","result":null}"#));
        assert_eq!(passed, want);
        let mut answers = Vec::new();
        written.read_to_end(&mut answers).await.unwrap();
        let answers = String::from_utf8(answers).unwrap();
        assert_eq!(answers.matches("Content-Length:").count(), 2, "{answers}");
        assert!(
            answers.contains("-32600") && answers.contains("-32700"),
            "{answers}"
        );
    }
}
