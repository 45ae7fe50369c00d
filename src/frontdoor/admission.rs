//! Admission: whether a new connection is served or turned away, decided once per accept
//! before the HTTP/2 handshake. `server.max_connections` is checked first; then the
//! injectable [`Admission`] policy (the shedder's "above my fair share" rule).
//!
//! # How a connection is turned away, and why
//!
//! It is closed right after `accept`, before the HTTP/2 handshake, with a TCP RST
//! (`SO_LINGER` 0: no TIME_WAIT left on the peer even when a client retries in a hot
//! loop). Measured here (loopback, Nov 2026) against a listener that turns everything
//! away, with a second address that serves:
//!
//! - **grpcio 1.85 (Python agent 1.2.0)**, target `ipv4:A,B`, pick-first: a close before
//!   the handshake (RST or FIN alike) counts as a failed connection attempt and grpc-core
//!   dials B at once. Channel ready in 3.8 ms median (RST) / 5.3 ms (FIN) against 2.3 ms
//!   straight to B; one connection to A; the agent lost nothing.
//!   A GOAWAY sent right after the handshake instead: grpc-core had already put the
//!   agent's first calls on the connection (they fail), then re-dialed A again and again
//!   (38 connections in 32 s), never reached B, the agent failed. So: close, never GOAWAY.
//! - **The Rust agent (tonic 0.12)** takes a single endpoint, so it has no next address:
//!   every call fails with UNAVAILABLE and it retries without backoff (~3000 connections/s
//!   here). Closed before the handshake, no stream was ever opened, so it popped nothing
//!   into a failed stream: its items stay queued (its own 255-per-signal queue may fill and
//!   drop). With GOAWAY-before-stream its streams got through and were failed: what it had
//!   put in them was lost. Behind an L4 virtual IP the retry lands on a random peer.
//! - Caveat for multi-address targets: grpcio sends `:authority: A,B` (the whole target),
//!   which hyper/h2 reject as a malformed header (RST_STREAM PROTOCOL_ERROR: the agent sees
//!   INTERNAL on every call). A Python agent reaches a satmesh tier by several addresses
//!   only through a DNS name with several records (or with `grpc.default_authority` set).

use std::net::SocketAddr;

/// A connection asking to be served.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub peer: SocketAddr,
    /// Live connections (serving or draining) before this one.
    pub open: usize,
    /// Of those, connections not draining.
    pub serving: usize,
    /// `server.max_connections` (0: unlimited).
    pub limit: usize,
}

/// Why a connection was turned away; the label of `satmesh_connections_turned_away_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TurnAway {
    /// `server.max_connections` reached.
    Limit,
    /// The peer holds more than its fair share of the tier's connections.
    OverShare,
    /// Another policy's reason (a static label).
    Other(&'static str),
}

impl TurnAway {
    pub fn label(self) -> &'static str {
        match self {
            TurnAway::Limit => "limit",
            TurnAway::OverShare => "over_share",
            TurnAway::Other(label) => label,
        }
    }
}

/// The verdict on one arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Serve,
    TurnAway(TurnAway),
}

/// A policy consulted for every accepted connection that the limit let through. Runs on
/// the accept loop: it must be quick and must not block (read an atomic or an `ArcSwap`).
pub trait Admission: Send + Sync {
    fn admit(&self, arrival: &Arrival) -> Admit;
}

impl<F> Admission for F
where
    F: Fn(&Arrival) -> Admit + Send + Sync,
{
    fn admit(&self, arrival: &Arrival) -> Admit {
        self(arrival)
    }
}

/// The built-in limit, then `policy`.
pub fn decide(arrival: &Arrival, policy: Option<&dyn Admission>) -> Admit {
    if arrival.limit > 0 && arrival.open >= arrival.limit {
        return Admit::TurnAway(TurnAway::Limit);
    }
    policy.map_or(Admit::Serve, |p| p.admit(arrival))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(open: usize, limit: usize) -> Arrival {
        Arrival {
            peer: "127.0.0.1:1".parse().unwrap(),
            open,
            serving: open,
            limit,
        }
    }

    #[test]
    fn the_limit_turns_away_the_connection_past_it() {
        assert_eq!(decide(&arrival(2, 3), None), Admit::Serve);
        assert_eq!(
            decide(&arrival(3, 3), None),
            Admit::TurnAway(TurnAway::Limit)
        );
        assert_eq!(
            decide(&arrival(1_000_000, 0), None),
            Admit::Serve,
            "0: no limit"
        );
    }

    #[test]
    fn the_policy_is_asked_only_below_the_limit() {
        let over_share = |a: &Arrival| {
            if a.serving >= 2 {
                Admit::TurnAway(TurnAway::OverShare)
            } else {
                Admit::Serve
            }
        };
        assert_eq!(decide(&arrival(1, 5), Some(&over_share)), Admit::Serve);
        assert_eq!(
            decide(&arrival(2, 5), Some(&over_share)),
            Admit::TurnAway(TurnAway::OverShare)
        );
        assert_eq!(
            decide(&arrival(5, 5), Some(&over_share)),
            Admit::TurnAway(TurnAway::Limit)
        );
        assert_eq!(TurnAway::Other("quota").label(), "quota");
    }
}
