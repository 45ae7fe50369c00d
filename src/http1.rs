//! One HTTP/1.1 request to a satmesh admin port (`satmesh status`): connect, send, read a
//! bounded body, close.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why no answer came back; callers name the address and what they asked for.
#[derive(Debug)]
pub enum RequestError {
    Connect(std::io::Error),
    Http(Box<dyn std::error::Error + Send + Sync>),
}

/// `method path` on `addr` (`host:port`), with `Accept: accept` when given; the answer's
/// status and its body, at most `max_body` bytes.
pub async fn request(
    addr: &str,
    method: Method,
    path: &str,
    accept: Option<&'static str>,
    max_body: usize,
) -> Result<(StatusCode, Bytes), RequestError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(RequestError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| RequestError::Http(e.into()))?;
    let connection = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr);
    if let Some(accept) = accept {
        request = request.header(ACCEPT, accept);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| RequestError::Http(e.into()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| RequestError::Http(e.into()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(RequestError::Http)?
        .to_bytes();
    connection.abort();
    Ok((status, body))
}
