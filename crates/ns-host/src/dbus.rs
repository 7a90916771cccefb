//! A D-Bus client for the system bus, as little as the monitor needs to talk to
//! systemd-machined and systemd: the plain protocol over the bus's unix socket (EXTERNAL
//! authentication, `Hello`, method calls, their replies and errors, signals waited for),
//! blocking, thread-free and allocation-light. Only processes that never unshare use it.
//!
//! Messages are sent little-endian and read in either order (any client may send the
//! monitor a signal, in its own byte order). The values are those of the D-Bus specification
//! that the calls here need: bytes, booleans, 32-bit integers, 64-bit unsigned integers,
//! strings, object paths, signatures, arrays, structs and variants.
//!
//! What the bus sends is read with bounded cost: a message longer than [`KEEP`] is read past
//! in pieces, one that cannot be read is skipped (the connection stays), a call or a wait has
//! one deadline however many messages arrive meanwhile.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ns_core::{Context, Error, Result};

/// The system bus when `DBUS_SYSTEM_BUS_ADDRESS` names none (`unix:path=` only).
pub const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// How long one call (or the wait for a signal) may take before it fails.
const TIMEOUT: Duration = Duration::from_secs(25);

/// The longest message kept and decoded: the replies and signals the monitor waits for take
/// a few hundred bytes, and any client may send it a signal up to the bus's limit (32 MiB),
/// which decoded would cost some 50 times as much.
pub const KEEP: usize = 64 << 10;

/// A D-Bus value of the types the calls here use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    I32(i32),
    U32(u32),
    U64(u64),
    Str(String),
    Path(String),
    Sig(String),
    /// The element signature (needed for an empty array) and the elements.
    Array(String, Vec<Value>),
    Struct(Vec<Value>),
    Variant(Box<Value>),
}

impl Value {
    /// The value's type signature.
    pub fn signature(&self) -> String {
        match self {
            Value::Byte(_) => "y".into(),
            Value::Bool(_) => "b".into(),
            Value::I32(_) => "i".into(),
            Value::U32(_) => "u".into(),
            Value::U64(_) => "t".into(),
            Value::Str(_) => "s".into(),
            Value::Path(_) => "o".into(),
            Value::Sig(_) => "g".into(),
            Value::Array(elem, _) => format!("a{elem}"),
            Value::Struct(fields) => {
                let inner: String = fields.iter().map(Value::signature).collect();
                format!("({inner})")
            }
            Value::Variant(_) => "v".into(),
        }
    }

    /// A string, object path or signature.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Path(s) | Value::Sig(s) => Some(s),
            _ => None,
        }
    }

    /// A `(sv)` pair, systemd's property.
    pub fn property(name: &str, value: Value) -> Value {
        Value::Struct(vec![
            Value::Str(name.into()),
            Value::Variant(Box::new(value)),
        ])
    }
}

/// The alignment of the type that `sig` starts with.
fn alignment(sig: u8) -> usize {
    match sig {
        b'y' | b'g' | b'v' => 1,
        b't' | b'x' | b'd' | b'(' | b'{' => 8,
        _ => 4,
    }
}

/// Marshalling into a message buffer (offsets count from the message's start).
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn pad(&mut self, align: usize) {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
    }

    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Byte(b) => self.buf.push(*b),
            Value::Bool(b) => self.u32(u32::from(*b)),
            Value::I32(i) => self.u32(*i as u32),
            Value::U32(u) => self.u32(*u),
            Value::U64(u) => {
                self.pad(8);
                self.buf.extend_from_slice(&u.to_le_bytes());
            }
            Value::Str(s) | Value::Path(s) => {
                self.u32(s.len() as u32);
                self.buf.extend_from_slice(s.as_bytes());
                self.buf.push(0);
            }
            Value::Sig(s) => {
                self.buf.push(s.len() as u8);
                self.buf.extend_from_slice(s.as_bytes());
                self.buf.push(0);
            }
            Value::Array(elem, items) => {
                self.u32(0);
                let len_at = self.buf.len() - 4;
                self.pad(alignment(elem.as_bytes()[0]));
                let start = self.buf.len();
                items.iter().for_each(|i| self.value(i));
                let len = (self.buf.len() - start) as u32;
                self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
            }
            Value::Struct(fields) => {
                self.pad(8);
                fields.iter().for_each(|f| self.value(f));
            }
            Value::Variant(inner) => {
                self.value(&Value::Sig(inner.signature()));
                self.value(inner);
            }
        }
    }
}

/// Unmarshalling from a message buffer (offsets count from the message's start), in the
/// message's byte order (`big`: big-endian).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big: bool,
    /// How many arrays, structs and variants the value being read is inside.
    depth: usize,
}

/// The deepest nesting of arrays, structs and variants read (the specification's: 32 arrays
/// and 32 structs; the real bus refuses deeper messages, a bus of another's making may not).
const MAX_DEPTH: usize = 64;

