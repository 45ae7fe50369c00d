//! The agent-facing listener (`server`), the admin listener (`admin`) and the shutdown
//! (`shutdown`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, values};

/// The agent-facing gRPC listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// Address agents connect to (h2c, HTTP/2 prior knowledge).
    #[serde(deserialize_with = "values::socket_addr")]
    pub listen: SocketAddr,
    /// Largest message accepted from an agent, in bytes; larger ones are refused with
    /// INVALID_ARGUMENT and the connection lives on. The OAP's own default is 50 MiB.
    pub max_message_bytes: usize,
    /// Concurrent streams one agent connection may open.
    pub max_concurrent_streams: u32,
    /// HTTP/2 receive window of one stream, in bytes (the agent's send credit).
    pub stream_window_bytes: u32,
    /// HTTP/2 receive window of one connection, in bytes.
    pub connection_window_bytes: u32,
    /// Agent connections served at once (draining ones count); 0: unlimited. One more is
    /// reset before the HTTP/2 handshake, which sends a gRPC client to its next address.
    pub max_connections: usize,
    /// Each connection is drained (graceful GOAWAY) after this long, +-10 % jitter per
    /// connection (gRPC A9 MAX_CONNECTION_AGE). Unset: connections never age out.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    /// Hard close this long after the age GOAWAY (A9 MAX_CONNECTION_AGE_GRACE).
    /// Unset: `drain_grace`.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Option<Duration>,
    /// Time a drained (shed) connection's streams get before it is closed.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// A draining connection's client-streams may end on their own this long (at most
    /// half the grace); then satmesh ends them with OK between two messages.
    #[serde(with = "humantime_serde")]
    pub drain_stream_after: Duration,
    /// ...once no data arrived on the stream for this long (shrinking to 0 at the hard
    /// close).
    #[serde(with = "humantime_serde")]
    pub drain_stream_quiet: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([0, 0, 0, 0], 11800)),
            max_message_bytes: 50 * 1024 * 1024,
            max_concurrent_streams: 256,
            stream_window_bytes: 1024 * 1024,
            connection_window_bytes: 2 * 1024 * 1024,
            max_connections: 4000,
            max_connection_age: None,
            max_connection_age_grace: None,
            drain_grace: Duration::from_secs(60),
            drain_stream_after: Duration::from_secs(5),
            drain_stream_quiet: Duration::from_millis(150),
        }
    }
}

impl Server {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes == 0 || self.max_message_bytes > u32::MAX as usize {
            return Err(invalid(
                "server.max_message_bytes",
                "must be between 1 and 4294967295",
            ));
        }
        for (key, value) in [
            ("server.stream_window_bytes", self.stream_window_bytes),
            (
                "server.connection_window_bytes",
                self.connection_window_bytes,
            ),
        ] {
            if value < 65_535 {
                return Err(invalid(key, "HTTP/2 windows are at least 65535"));
            }
        }
        if self.max_connection_age.is_some_and(|a| a.is_zero()) {
            return Err(invalid("server.max_connection_age", "must be more than 0"));
        }
        if self.drain_stream_quiet > Duration::from_secs(10) {
            return Err(invalid("server.drain_stream_quiet", "at most 10s"));
        }
        Ok(())
    }
}

/// The admin HTTP listener: /metrics, /healthz, /readyz, /status.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    #[serde(deserialize_with = "values::socket_addr")]
    pub listen: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: SocketAddr::from(([0, 0, 0, 0], 1234)),
        }
    }
}

/// SIGTERM / SIGINT handling.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// Time agents' open streams get to finish after their connection's GOAWAY.
    #[serde(with = "humantime_serde")]
    pub connection_grace: Duration,
    /// The GOAWAYs go out evenly spread over this window (no reconnect herd), once the
    /// tier has heard `draining` (two gossip rounds). Cut to `deadline - connection_grace`
    /// (less the time already spent) when longer.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// Total time from the signal to exit; what is still queued then is counted as dropped.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            connection_grace: Duration::from_secs(10),
            drain_window: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
        }
    }
}

impl Shutdown {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.deadline < self.connection_grace {
            return Err(invalid(
                "shutdown.deadline",
                "must be at least shutdown.connection_grace",
            ));
        }
        Ok(())
    }
}
