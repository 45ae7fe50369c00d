//! The sync path: forward now and relay the OAP's answer. A query that no OAP answers in
//! time gets an empty `Commands` ("nothing new") rather than an error the agent would
//! read as a dead channel.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::{State, refuse};
use crate::protocol::{self, MethodId, Policy};
use crate::upstream::{CallError, call};

/// Agent metadata that describes the agent's own hop and must not be carried upstream.
const HOP_HEADERS: &[&str] = &[
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "content-length",
    "te",
    "content-type",
];

fn upstream_metadata(state: &State, mut md: MetadataMap) -> MetadataMap {
    for name in HOP_HEADERS {
        md.remove(*name);
    }
    if let Some(token) = &state.token {
        md.insert("authentication", token.clone());
    }
    md
}

/// The agent's deadline from `grpc-timeout` (e.g. `5S`, `300m`).
fn agent_timeout(md: &MetadataMap) -> Option<Duration> {
    let value = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub async fn forward(
    state: Arc<State>,
    id: MethodId,
    req: Request<Streaming<Bytes>>,
) -> Result<Response<Bytes>, Status> {
    let method = protocol::method(id);
    let m = state.metrics.method(id);
    let (metadata, _, mut stream) = req.into_parts();
    let payload = match stream.message().await {
        Ok(Some(payload)) => payload,
        Ok(None) => {
            return Err(Status::invalid_argument(
                "satmesh: unary call without a message",
            ));
        }
        Err(status) => return Err(refuse(&state, status)),
    };
    m.messages_in.inc();
    m.bytes_in.inc_by(payload.len() as u64);
    // Answer a little before the agent gives up, so a fallback still reaches it.
    let budget = agent_timeout(&metadata)
        .map(|t| t.mul_f64(0.9))
        .unwrap_or(state.sync_timeout)
        .min(state.sync_timeout);
    let deadline = Instant::now() + budget;
    let metadata = upstream_metadata(&state, metadata);
    let policy = state.policies[usize::from(id)];
    let mut avoid = None;
    let mut last_error = None;
    let mut changes = state.pool.subscribe();
    let mut tries = 0;
    while tries < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        changes.borrow_and_update();
        let Some(node) = state.pool.pick(policy, avoid) else {
            // No node connected (one may be reconnecting): wait for one within the deadline.
            if tokio::time::timeout(left, changes.changed()).await.is_err() {
                break;
            }
            continue;
        };
        tries += 1;
        let started = Instant::now();
        let result = call::unary(&node, method.path, metadata.clone(), payload.clone(), left).await;
        state
            .metrics
            .upstream_latency
            .with_label_values(&["sync"])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => {
                node.record_success();
                m.calls_out_ok.inc();
                m.messages_out.inc();
                return Ok(Response::new(answer));
            }
            Err(error) => {
                m.calls_out_failed.inc();
                node.record_error(&error, &state.pool.health);
                // A call that raced its connection's GOAWAY never reached an OAP, and the
                // connection is being replaced (`record_error`): that is not a try. The
                // deadline still bounds the loop, and the next pick waits for a
                // connection instead of spinning.
                if error.never_reached_oap() && error.connection_broken() {
                    tries -= 1;
                }
                // A query may be asked twice; anything else only if it never arrived.
                let retry = match method.policy {
                    Policy::Query => error.is_transient(),
                    _ => error.never_reached_oap(),
                };
                avoid = Some(node.addr);
                last_error = Some(error);
                if !retry {
                    break;
                }
            }
        }
    }
    let transient = last_error.as_ref().is_none_or(CallError::is_transient);
    if method.policy == Policy::Query && transient {
        m.query_fallbacks.inc();
        let error =
            last_error.map_or_else(|| "no OAP node connected".to_owned(), |e| e.to_string());
        tracing::warn!(path = method.path, tries, %error, "no OAP answered the query in time, answering empty commands");
        return Ok(Response::new(Bytes::new()));
    }
    Err(last_error.map_or_else(
        || CallError::NotConnected.into_status(),
        CallError::into_status,
    ))
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// A two-way stream relayed live between the agent and one OAP node.
pub async fn relay(
    state: Arc<State>,
    id: MethodId,
    req: Request<Streaming<Bytes>>,
) -> Result<Response<AnswerStream>, Status> {
    let method = protocol::method(id);
    let (metadata, _, inbound) = req.into_parts();
    let metadata = upstream_metadata(&state, metadata);
    let node = state
        .pool
        .pick(state.policies[usize::from(id)], None)
        .ok_or_else(|| CallError::NotConnected.into_status())?;
    let counted = state.clone();
    let outbound = inbound
        .take_while(|r| std::future::ready(r.is_ok()))
        .filter_map(|r| std::future::ready(r.ok()))
        .inspect(move |payload| {
            let m = counted.metrics.method(id);
            m.messages_in.inc();
            m.bytes_in.inc_by(payload.len() as u64);
        });
    let answers = call::bidi(&node, method.path, metadata, outbound)
        .await
        .map_err(|e| {
            state.metrics.method(id).calls_out_failed.inc();
            e.into_status()
        })?;
    state.metrics.method(id).calls_out_ok.inc();
    Ok(Response::new(Box::pin(answers) as AnswerStream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "300m".parse().unwrap());
        assert_eq!(agent_timeout(&md), Some(Duration::from_millis(300)));
        md.insert("grpc-timeout", "5S".parse().unwrap());
        assert_eq!(agent_timeout(&md), Some(Duration::from_secs(5)));
        md.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(agent_timeout(&md), None);
    }
}
