//! Raw HTTP/2 (`h2`), for tests that shape the DATA frames of a gRPC call themselves.

use std::net::SocketAddr;

use bytes::Bytes;

/// A gRPC call on a raw HTTP/2 connection (`h2`), for tests that shape the DATA frames
/// themselves: the response, the request stream, and the connection's task.
pub async fn raw_h2_call(
    addr: SocketAddr,
    path: &str,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, send) = h2.send_request(request, false).unwrap();
    (response, send, connection)
}

/// Reads a raw HTTP/2 gRPC response to its end and returns its `grpc-status`.
pub async fn raw_h2_status(response: http::Response<h2::RecvStream>) -> String {
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().to_owned()
}