fn malformed(what: &str) -> Error {
    Error::setup(format!("D-Bus: malformed message ({what})"))
}

impl Reader<'_> {
    fn align(&mut self, align: usize) -> Result<()> {
        self.pos = self.pos.div_ceil(align) * align;
        (self.pos <= self.buf.len())
            .then_some(())
            .ok_or_else(|| malformed("padding past the end"))
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| malformed("value past the end"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        self.align(4)?;
        let b: [u8; 4] = self.take(4)?.try_into().expect("4 bytes");
        Ok(match self.big {
            true => u32::from_be_bytes(b),
            false => u32::from_le_bytes(b),
        })
    }

    fn text(&mut self, len: usize) -> Result<String> {
        let s = self.take(len + 1)?;
        if s[len] != 0 {
            return Err(malformed("string without its NUL"));
        }
        String::from_utf8(s[..len].to_vec()).map_err(|_| malformed("string not UTF-8"))
    }

    /// The values of signature `sig`, in order.
    fn values(&mut self, sig: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut rest = sig;
        while !rest.is_empty() {
            let (one, tail) = split_type(rest)?;
            out.push(self.value(one)?);
            rest = tail;
        }
        Ok(out)
    }

    /// One value of the single complete type `sig`, nested at most [`MAX_DEPTH`] deep.
    fn value(&mut self, sig: &str) -> Result<Value> {
        let nests = matches!(sig.as_bytes()[0], b'a' | b'(' | b'v');
        if nests {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(malformed("nested too deeply"));
            }
        }
        let v = self.value_in(sig);
        self.depth -= usize::from(nests);
        v
    }

    fn value_in(&mut self, sig: &str) -> Result<Value> {
        Ok(match sig.as_bytes()[0] {
            b'y' => Value::Byte(self.take(1)?[0]),
            b'b' => Value::Bool(self.u32()? != 0),
            b'i' => Value::I32(self.u32()? as i32),
            b'u' => Value::U32(self.u32()?),
            b't' => {
                self.align(8)?;
                let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
                Value::U64(match self.big {
                    true => u64::from_be_bytes(b),
                    false => u64::from_le_bytes(b),
                })
            }
            b's' => {
                let n = self.u32()? as usize;
                Value::Str(self.text(n)?)
            }
            b'o' => {
                let n = self.u32()? as usize;
                Value::Path(self.text(n)?)
            }
            b'g' => {
                let n = self.take(1)?[0] as usize;
                Value::Sig(self.text(n)?)
            }
            b'a' => self.array(&sig[1..])?,
            b'(' => {
                self.align(8)?;
                Value::Struct(self.values(&sig[1..sig.len() - 1])?)
            }
            b'v' => {
                let n = self.take(1)?[0] as usize;
                let inner = self.text(n)?;
                let (one, tail) = split_type(&inner)?;
                if !tail.is_empty() {
                    return Err(malformed("variant of more than one type"));
                }
                Value::Variant(Box::new(self.value(one)?))
            }
            _ => return Err(malformed(&format!("type {sig} not handled"))),
        })
    }

    fn array(&mut self, elem: &str) -> Result<Value> {
        let len = self.u32()? as usize;
        self.align(alignment(elem.as_bytes()[0]))?;
        let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| malformed("array past the end"))?;
        let mut items = Vec::new();
        while self.pos < end {
            let at = self.pos;
            items.push(self.value(elem)?);
            if self.pos == at {
                return Err(malformed("array of elements of no size"));
            }
        }
        if self.pos != end {
            return Err(malformed("array length"));
        }
        Ok(Value::Array(elem.to_string(), items))
    }
}

/// The first complete type of `sig`, and the rest.
fn split_type(sig: &str) -> Result<(&str, &str)> {
    // Type codes are ASCII; a signature read off the wire may hold any UTF-8, and splitting
    // inside a multi-byte character would panic.
    if !sig.is_ascii() {
        return Err(malformed("signature not ASCII"));
    }
    let b = sig.as_bytes();
    let mut i = 0;
    while b.get(i) == Some(&b'a') {
        i += 1;
    }
    let end = match b.get(i) {
        Some(b'(') | Some(b'{') => {
            let mut depth = 0;
            let mut j = i;
            loop {
                match b.get(j) {
                    Some(b'(') | Some(b'{') => depth += 1,
                    Some(b')') | Some(b'}') => depth -= 1,
                    None => return Err(malformed("unbalanced signature")),
                    _ => {}
                }
                j += 1;
                if depth == 0 {
                    break j;
                }
            }
        }
        Some(_) => i + 1,
        None => return Err(malformed("empty signature")),
    };
    Ok(sig.split_at(end))
}

