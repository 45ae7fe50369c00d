//! What each synthetic agent (one connection) last did: its dials and their outcome, and
//! its calls. A test that finds an agent missing from every peer prints the agents that
//! went quiet, to tell one stuck dialling from one stuck in a call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One agent's latest events.
#[derive(Clone, Default)]
struct Trace {
    dials: u64,
    dialled: Option<(Instant, String)>,
    calls: u64,
    ok: Option<Instant>,
    failed: Option<(Instant, String)>,
}

/// Every agent's trace, by connection index.
#[derive(Default)]
pub struct Traces {
    agents: Mutex<Vec<Trace>>,
}

impl Traces {
    fn with(&self, agent: usize, f: impl FnOnce(&mut Trace)) {
        let mut agents = self.agents.lock().expect("agent traces lock");
        if agents.len() <= agent {
            agents.resize(agent + 1, Trace::default());
        }
        f(&mut agents[agent]);
    }

    pub(super) fn dialled(&self, agent: usize, outcome: String) {
        self.with(agent, |t| {
            t.dials += 1;
            t.dialled = Some((Instant::now(), outcome));
        });
    }

    pub(super) fn call_started(&self, agent: usize) {
        self.with(agent, |t| t.calls += 1);
    }

    pub(super) fn call_ok(&self, agent: usize) {
        self.with(agent, |t| t.ok = Some(Instant::now()));
    }

    pub(super) fn call_failed(&self, agent: usize, status: &tonic::Status) {
        let why = format!("{:?}: {}", status.code(), status.message());
        self.with(agent, |t| t.failed = Some((Instant::now(), why)));
    }

    /// One line per agent without an acknowledged call for `quiet` or longer.
    pub fn quiet(&self, quiet: Duration) -> Vec<String> {
        let now = Instant::now();
        let ago = |at: Instant| format!("{:.1} s ago", now.duration_since(at).as_secs_f64());
        let agents = self.agents.lock().expect("agent traces lock");
        agents
            .iter()
            .enumerate()
            .filter(|(_, t)| t.ok.is_none_or(|at| now.duration_since(at) >= quiet))
            .map(|(i, t)| {
                format!(
                    "agent {i}: {} dials, last {}; {} calls, last ok {}, last failure {}",
                    t.dials,
                    t.dialled
                        .as_ref()
                        .map_or("never".into(), |(at, o)| format!("{} ({o})", ago(*at))),
                    t.calls,
                    t.ok.map_or("never".into(), ago),
                    t.failed
                        .as_ref()
                        .map_or("none".into(), |(at, w)| format!("{} ({w})", ago(*at))),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_is_quiet_until_a_call_is_acknowledged() {
        let traces = Traces::default();
        traces.dialled(1, "connected to 127.0.0.1:1".into());
        traces.call_started(1);
        traces.call_failed(1, &tonic::Status::unavailable("refused"));
        let quiet = traces.quiet(Duration::ZERO);
        assert_eq!(quiet.len(), 2, "agent 0 never did anything: {quiet:?}");
        assert!(quiet[1].contains("1 dials") && quiet[1].contains("Unavailable: refused"));
        traces.call_ok(1);
        assert_eq!(traces.quiet(Duration::from_secs(60)).len(), 1);
    }
}
