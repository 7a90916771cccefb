//! The client side of a CRI streaming exec, as kubectl's: the URL that Exec returns is opened
//! as a WebSocket speaking Kubernetes' channel protocol (`v4.channel.k8s.io`). Each binary
//! message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the error channel (a JSON
//! Status carrying the exit code), 4 terminal size. Plain HTTP only (containerd's default
//! stream server); version 4 of the protocol cannot say "end of stdin", so a command reading
//! stdin must end by itself (a shell's `exit`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use serde_json::Value;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BINARY: u8 = 2;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

/// Run the exec behind `url`: our stdin to it (with `stdin`), its output to ours; its exit
/// code.
pub fn exec(url: &str, stdin: bool, tty: bool) -> Result<i32> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not a plain http URL: {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut sock = TcpStream::connect(host)?;
    handshake(&mut sock, host, path)?;
    let out = Arc::new(Mutex::new(sock.try_clone()?));
    if tty {
        let size = br#"{"Width":80,"Height":24}"#;
        send(&out, &[&[4u8][..], size].concat())?;
    }
    if stdin {
        let out = out.clone();
        std::thread::spawn(move || pump_stdin(&out));
    }
    let mut status = Vec::new();
    let mut channel = 0u8;
    while let Some((opcode, data)) = read_frame(&mut sock)? {
        match opcode {
            CLOSE => break,
            PING => send_frame(&out, PONG, &data)?,
            PONG => {}
            0 => deliver(channel, &data, &mut status)?, // a continuation
            _ if !data.is_empty() => {
                channel = data[0];
                deliver(channel, &data[1..], &mut status)?;
            }
            _ => {}
        }
    }
    exit_code(&status)
}

/// The HTTP upgrade to a WebSocket with the channel protocol.
fn handshake(sock: &mut TcpStream, host: &str, path: &str) -> Result<()> {
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: bnMtY3JpIGV4ZWMga2V5IQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if sock.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(format!("stream server refused the exec: {status}").into());
    }
    Ok(())
}

/// Stdout and stderr to ours; the error channel kept for the exit code.
fn deliver(channel: u8, data: &[u8], status: &mut Vec<u8>) -> Result<()> {
    match channel {
        1 => {
            let mut o = io::stdout();
            o.write_all(data)?;
            o.flush()?;
        }
        2 => io::stderr().write_all(data)?,
        3 => status.extend_from_slice(data),
        _ => {}
    }
    Ok(())
}

/// The error channel's Status: Success is 0; a failure names its exit code as a cause.
fn exit_code(status: &[u8]) -> Result<i32> {
    if status.is_empty() {
        return Ok(0);
    }
    let v: Value = serde_json::from_slice(status)?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    let causes = v.pointer("/details/causes").and_then(Value::as_array);
    let code = causes
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str()?.parse().ok());
    code.ok_or_else(|| format!("exec failed: {}", v["message"]).into())
}

/// Our stdin, as stdin messages, until it ends.
fn pump_stdin(out: &Mutex<TcpStream>) {
    let mut buf = [0u8; 4096];
    let mut input = io::stdin();
    while let Ok(n @ 1..) = input.read(&mut buf) {
        if send(out, &[&[0u8][..], &buf[..n]].concat()).is_err() {
            break;
        }
    }
}

fn send(out: &Mutex<TcpStream>, message: &[u8]) -> io::Result<()> {
    send_frame(out, BINARY, message)
}

/// One frame, masked as a client's must be.
fn send_frame(out: &Mutex<TcpStream>, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let key = std::process::id().to_be_bytes();
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out.lock().expect("socket lock").write_all(&f)
}

/// The next frame (opcode, unmasked payload), or None at the end of the connection.
fn read_frame(sock: &mut TcpStream) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; 2];
    match sock.read_exact(&mut h) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        r => r?,
    }
    let mut n = u64::from(h[1] & 0x7f);
    if n == 126 {
        let mut b = [0u8; 2];
        sock.read_exact(&mut b)?;
        n = u64::from(u16::from_be_bytes(b));
    } else if n == 127 {
        let mut b = [0u8; 8];
        sock.read_exact(&mut b)?;
        n = u64::from_be_bytes(b);
    }
    let mut key = [0u8; 4];
    if h[1] & 0x80 != 0 {
        sock.read_exact(&mut key)?;
    }
    let mut data = vec![0u8; n as usize];
    sock.read_exact(&mut data)?;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    Ok(Some((h[0] & 0x0f, data)))
}
