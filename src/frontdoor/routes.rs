//! Admin routes of the front door, merged into the admin listener:
//!
//! - `GET /connections`: the limit, totals by reason, and every live connection (id, peer,
//!   age, idle time, open streams, state).
//! - `POST /connections/drain?id=N` drains one connection as `shed`;
//!   `POST /connections/drain?all=true&spread=10s` drains every serving connection spread
//!   over the window. Answers `{"drained": n}`. For operators and tests.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, response::IntoResponse, response::Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::lifecycle::{ConnId, ConnState, DrainReason};
use super::registry::Connections;

#[derive(Serialize)]
struct ConnectionView {
    id: ConnId,
    peer: String,
    age_ms: u64,
    idle_ms: u64,
    open_streams: usize,
    /// `serving`, `draining` or `closed`.
    state: &'static str,
    /// Why it drains (draining), or why it is due to (serving, a drain scheduled).
    reason: Option<&'static str>,
}

#[derive(Serialize)]
struct ConnectionsView {
    limit: usize,
    open: usize,
    serving: usize,
    accepted: u64,
    turned_away: BTreeMap<&'static str, u64>,
    drained: BTreeMap<&'static str, u64>,
    closed_hard: BTreeMap<&'static str, u64>,
    connections: Vec<ConnectionView>,
}

async fn list(State(connections): State<Connections>) -> Json<ConnectionsView> {
    let now = Instant::now();
    let snapshot = connections.snapshot();
    let counts = connections.counts();
    let ms = |d: Duration| d.as_millis() as u64;
    Json(ConnectionsView {
        limit: connections.limit(),
        open: snapshot.len(),
        serving: snapshot.iter().filter(|c| c.is_serving()).count(),
        accepted: counts.accepted,
        turned_away: counts.turned_away,
        drained: counts.drained,
        closed_hard: counts.closed_hard,
        connections: snapshot
            .iter()
            .map(|c| {
                let (state, reason) = match c.state {
                    ConnState::Serving => ("serving", c.scheduled_drain.map(|(_, r)| r.label())),
                    ConnState::Draining { reason, .. } => ("draining", Some(reason.label())),
                    ConnState::Closed => ("closed", None),
                };
                ConnectionView {
                    id: c.id,
                    peer: c.peer.to_string(),
                    age_ms: ms(c.age(now)),
                    idle_ms: ms(c.idle(now)),
                    open_streams: c.open_streams,
                    state,
                    reason,
                }
            })
            .collect(),
    })
}

#[derive(Deserialize)]
struct DrainQuery {
    id: Option<ConnId>,
    #[serde(default)]
    all: bool,
    spread: Option<String>,
}

async fn drain(State(connections): State<Connections>, Query(q): Query<DrainQuery>) -> Response {
    let drained = match (q.id, q.all) {
        (Some(id), false) => usize::from(connections.drain_one(id, DrainReason::Shed)),
        (None, true) => {
            let spread = match q.spread.as_deref().map(humantime::parse_duration) {
                None => Duration::ZERO,
                Some(Ok(spread)) => spread,
                Some(Err(e)) => {
                    return (StatusCode::BAD_REQUEST, format!("spread: {e}\n")).into_response();
                }
            };
            connections.drain_all(DrainReason::Shed, spread)
        }
        _ => {
            return (StatusCode::BAD_REQUEST, "give id=N or all=true\n").into_response();
        }
    };
    Json(serde_json::json!({ "drained": drained })).into_response()
}

pub fn routes(connections: Connections) -> Router {
    Router::new()
        .route("/connections", get(list))
        .route("/connections/drain", post(drain))
        .with_state(connections)
}
