//! The small-DATA-frame budget of satmesh's h2 (`third_party/h2/SATMESH.md`), by role:
//! an HTTP/2 server (the agent listener) holds a whole window of tiny frames unread, an
//! HTTP/2 client (the upstream client to the OAPs) keeps h2's published default and
//! stops a peer flooding it with them. Each test puts hyper, built as satmesh builds it,
//! against a peer that writes raw frames on a loopback socket, so the frame order is
//! exact: the DATA frames, then a PING. A PING answered means every frame before it was
//! taken without a GOAWAY.
//!
//! The arithmetic: 2,000 DATA frames of 30 bytes (60,000 bytes, inside h2's default
//! 65,535-byte windows), each charged 256 - 30 = 226 bytes of overhead while unread, need
//! 452,000 bytes of budget. h2's default, half the connection window (32,767), runs out
//! at frame 145; satmesh's server default, 16 windows (1,048,560), holds them all.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRAMES: usize = 2000;
const PAYLOAD: usize = 30;
/// h2's default window, set on both hyper sides so the raw peer needs no flow control.
const WINDOW: u32 = 65_535;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the connection took the tiny frames, as the raw peer saw it.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The PING after the last DATA frame was answered.
    HeldAll,
    /// The connection sent GOAWAY with this error code.
    GoAway(u32),
    /// The connection ended (or was reset) with neither.
    Ended,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The tiny DATA frames on stream 1, then a PING.
fn tiny_frames_then_ping() -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..FRAMES {
        out.extend(frame(DATA, 0, 1, &[b'x'; PAYLOAD]));
    }
    out.extend(frame(PING, 0, 0, b"tinyping"));
    out
}

async fn read_frame(io: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

/// Reads until the PING is answered, a GOAWAY arrives or the connection ends (20 s at
/// most), acknowledging the other side's SETTINGS.
async fn outcome(io: &mut TcpStream) -> Outcome {
    let read = async {
        loop {
            let Ok((kind, flags, _, payload)) = read_frame(io).await else {
                return Outcome::Ended;
            };
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let _ = io.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                PING if flags & ACK != 0 => return Outcome::HeldAll,
                GOAWAY => {
                    return Outcome::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("neither a PING answer nor a GOAWAY within 20 s")
}

#[tokio::test]
async fn a_server_connection_holds_a_window_of_tiny_unread_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // Built as the agent listener builds it (src/frontdoor/accept.rs); the service
        // holds the request and never reads it, as a full queue does.
        let service = hyper::service::service_fn(|request| async move {
            let _unread = request;
            std::future::pending::<Result<http::Response<Empty<Bytes>>, Infallible>>().await
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    });

    let mut agent = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    // POST / (:method POST, :scheme http, :path /, all from HPACK's static table).
    hello.extend(frame(HEADERS, END_HEADERS, 1, &[0x83, 0x86, 0x84]));
    agent.write_all(&hello).await.unwrap();
    // A connection that runs out of budget closes while this is still being written.
    let _ = agent.write_all(&tiny_frames_then_ping()).await;

    assert_eq!(
        outcome(&mut agent).await,
        Outcome::HeldAll,
        "the server side must keep satmesh's raised budget (16 connection windows)"
    );
}

#[tokio::test]
async fn a_client_connection_keeps_h2s_default_budget() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        // Built as the upstream client builds it (src/upstream/conn.rs), but with h2's
        // default windows; the response body is held and never read.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let _unread = send.send_request(request).await;
        std::future::pending::<()>().await
    });

    let (mut oap, _) = listener.accept().await.unwrap();
    let mut preface = [0u8; PREFACE.len()];
    oap.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, PREFACE);
    oap.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let headers = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (kind, flags, stream, _) = read_frame(&mut oap).await.unwrap();
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    oap.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap()
                }
                HEADERS => return stream,
                _ => {}
            }
        }
    });
    assert_eq!(headers.await.expect("the request within 20 s"), 1);
    // :status 200 (HPACK static table), then the tiny frames.
    let mut answer = frame(HEADERS, END_HEADERS, 1, &[0x88]);
    answer.extend(tiny_frames_then_ping());
    let _ = oap.write_all(&answer).await;

    assert_eq!(
        outcome(&mut oap).await,
        Outcome::GoAway(ENHANCE_YOUR_CALM),
        "the client side must keep h2's published budget (half the connection window)"
    );
    client.abort();
}