/// Message types.
pub const METHOD_CALL: u8 = 1;
pub const METHOD_RETURN: u8 = 2;
pub const ERROR: u8 = 3;
pub const SIGNAL: u8 = 4;

/// A message: its type, serial, the header fields the calls use, and its body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub kind: u8,
    pub serial: u32,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub reply_serial: Option<u32>,
    pub destination: Option<String>,
    pub sender: Option<String>,
    pub body: Vec<Value>,
}

impl Message {
    /// A method call of `member` on `path`, `interface` at `destination`.
    pub fn call(destination: &str, path: &str, interface: &str, member: &str) -> Message {
        Message {
            kind: METHOD_CALL,
            path: Some(path.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            destination: Some(destination.into()),
            ..Message::default()
        }
    }

    /// The wire bytes, with `serial`.
    pub fn encode(&self, serial: u32) -> Vec<u8> {
        let sig: String = self.body.iter().map(Value::signature).collect();
        let mut body = Writer { buf: Vec::new() };
        // The body starts 8-aligned, so aligning from 0 is the same.
        self.body.iter().for_each(|v| body.value(v));
        let str_field = |code: u8, v: &Option<String>, path: bool| {
            v.as_ref().map(|s| {
                let s = s.clone();
                let val = if path { Value::Path(s) } else { Value::Str(s) };
                Value::Struct(vec![Value::Byte(code), Value::Variant(Box::new(val))])
            })
        };
        let mut fields: Vec<Value> = [
            str_field(1, &self.path, true),
            str_field(2, &self.interface, false),
            str_field(3, &self.member, false),
            str_field(4, &self.error_name, false),
            (self.reply_serial).map(|r| {
                Value::Struct(vec![
                    Value::Byte(5),
                    Value::Variant(Box::new(Value::U32(r))),
                ])
            }),
            str_field(6, &self.destination, false),
            str_field(7, &self.sender, false),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !sig.is_empty() {
            let v = Value::Variant(Box::new(Value::Sig(sig)));
            fields.push(Value::Struct(vec![Value::Byte(8), v]));
        }
        let mut w = Writer {
            buf: vec![b'l', self.kind, 0, 1],
        };
        w.u32(body.buf.len() as u32);
        w.u32(serial);
        w.value(&Value::Array("(yv)".into(), fields));
        w.pad(8);
        w.buf.extend_from_slice(&body.buf);
        w.buf
    }

    /// The message in `buf` (exactly one, whole).
    pub fn decode(buf: &[u8]) -> Result<Message> {
        let head: &[u8; 16] = (buf.get(..16).and_then(|h| h.try_into().ok()))
            .ok_or_else(|| malformed("short header"))?;
        let big = big_endian(head)?;
        let mut r = Reader {
            buf,
            pos: 4,
            big,
            depth: 0,
        };
        let body_len = r.u32()? as usize;
        let mut m = Message {
            kind: buf[1],
            serial: r.u32()?,
            ..Message::default()
        };
        let Value::Array(_, fields) = r.value("a(yv)")? else {
            unreachable!("an array signature gives an array")
        };
        let mut sig = String::new();
        for f in fields {
            let Value::Struct(f) = f else { continue };
            let (Some(Value::Byte(code)), Some(Value::Variant(v))) = (f.first(), f.get(1)) else {
                continue;
            };
            let s = v.as_str().map(str::to_string);
            match code {
                1 => m.path = s,
                2 => m.interface = s,
                3 => m.member = s,
                4 => m.error_name = s,
                5 => {
                    m.reply_serial = if let Value::U32(u) = **v {
                        Some(u)
                    } else {
                        None
                    }
                }
                6 => m.destination = s,
                7 => m.sender = s,
                8 => sig = s.unwrap_or_default(),
                _ => {}
            }
        }
        r.align(8)?;
        let start = r.pos;
        if buf.len() != start + body_len {
            return Err(malformed("body length"));
        }
        let mut body = Reader {
            buf: &buf[start..],
            pos: 0,
            big,
            depth: 0,
        };
        m.body = body.values(&sig)?;
        Ok(m)
    }

    /// The first string of the body (an error's message).
    fn first_str(&self) -> &str {
        self.body.first().and_then(Value::as_str).unwrap_or("")
    }
}

/// Whether the message whose first 16 bytes are `head` is big-endian (`B`) rather than
/// little-endian (`l`); anything else is no D-Bus message.
fn big_endian(head: &[u8; 16]) -> Result<bool> {
    match head[0] {
        b'l' => Ok(false),
        b'B' => Ok(true),
        _ => Err(malformed("byte order")),
    }
}

/// The length of the whole message whose first 16 bytes are `head`.
fn message_len(head: &[u8; 16]) -> Result<usize> {
    let big = big_endian(head)?;
    let word = |i: usize| {
        let w = [head[i], head[i + 1], head[i + 2], head[i + 3]];
        match big {
            true => u32::from_be_bytes(w),
            false => u32::from_le_bytes(w),
        }
    };
    let (body, fields) = (word(4) as usize, word(12) as usize);
    let total = (16 + fields).div_ceil(8) * 8 + body;
    // The specification's limit on a message.
    if total > 1 << 27 {
        return Err(malformed("longer than 128 MiB"));
    }
    Ok(total)
}

/// An error reply: its D-Bus name and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusError {
    pub name: String,
    pub message: String,
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.message.is_empty() {
            true => f.write_str(&self.name),
            false => f.write_str(&self.message),
        }
    }
}

