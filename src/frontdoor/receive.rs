//! The async path: every message of the call is queued before the agent is answered OK.
//! While the queue is full the next message is not read, so HTTP/2 flow control slows
//! the agent instead of satmesh dropping anything.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tonic::{Request, Response, Status, Streaming};

use super::{State, refuse};
use crate::config::RoutePolicy;
use crate::pipeline::{Event, key_of};
use crate::protocol::MethodId;

pub async fn receive(
    state: Arc<State>,
    method: MethodId,
    req: Request<Streaming<Bytes>>,
) -> Result<Response<Bytes>, Status> {
    let m = state.metrics.method(method);
    // Batches group by token, so the OAP sees each agent's own; none when one is configured.
    let auth = match state.token {
        Some(_) => None,
        None => req
            .metadata()
            .get("authentication")
            .map(|v| Bytes::copy_from_slice(v.as_bytes())),
    };
    let fixed = state.policies[usize::from(method)] == RoutePolicy::Fixed;
    let payload_kind = crate::protocol::method(method).payload;
    let mut key = None;
    let mut stream = req.into_inner();
    loop {
        let payload = match stream.message().await {
            Ok(Some(payload)) => payload,
            Ok(None) => break,
            Err(status) => return Err(refuse(&state, status)),
        };
        m.messages_in.inc();
        m.bytes_in.inc_by(payload.len() as u64);
        if fixed && key.is_none() {
            // A call routes by its first message's service and instance.
            key = key_of(payload_kind, &payload);
        }
        let event = Event {
            method,
            auth: auth.clone(),
            payload,
            enqueued: Instant::now(),
            key: key.clone(),
        };
        state
            .queue
            .push(event)
            .await
            .map_err(|_| Status::unavailable("satmesh is shutting down"))?;
    }
    // An empty message is a valid answer for every method: "no commands".
    Ok(Response::new(Bytes::new()))
}
