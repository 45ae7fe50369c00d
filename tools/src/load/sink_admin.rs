//! The sink's delivery latency, as `satmesh bench --sink-admin ADDR` reads it: it resets
//! the sink's `/latency` before the load starts and reads it once what the bench was
//! told was taken has arrived (HTTP/1 on the sink's admin port).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::latency::LatencySummary;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long one admin request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A latency summary is a few dozen bytes.
const MAX_BODY_BYTES: usize = 64 << 10;

/// Why the sink's latency could not be read. Every variant is safe to retry.
#[derive(Debug, thiserror::Error)]
pub enum SinkAdminError {
    #[error("cannot connect to the sink's admin address {addr}")]
    Connect { addr: String, source: BoxError },
    #[error("no answer from {addr} within {REQUEST_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("http error talking to {addr}")]
    Http { addr: String, source: BoxError },
    #[error("http://{addr}{path} answered {status}")]
    Status {
        addr: String,
        path: &'static str,
        status: StatusCode,
    },
    #[error("http://{addr}{path} did not return a latency summary")]
    Json {
        addr: String,
        path: &'static str,
        source: serde_json::Error,
    },
}

/// `host:port` of `host:port` or `http://host:port[/]`.
fn bare(admin: &str) -> &str {
    let a = admin.strip_prefix("http://").unwrap_or(admin);
    a.strip_suffix('/').unwrap_or(a)
}

/// One HTTP/1.1 request on a connection of its own (hyper's client).
async fn request(
    addr: &str,
    method: Method,
    path: &'static str,
) -> Result<LatencySummary, SinkAdminError> {
    let http = |source: BoxError| SinkAdminError::Http {
        addr: addr.to_owned(),
        source,
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(e.into()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.map_err(|e| {
        if e.is_connect() {
            SinkAdminError::Connect {
                addr: addr.to_owned(),
                source: e.into(),
            }
        } else {
            http(e.into())
        }
    })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    if !status.is_success() {
        return Err(SinkAdminError::Status {
            addr: addr.to_owned(),
            path,
            status,
        });
    }
    serde_json::from_slice(&body).map_err(|source| SinkAdminError::Json {
        addr: addr.to_owned(),
        path,
        source,
    })
}

async fn bounded(
    admin: &str,
    method: Method,
    path: &'static str,
) -> Result<LatencySummary, SinkAdminError> {
    let addr = bare(admin);
    tokio::time::timeout(REQUEST_TIMEOUT, request(addr, method, path))
        .await
        .map_err(|_| SinkAdminError::Timeout {
            addr: addr.to_owned(),
        })?
}

/// `POST /latency/reset`: the sink forgets the latencies recorded so far.
pub async fn reset(admin: &str) -> Result<LatencySummary, SinkAdminError> {
    bounded(admin, Method::POST, "/latency/reset").await
}

/// `GET /latency`.
pub async fn latency(admin: &str) -> Result<LatencySummary, SinkAdminError> {
    bounded(admin, Method::GET, "/latency").await
}

/// Reads `/latency` until it counts at least `expected` segments or `within` passes (a
/// peer may still be delivering what it told the bench it took), then returns it.
pub async fn settle(
    admin: &str,
    expected: u64,
    within: Duration,
) -> Result<LatencySummary, SinkAdminError> {
    let until = tokio::time::Instant::now() + within;
    loop {
        let summary = latency(admin).await?;
        if summary.count >= expected || tokio::time::Instant::now() >= until {
            return Ok(summary);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_may_carry_a_scheme() {
        assert_eq!(bare("127.0.0.1:12800"), "127.0.0.1:12800");
        assert_eq!(bare("http://127.0.0.1:12800/"), "127.0.0.1:12800");
    }
}
