//! The sink's own HTTP/2 server on a real loopback socket, spoken to by hyper's HTTP/2
//! client: answers and echoes, the graceful GOAWAY after N calls, refusing connections,
//! and a stop that drains open connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use satmesh_proto::codec::grpc_frame;
use satmesh_tools::sink::{self, Faults, Sink};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this.
const WITHIN: Duration = Duration::from_secs(10);

const REPORT: &str = "/skywalking.v3.ManagementService/keepAlive";
const QUERY: &str = "/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations";

struct Running {
    sink: Arc<Sink>,
    addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<()>,
}

async fn start(faults: Faults) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = Sink::new(faults);
    let stop = CancellationToken::new();
    let server = tokio::spawn(sink::serve_grpc(sink.clone(), listener, stop.clone()));
    Running {
        sink,
        addr,
        stop,
        server,
    }
}

/// An HTTP/2 connection (h2c, prior knowledge) and the task driving it, which ends when
/// the server closes the connection.
async fn connect(addr: SocketAddr) -> hyper::Result<(SendRequest<Full<Bytes>>, JoinHandle<()>)> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    Ok((send, tokio::spawn(async move { conn.await.unwrap_or(()) })))
}

/// One unary gRPC call: the answer's message bytes and its grpc-status.
async fn call(send: &mut SendRequest<Full<Bytes>>, path: &str, message: &[u8]) -> (Bytes, String) {
    let request = http::Request::post(format!("http://sink{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(message)))
        .unwrap();
    let response = tokio::time::timeout(WITHIN, send.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an http answer");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the whole body");
    let status = body
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let frame = body.to_bytes();
    assert!(frame.len() >= 5, "a length-prefixed message");
    (frame.slice(5..), status)
}

#[tokio::test]
async fn reports_get_an_empty_answer_and_replies_echo_when_asked() {
    let running = start(Faults {
        echo: true,
        ..Faults::default()
    })
    .await;
    let (mut send, _conn) = connect(running.addr).await.unwrap();
    assert_eq!(
        call(&mut send, REPORT, b"\x0a\x01s").await,
        (Bytes::new(), "0".into())
    );
    assert_eq!(
        call(&mut send, QUERY, b"\x0a\x01q").await,
        (Bytes::from_static(b"\x0a\x01q"), "0".into())
    );
    let counts = running.sink.counts();
    assert_eq!(counts.methods[REPORT].calls, 1);
    assert_eq!(counts.methods[QUERY].messages, 1);
}

#[tokio::test]
async fn a_connection_gets_its_goaway_after_n_calls_and_the_next_one_is_served() {
    let running = start(Faults {
        goaway_after_calls: 2,
        ..Faults::default()
    })
    .await;
    let (mut send, conn) = connect(running.addr).await.unwrap();
    for _ in 0..2 {
        assert_eq!(call(&mut send, REPORT, b"").await.1, "0");
    }
    // The second call started the graceful GOAWAY: with no stream left open, the server
    // closes the connection.
    tokio::time::timeout(WITHIN, conn)
        .await
        .expect("the connection closed after its GOAWAY")
        .unwrap();
    let (mut send, _conn) = connect(running.addr).await.unwrap();
    assert_eq!(call(&mut send, REPORT, b"").await.1, "0");
    assert_eq!(running.sink.counts().methods[REPORT].calls, 3);
}

#[tokio::test]
async fn refused_connections_fail_before_the_handshake_until_refuse_is_lifted() {
    let running = start(Faults {
        refuse: true,
        ..Faults::default()
    })
    .await;
    // hyper's handshake returns once its preface is written; the reset shows on the call.
    let attempt = async {
        let (mut send, _conn) = connect(running.addr).await?;
        let request = http::Request::post(format!("http://sink{REPORT}"))
            .header("content-type", "application/grpc")
            .body(Full::new(grpc_frame(b"")))
            .unwrap();
        send.send_request(request).await.map(|_| ())
    };
    let refused = tokio::time::timeout(WITHIN, attempt)
        .await
        .expect("the attempt ends in time");
    assert!(refused.is_err(), "a refusing sink serves no call");
    assert!(running.sink.counts().methods.is_empty());
    running.sink.set_faults(Faults::default());
    let (mut send, _conn) = connect(running.addr).await.unwrap();
    assert_eq!(call(&mut send, REPORT, b"").await.1, "0");
}

#[tokio::test]
async fn stop_closes_open_connections_and_returns() {
    let running = start(Faults::default()).await;
    let (mut send, conn) = connect(running.addr).await.unwrap();
    assert_eq!(call(&mut send, REPORT, b"").await.1, "0");
    running.stop.cancel();
    tokio::time::timeout(WITHIN, running.server)
        .await
        .expect("serve_grpc returned")
        .unwrap();
    tokio::time::timeout(WITHIN, conn)
        .await
        .expect("the client saw its connection close")
        .unwrap();
}