/// What a call returned: its body, or the error the peer replied with.
pub type Reply = std::result::Result<Vec<Value>, BusError>;

/// A connection to a bus, authenticated, with its unique name.
pub struct Bus {
    stream: UnixStream,
    serial: u32,
    pub unique_name: String,
    /// How long a call, a wait for a signal or the handshake may take.
    timeout: Duration,
}

impl Bus {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS`'s `unix:path=`, else [`SYSTEM_BUS`]), or
    /// None when nothing listens there (no bus on this host: one failed connect).
    pub fn system() -> Result<Option<Bus>> {
        let path = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .ok()
            .and_then(|a| unix_path(&a))
            .unwrap_or_else(|| SYSTEM_BUS.to_string());
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTDIR) => Ok(None),
                    _ => Err(e).ctx(|| format!("cannot connect to the system bus at {path}")),
                }
            }
        };
        Bus::open(stream).map(Some)
    }

    /// Authenticate on `stream` (EXTERNAL, as our uid) and say Hello.
    pub fn open(stream: UnixStream) -> Result<Bus> {
        Bus::open_within(stream, TIMEOUT)
    }

    /// [`Bus::open`], each step bounded by `timeout` (reads: [`Bus::read_by`]).
    fn open_within(stream: UnixStream, timeout: Duration) -> Result<Bus> {
        let io =
            |e: std::io::Error| Error::setup(format!("D-Bus: {}", ns_core::error::io_desc(&e)));
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        let mut bus = Bus {
            stream,
            serial: 0,
            unique_name: String::new(),
            timeout,
        };
        bus.stream
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())
            .map_err(io)?;
        let line = bus.auth_line(Instant::now() + timeout)?;
        if !line.starts_with("OK ") {
            return Err(Error::setup(format!(
                "D-Bus: the bus refused us: {}",
                line.trim()
            )));
        }
        bus.stream.write_all(b"BEGIN\r\n").map_err(io)?;
        let hello = Message::call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "Hello",
        );
        let reply = bus
            .call(hello)?
            .map_err(|e| Error::setup(format!("D-Bus Hello: {e}")))?;
        bus.unique_name = reply.first().and_then(Value::as_str).unwrap_or("").into();
        Ok(bus)
    }

    /// One line of the authentication exchange, by `deadline` (byte by byte: nothing after
    /// it is ours).
    fn auth_line(&mut self, deadline: Instant) -> Result<String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") && line.len() < 512 {
            self.read_by(&mut b, deadline)
                .ctx(|| "D-Bus: authentication".into())?;
            line.push(b[0]);
        }
        match line.ends_with(b"\r\n") {
            true => Ok(String::from_utf8_lossy(&line).into_owned()),
            false => Err(Error::setup("D-Bus: authentication line too long".into())),
        }
    }

    /// Fill `buf` from the bus by `deadline` (each read waits only for what is left of it,
    /// however slowly the bytes come).
    fn read_by(&mut self, mut buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
        use std::io::ErrorKind;
        while !buf.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(buf) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(ErrorKind::TimedOut.into())
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Send `m` (a method call) and wait (bounded, however many other messages arrive) for
    /// its reply; other messages that arrive meanwhile (signals) are dropped.
    pub fn call(&mut self, m: Message) -> Result<Reply> {
        self.call_seeing(m, |_| {})
    }

    /// [`Bus::call`], showing `seen` each other message that arrives meanwhile (a signal the
    /// caller must not lose).
    pub fn call_seeing(&mut self, m: Message, mut seen: impl FnMut(&Message)) -> Result<Reply> {
        let serial = self.send(&m)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let Some(r) = self.receive_by(deadline)? else {
                continue;
            };
            if r.reply_serial != Some(serial) {
                seen(&r);
                continue;
            }
            return Ok(match r.kind {
                ERROR => Err(BusError {
                    name: r.error_name.clone().unwrap_or_default(),
                    message: r.first_str().to_string(),
                }),
                _ => Ok(r.body),
            });
        }
    }

    /// Send `m`; its serial.
    pub fn send(&mut self, m: &Message) -> Result<u32> {
        self.serial += 1;
        self.stream
            .write_all(&m.encode(self.serial))
            .ctx(|| "D-Bus: cannot send".into())?;
        Ok(self.serial)
    }

    /// The connection's socket (to poll).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The next message (bounded by the timeout); None for one that was skipped: longer
    /// than [`KEEP`] (read past in pieces) or not readable (its frame was).
    pub fn receive(&mut self) -> Result<Option<Message>> {
        self.receive_by(Instant::now() + self.timeout)
    }

    /// [`Bus::receive`] by `deadline`.
    fn receive_by(&mut self, deadline: Instant) -> Result<Option<Message>> {
        let mut head = [0u8; 16];
        self.read_by(&mut head, deadline)
            .ctx(|| "D-Bus: no answer from the bus".into())?;
        let len = message_len(&head)?;
        let cut = || "D-Bus: message cut short".to_string();
        if len > KEEP {
            let mut piece = vec![0u8; 16 << 10];
            let mut left = len - 16;
            while left > 0 {
                let n = left.min(piece.len());
                self.read_by(&mut piece[..n], deadline).ctx(cut)?;
                left -= n;
            }
            return Ok(None);
        }
        let mut buf = head.to_vec();
        buf.resize(len, 0);
        self.read_by(&mut buf[16..], deadline).ctx(cut)?;
        Ok(Message::decode(&buf).ok())
    }

    /// Wait (bounded, however many other messages arrive) for the signal `accept` takes
    /// (after an `AddMatch` for it).
    pub fn wait_signal(&mut self, mut accept: impl FnMut(&Message) -> bool) -> Result<Message> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let Some(m) = self.receive_by(deadline)? else {
                continue;
            };
            if m.kind == SIGNAL && accept(&m) {
                return Ok(m);
            }
        }
    }
}

/// Unit tests' side of a connection: the test plays the bus.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A connection on `stream` without the handshake, each call bounded by `timeout`.
    pub(crate) fn bus_over(stream: UnixStream, timeout: Duration) -> Bus {
        Bus {
            stream,
            serial: 0,
            unique_name: String::new(),
            timeout,
        }
    }

    /// One message from the other side of a connection.
    pub(crate) fn next(s: &mut UnixStream) -> Message {
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        let mut buf = head.to_vec();
        buf.resize(message_len(&head).unwrap(), 0);
        s.read_exact(&mut buf[16..]).unwrap();
        Message::decode(&buf).unwrap()
    }
}

/// The path of a `unix:path=P[,…]` bus address (the first such of `;`-separated ones).
fn unix_path(address: &str) -> Option<String> {
    address.split(';').find_map(|a| {
        let params = a.strip_prefix("unix:")?;
        params
            .split(',')
            .find_map(|kv| kv.strip_prefix("path=").map(str::to_string))
    })
}

#[cfg(test)]
mod tests {
    use super::testing::{bus_over, next};
    use super::*;

    /// `Hello` as dbus-monitor in the guest shows it: serial 1, no body.
    #[test]
    fn hello_encodes_as_the_bus_expects() {
        let m = Message::call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "Hello",
        );
        let b = m.encode(1);
        assert_eq!(&b[..12], b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00");
        assert!(b.len().is_multiple_of(8));
        let back = Message::decode(&b).unwrap();
        assert_eq!(back.member.as_deref(), Some("Hello"));
        assert_eq!(back.path.as_deref(), Some("/org/freedesktop/DBus"));
        assert!(back.body.is_empty());
    }

    #[test]
    fn a_round_trip_keeps_every_type() {
        let mut m = Message::call("d.e", "/p", "i.f", "M");
        m.body = vec![
            Value::Str("inner".into()),
            Value::Array("y".into(), (0..16).map(Value::Byte).collect()),
            Value::U32(4242),
            Value::Array(
                "(sv)".into(),
                vec![
                    Value::property("Delegate", Value::Bool(true)),
                    Value::property("PIDs", Value::Array("u".into(), vec![Value::U32(7)])),
                    Value::property("X", Value::U64(1 << 40)),
                ],
            ),
            Value::Array("i".into(), Vec::new()),
            Value::Path("/a/b".into()),
            Value::I32(-3),
        ];
        let b = m.encode(9);
        let back = Message::decode(&b).unwrap();
        assert_eq!(back.body, m.body);
        assert_eq!(back.serial, 9);
        assert_eq!(message_len(b[..16].try_into().unwrap()).unwrap(), b.len());
    }

    /// `busctl call org.freedesktop.machine1 /org/freedesktop/machine1
    /// org.freedesktop.machine1.Manager GetMachine s inner`, as `dbus-monitor --binary` in the
    /// guest showed its body: the string `inner`, length 5, NUL-terminated.
    #[test]
    fn a_string_body_is_length_text_nul() {
        let mut m = Message::call(
            "org.freedesktop.machine1",
            "/org/freedesktop/machine1",
            "org.freedesktop.machine1.Manager",
            "GetMachine",
        );
        m.body = vec![Value::Str("inner".into())];
        let b = m.encode(2);
        assert_eq!(&b[b.len() - 10..], b"\x05\x00\x00\x00inner\x00");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 10);
    }

    /// An error reply as the bus sends it: the name in field 4, the message as the body.
    #[test]
    fn an_error_reply_decodes_to_its_name_and_message() {
        let mut e = Message {
            kind: ERROR,
            error_name: Some("org.freedesktop.machine1.NoSuchMachine".into()),
            reply_serial: Some(2),
            ..Message::default()
        };
        e.body = vec![Value::Str("No machine 'inner' known".into())];
        let d = Message::decode(&e.encode(5)).unwrap();
        assert_eq!(d.kind, ERROR);
        assert_eq!(d.reply_serial, Some(2));
        assert_eq!(d.first_str(), "No machine 'inner' known");
    }

    #[test]
    fn alignment_inside_arrays_and_structs() {
        // A struct in an array starts 8-aligned after the array's length.
        let mut w = Writer { buf: Vec::new() };
        w.value(&Value::Array(
            "(yu)".into(),
            vec![Value::Struct(vec![Value::Byte(1), Value::U32(2)])],
        ));
        assert_eq!(
            w.buf,
            b"\x08\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"
        );
        // A signature is one length byte.
        let mut w = Writer { buf: Vec::new() };
        w.value(&Value::Variant(Box::new(Value::U32(3))));
        assert_eq!(w.buf, b"\x01u\x00\x00\x03\x00\x00\x00");
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut m = Message::call("d", "/p", "i", "M");
        m.body = vec![Value::Str("x".into())];
        let b = m.encode(1);
        assert!(Message::decode(&b[..b.len() - 1]).is_err());
        let mut order = b.clone();
        order[0] = b'X';
        assert!(Message::decode(&order).is_err());
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 1] = b'!'; // the string's NUL
        assert!(Message::decode(&bad).is_err());
        assert!(split_type("(su").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            unix_path("unix:path=/run/x/bus,guid=1").as_deref(),
            Some("/run/x/bus")
        );
        assert_eq!(unix_path("tcp:host=a;unix:path=/b").as_deref(), Some("/b"));
        assert_eq!(unix_path("unix:abstract=/x"), None);
    }

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `busctl call org.freedesktop.machine1 /org/freedesktop/machine1
    /// org.freedesktop.machine1.Manager GetMachine s inner` as `dbus-monitor --system
    /// --binary` showed it in the guest (sd-bus's field order, the sender the bus added).
    const BUSCTL_GET_MACHINE: &str = "6c0104010a00000002000000ae00000001016f00190000002f6f72672f667265656465736b746f702f6d616368696e653100000000000000030173000a0000004765744d616368696e6500000000000002017300200000006f72672e667265656465736b746f702e6d616368696e65312e4d616e61676572000000000000000006017300180000006f72672e667265656465736b746f702e6d616368696e65310000000000000000080167000173000007017300050000003a312e313600000005000000696e6e657200";

    /// machined's answer to `GetMachine s nosuch`, captured the same way.
    const MACHINED_NO_SUCH_MACHINE: &str = "6c0301011e000000550000005d000000050175000200000006017300050000003a312e313800000004017300260000006f72672e667265656465736b746f702e6d616368696e65312e4e6f537563684d616368696e650000080167000173000007017300040000003a312e3300000000190000004e6f206d616368696e6520276e6f7375636827206b6e6f776e00";

    #[test]
    fn what_busctl_sent_decodes_and_our_body_is_the_same() {
        let real = unhex(BUSCTL_GET_MACHINE);
        assert_eq!(
            message_len(real[..16].try_into().unwrap()).unwrap(),
            real.len()
        );
        let d = Message::decode(&real).unwrap();
        assert_eq!((d.kind, d.serial), (METHOD_CALL, 2));
        assert_eq!(d.path.as_deref(), Some("/org/freedesktop/machine1"));
        assert_eq!(d.member.as_deref(), Some("GetMachine"));
        assert_eq!(d.destination.as_deref(), Some("org.freedesktop.machine1"));
        assert_eq!(d.sender.as_deref(), Some(":1.16"));
        assert_eq!(d.body, vec![Value::Str("inner".into())]);
        // Ours: the same fields (no sender: the bus adds it), the same body bytes.
        let mut ours = Message::call(
            "org.freedesktop.machine1",
            "/org/freedesktop/machine1",
            "org.freedesktop.machine1.Manager",
            "GetMachine",
        );
        ours.body = d.body.clone();
        let b = ours.encode(2);
        assert_eq!(b[b.len() - 10..], real[real.len() - 10..]);
        assert_eq!(b[4..12], real[4..12]);
        let back = Message::decode(&b).unwrap();
        assert_eq!(Message { sender: None, ..d }, back);
    }

    #[test]
    fn machineds_error_reply_decodes_to_its_name_and_message() {
        let d = Message::decode(&unhex(MACHINED_NO_SUCH_MACHINE)).unwrap();
        assert_eq!(d.kind, ERROR);
        assert_eq!(d.reply_serial, Some(2));
        assert_eq!(
            d.error_name.as_deref(),
            Some("org.freedesktop.machine1.NoSuchMachine")
        );
        assert_eq!(d.first_str(), "No machine 'nosuch' known");
    }

    /// What the bus played by [`fake_bus`] received: the auth line, BEGIN, Hello, the call.
    type Received = (String, [u8; 7], Message, Message);

    /// A bus on `s`: takes the auth line and says OK, takes BEGIN, answers Hello with
    /// `:1.42`, then answers the next call with machined's captured error reply, a signal
    /// before it.
    fn fake_bus(mut s: UnixStream) -> Received {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n") {
            s.read_exact(&mut b).unwrap();
            got.push(b[0]);
        }
        s.write_all(b"OK 0123456789abcdef\r\n").unwrap();
        let mut begin = [0u8; 7];
        s.read_exact(&mut begin).unwrap();
        let hello = next(&mut s);
        let reply = Message {
            kind: METHOD_RETURN,
            reply_serial: Some(hello.serial),
            body: vec![Value::Str(":1.42".into())],
            ..Message::default()
        };
        s.write_all(&reply.encode(1)).unwrap();
        let call = next(&mut s);
        let noise = Message {
            kind: SIGNAL,
            path: Some("/x".into()),
            interface: Some("a.b".into()),
            member: Some("Noise".into()),
            ..Message::default()
        };
        s.write_all(&noise.encode(2)).unwrap();
        let mut error = unhex(MACHINED_NO_SUCH_MACHINE);
        error[20] = call.serial as u8; // reply_serial names the call
        s.write_all(&error).unwrap();
        (
            String::from_utf8_lossy(&got).into_owned(),
            begin,
            hello,
            call,
        )
    }

    /// The whole exchange against a bus played by a thread on a socket pair: EXTERNAL as our
    /// uid, BEGIN, Hello, a call answered by an error reply (signals before it dropped).
    #[test]
    fn authenticates_says_hello_and_calls() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let bus = std::thread::spawn(move || fake_bus(theirs));
        let mut b = Bus::open(ours).unwrap();
        assert_eq!(b.unique_name, ":1.42");
        let mut m = Message::call("org.freedesktop.machine1", "/o", "i.m", "GetMachine");
        m.body = vec![Value::Str("nosuch".into())];
        let err = b.call(m).unwrap().unwrap_err();
        assert_eq!(err.name, "org.freedesktop.machine1.NoSuchMachine");
        assert_eq!(err.to_string(), "No machine 'nosuch' known");
        let (auth, begin, hello, call) = bus.join().unwrap();
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|c| format!("{c:02x}")).collect();
        assert_eq!(auth, format!("\0AUTH EXTERNAL {hex}\r\n"));
        assert_eq!(&begin, b"BEGIN\r\n");
        assert_eq!(hello.member.as_deref(), Some("Hello"));
        assert_eq!(call.body, vec![Value::Str("nosuch".into())]);
    }

    /// A signal in big-endian order (as perl wrote it in the guest, which the bus passed on
    /// as sent): read as any other.
    const BIG_ENDIAN_SIGNAL: &str = "4204000100000007000000070000005801016f00000000022f780000000000000201730000000003612e62000000000003017300000000054e6f69736500000006017300000000053a312e343200000007017300000000043a312e3700000000080167000261790000000003414141";

    #[test]
    fn a_big_endian_message_is_read() {
        let b = unhex(BIG_ENDIAN_SIGNAL);
        assert_eq!(message_len(b[..16].try_into().unwrap()).unwrap(), b.len());
        let d = Message::decode(&b).unwrap();
        assert_eq!((d.kind, d.serial), (SIGNAL, 7));
        assert_eq!(d.path.as_deref(), Some("/x"));
        assert_eq!(d.member.as_deref(), Some("Noise"));
        assert_eq!(d.sender.as_deref(), Some(":1.7"));
        let aaa = (0..3).map(|_| Value::Byte(b'A')).collect();
        assert_eq!(d.body, vec![Value::Array("y".into(), aaa)]);
    }

    /// A connection on `ours` whose peer writes `messages` (from a thread: they may be more
    /// than the socket holds).
    fn bus_sent(messages: Vec<Vec<u8>>) -> Bus {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || messages.iter().for_each(|m| theirs.write_all(m).unwrap()));
        bus_over(ours, TIMEOUT)
    }

    fn signal(member: &str, body: Vec<Value>) -> Message {
        Message {
            kind: SIGNAL,
            path: Some("/x".into()),
            interface: Some("a.b".into()),
            member: Some(member.into()),
            body,
            ..Message::default()
        }
    }

    /// Any client may send the monitor a signal up to the bus's 32 MiB: one longer than KEEP
    /// is read past (never decoded: 50 times its size), one that cannot be decoded is
    /// skipped, and the connection goes on with the next message.
    #[test]
    fn long_and_unreadable_messages_are_skipped_and_the_next_read() {
        let huge = signal(
            "Huge",
            vec![Value::Array("y".into(), vec![Value::Byte(1); 1 << 20])],
        );
        let mut bad = signal("Bad", vec![Value::Str("x".into())]).encode(2);
        let n = bad.len();
        bad[n - 1] = b'!'; // the string's NUL
        let next = signal("Next", vec![Value::U32(7)]);
        let mut b = bus_sent(vec![huge.encode(1), bad, next.encode(3)]);
        assert_eq!(b.receive().unwrap(), None);
        assert_eq!(b.receive().unwrap(), None);
        let got = b.receive().unwrap().unwrap();
        assert_eq!((got.member.as_deref(), got.body), (Some("Next"), next.body));
    }

    /// A peer that sends `chunk` every 50 ms for 3 s (reading nothing), then hangs up.
    fn chatty_peer(chunk: Vec<u8>) -> UnixStream {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            for _ in 0..60 {
                if theirs.write_all(&chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        ours
    }

    /// How long `f` took, in ms.
    fn took(f: impl FnOnce()) -> u128 {
        let t = std::time::Instant::now();
        f();
        t.elapsed().as_millis()
    }

    /// A bus that never answers but keeps sending (signals any client may send, or an
    /// authentication line a byte at a time) does not keep a call, a wait for a signal or
    /// the handshake going past the timeout (300 ms here; 25 s in use, as sd-bus's): each
    /// read was bounded, not the whole (3 s here, for ever in use).
    #[test]
    fn a_bus_that_chatters_but_never_answers_is_given_up_in_time() {
        let noise = signal("Noise", Vec::new()).encode(1);
        let quick = Duration::from_millis(300);
        let mut b = bus_over(chatty_peer(noise.clone()), quick);
        let ms = took(|| assert!(b.call(Message::call("d", "/p", "i", "M")).is_err()));
        assert!(ms < 1500, "the call took {ms} ms");
        let mut b = bus_over(chatty_peer(noise), quick);
        let ms = took(|| assert!(b.wait_signal(|_| false).is_err()));
        assert!(ms < 1500, "the wait took {ms} ms");
        let ms = took(|| assert!(Bus::open_within(chatty_peer(b"O".to_vec()), quick).is_err()));
        assert!(ms < 1500, "the handshake took {ms} ms");
    }

    /// `m` with `body` in place of its own.
    fn with_body(m: &Message, body: &[u8]) -> Vec<u8> {
        let mut b = m.encode(1);
        let own = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        b.truncate(b.len() - own);
        b[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(body);
        b
    }

    /// What only a bus of another's making could send (the real one checks messages): a
    /// variant in a variant... 100 000 deep, and an array of empty structs, are refused with
    /// an error (they overflowed the stack, and grew the array for ever, before).
    #[test]
    fn deep_nesting_and_empty_elements_are_refused() {
        let v = signal("V", vec![Value::Variant(Box::new(Value::Byte(5)))]);
        let mut deep = b"\x01v\x00".repeat(100_000);
        deep.extend_from_slice(b"\x01y\x00\x05");
        assert!(Message::decode(&with_body(&v, b"\x01y\x00\x05")).is_ok());
        assert!(Message::decode(&with_body(&v, &deep)).is_err(), "deep");
        let a = signal("A", vec![Value::Array("()".into(), Vec::new())]);
        let elements = [8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(Message::decode(&with_body(&a, &[0; 8])).is_ok());
        assert!(Message::decode(&with_body(&a, &elements)).is_err());
    }

    /// A variant whose signature is UTF-8 but not ASCII (found by the fuzzer: splitting the
    /// signature inside a two-byte character panicked) is refused with an error.
    #[test]
    fn a_signature_that_is_not_ascii_is_refused() {
        let v = signal("V", vec![Value::Variant(Box::new(Value::Byte(5)))]);
        assert!(Message::decode(&with_body(&v, b"\x01y\x00\x05")).is_ok());
        let body = "\x02\u{480}\x00\x05".as_bytes();
        assert!(Message::decode(&with_body(&v, body)).is_err());
        assert!(split_type("\u{480}y").is_err());
    }

    /// Nothing listens where the address points: no bus (one failed connect), no error.
    #[test]
    fn no_bus_is_none() {
        std::env::set_var(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/nonexistent/ns-run-test-bus",
        );
        assert!(Bus::system().unwrap().is_none());
    }
}
