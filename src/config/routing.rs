//! Which OAP node a call goes to (`routing`), as the user chose it. The protocol table
//! turns it into each method's policy (`protocol::route_policies`), checking the names
//! and what a protocol's messages allow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// How an upstream node is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Every node in turn.
    #[default]
    RoundRobin,
    /// Every node in turn, in proportion to `upstream.weights`.
    Weighted,
    /// The same service instance always to the same OAP node: the service and instance
    /// of a call's first message are looked up on the consistent-hash ring that every
    /// peer of the tier shares. The default of `meter`; possible for every protocol whose
    /// messages carry a service and instance (`trace`, `log`, `meter`, `management`,
    /// `jvm`, `clr`).
    Fixed,
}

/// Which routing policy each protocol uses.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routing {
    /// Policy of every protocol not listed in `protocols`.
    pub default: Route,
    /// Per-protocol policy, keyed by the protocol names of the metrics (`trace`, `log`,
    /// `meter`, `management`, `jvm`, ...).
    pub protocols: BTreeMap<String, Route>,
}

impl Routing {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.default == Route::Fixed {
            return Err(invalid(
                "routing.default",
                "fixed is set per protocol (routing.protocols.NAME)",
            ));
        }
        Ok(())
    }
}
