//! The registry under tokio's paused clock: spreading, max age with jitter, limits,
//! admission, snapshot, shutdown timing.

use std::sync::Mutex as StdMutex;

use super::*;
use crate::frontdoor::admission::TurnAway;

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

/// Registers a fake connection that finishes when its GOAWAY is sent (no open streams)
/// if `close_on_goaway`, else never. Records the instant of its GOAWAY.
fn fake(
    connections: &Connections,
    close_on_goaway: bool,
) -> (Arc<ConnInfo>, Arc<StdMutex<Option<Instant>>>) {
    let info = connections.prepare("10.0.0.1:5000".parse().unwrap());
    let close = CancellationToken::new();
    let goaway = Arc::new(StdMutex::new(None));
    let conn = {
        let close = close.clone();
        async move {
            close.cancelled().await;
            Ok::<(), ()>(())
        }
    };
    let at = goaway.clone();
    connections.spawn(
        info.clone(),
        conn,
        move |_| {
            *at.lock().unwrap() = Some(Instant::now());
            if close_on_goaway {
                close.cancel();
            }
        },
        |_, _| {},
    );
    (info, goaway)
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn drain_all_spreads_the_goaways_evenly_over_the_window() {
    let t0 = Instant::now();
    let c = Connections::default();
    let conns: Vec<_> = (0..4).map(|_| fake(&c, true)).collect();
    settle().await;
    assert_eq!(c.drain_all(DrainReason::Shed, s(8.0)), 4);
    tokio::time::sleep_until(t0 + s(10.0)).await;
    settle().await;
    let at: Vec<Duration> = conns
        .iter()
        .map(|(_, g)| g.lock().unwrap().expect("drained") - t0)
        .collect();
    assert_eq!(
        at,
        [s(0.0), s(2.0), s(4.0), s(6.0)],
        "oldest first, 8 s / 4 apart"
    );
    assert!(c.is_empty());
    assert_eq!(c.counts().drained.get("shed"), Some(&4));
    assert_eq!(c.drain_all(DrainReason::Shed, s(8.0)), 0, "nothing left");
}

#[tokio::test(start_paused = true)]
async fn max_age_drains_each_connection_within_ten_percent_and_not_all_at_once() {
    let t0 = Instant::now();
    let c = Connections::new(
        LifecycleSettings {
            max_age: Some(s(10.0)),
            age_grace: s(3.0),
            ..Default::default()
        },
        None,
    );
    // Agents that keep their connection open (streams never finish).
    let conns: Vec<_> = (0..50).map(|_| fake(&c, false)).collect();
    tokio::time::sleep_until(t0 + s(8.99)).await;
    settle().await;
    assert_eq!(c.serving(), 50, "none before 90 % of the age");
    tokio::time::sleep_until(t0 + s(11.01)).await;
    settle().await;
    assert_eq!(c.serving(), 0, "all after 110 % of the age");
    let mut at: Vec<Duration> = conns
        .iter()
        .map(|(_, g)| g.lock().unwrap().expect("aged") - t0)
        .collect();
    at.sort();
    assert!(at[0] >= s(9.0) && at[49] <= s(11.0), "{at:?}");
    assert!(at[49] - at[0] > s(1.0), "jitter spreads them: {at:?}");
    assert_eq!(c.counts().drained.get("age"), Some(&50));
    // Each is closed hard at its own age + grace.
    let first = at[0];
    tokio::time::sleep_until(t0 + first + s(2.99)).await;
    settle().await;
    assert_eq!(c.len(), 50);
    tokio::time::sleep_until(t0 + s(14.01)).await;
    settle().await;
    assert!(c.is_empty());
    assert_eq!(c.counts().closed_hard.get("age"), Some(&50));
}

#[tokio::test(start_paused = true)]
async fn drain_one_drains_only_that_connection_and_reports_it() {
    let c = Connections::default();
    let (a, _) = fake(&c, false);
    let (b, _) = fake(&c, false);
    settle().await;
    assert!(c.drain_one(a.id, DrainReason::Shed));
    settle().await;
    assert!(!c.drain_one(a.id, DrainReason::Shed), "already draining");
    assert!(!c.drain_one(999, DrainReason::Shed), "unknown id");
    let snap = c.snapshot();
    assert_eq!(snap.len(), 2);
    assert!(matches!(
        snap[0].state,
        ConnState::Draining {
            reason: DrainReason::Shed,
            ..
        }
    ));
    assert!(snap[1].is_serving() && snap[1].id == b.id);
    assert_eq!(c.serving(), 1);
}

#[tokio::test(start_paused = true)]
async fn snapshot_shows_age_activity_and_open_streams() {
    let t0 = Instant::now();
    let c = Connections::default();
    let (a, _) = fake(&c, false);
    tokio::time::sleep(s(3.0)).await;
    let guard = a.stream_opened();
    tokio::time::sleep(s(2.0)).await;
    let snap = &c.snapshot()[0];
    assert_eq!(snap.peer, "10.0.0.1:5000".parse().unwrap());
    assert_eq!(snap.age(Instant::now()), s(5.0));
    assert_eq!(snap.last_activity, t0 + s(3.0));
    assert_eq!(snap.idle(Instant::now()), s(2.0));
    assert_eq!(snap.open_streams, 1);
    drop(guard);
    assert_eq!(c.snapshot()[0].open_streams, 0);
}

#[tokio::test(start_paused = true)]
async fn the_limit_and_the_admission_policy_turn_connections_away_and_count_them() {
    let c = Connections::new(
        LifecycleSettings {
            max_connections: 2,
            ..Default::default()
        },
        None,
    );
    let peer = "10.0.0.2:1".parse().unwrap();
    assert_eq!(c.admit(peer), Admit::Serve);
    let (a, _) = fake(&c, false);
    let _b = fake(&c, false);
    assert_eq!(c.admit(peer), Admit::TurnAway(TurnAway::Limit));
    // Draining connections still count against the limit.
    c.drain_one(a.id, DrainReason::Shed);
    settle().await;
    assert_eq!(c.admit(peer), Admit::TurnAway(TurnAway::Limit));

    let c = Connections::default();
    let _x = fake(&c, false);
    c.set_admission(Some(Arc::new(|a: &Arrival| {
        if a.serving >= 1 {
            Admit::TurnAway(TurnAway::OverShare)
        } else {
            Admit::Serve
        }
    })));
    assert_eq!(c.admit(peer), Admit::TurnAway(TurnAway::OverShare));
    c.set_admission(None);
    assert_eq!(c.admit(peer), Admit::Serve);
    assert_eq!(c.counts().turned_away.get("over_share"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_nothing_connected_returns_at_once() {
    let t0 = Instant::now();
    let c = Connections::default();
    assert_eq!(c.shutdown(s(10.0), s(10.0)).await, 0);
    assert_eq!(Instant::now(), t0, "no wait for the window");
}

#[tokio::test(start_paused = true)]
async fn shutdown_spreads_then_waits_and_closes_what_outlives_its_grace() {
    let t0 = Instant::now();
    let c = Connections::default();
    let _quick = fake(&c, true);
    let _stuck = fake(&c, false);
    settle().await;
    // GOAWAYs at 0 s and 5 s; the stuck one is closed at 5 + 2 s.
    assert_eq!(c.shutdown(s(10.0), s(2.0)).await, 1);
    assert_eq!(Instant::now() - t0, s(7.0));
    assert!(c.is_empty());
    assert_eq!(c.counts().drained.get("shutdown"), Some(&2));
    assert_eq!(c.counts().closed_hard.get("shutdown"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_brings_an_earlier_drains_hard_close_forward() {
    let t0 = Instant::now();
    let c = Connections::default();
    let (a, _) = fake(&c, false);
    settle().await;
    c.drain_one(a.id, DrainReason::Shed); // hard close at 60 s
    settle().await;
    assert_eq!(c.shutdown(s(4.0), s(1.0)).await, 1);
    assert_eq!(Instant::now() - t0, s(5.0));
}

#[tokio::test(start_paused = true)]
async fn an_agent_shed_that_comes_back_is_counted_and_not_shed_again() {
    let c = Connections::default();
    let (first, _) = fake(&c, true);
    first.identify(b"svc/instance-a");
    let (other, _) = fake(&c, true);
    other.identify(b"svc/instance-b");
    settle().await;
    assert!(c.drain_one(first.id, DrainReason::Shed));
    settle().await;

    // The same agent on a new connection: it came back. Another agent did not.
    let (again, _) = fake(&c, true);
    again.identify(b"svc/instance-a");
    let (newcomer, _) = fake(&c, true);
    newcomer.identify(b"svc/instance-c");
    assert!(again.returned());
    assert!(!newcomer.returned() && !other.returned());
    assert_eq!(c.returned(), 1);

    // The shedder passes over it, whatever its age or idleness.
    let picked = crate::shed::pick(c.snapshot(), 10);
    let ids: Vec<ConnId> = picked.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [other.id, newcomer.id],
        "oldest first, the returned one skipped"
    );

    // A connection identifies once: a later key does not change who it is.
    again.identify(b"svc/instance-z");
    assert!(again.returned());
}

#[tokio::test(start_paused = true)]
async fn only_a_shed_is_remembered() {
    let c = Connections::default();
    let (aged, _) = fake(&c, true);
    aged.identify(b"svc/instance-a");
    settle().await;
    assert!(c.drain_one(aged.id, DrainReason::Age));
    settle().await;
    let (again, _) = fake(&c, true);
    again.identify(b"svc/instance-a");
    assert!(!again.returned(), "an age drain is not a shed");
    assert_eq!(c.returned(), 0);
}

#[tokio::test(start_paused = true)]
async fn without_turn_away_a_returned_agent_may_be_shed_again() {
    let c = Connections::new(
        LifecycleSettings {
            hold_returned: false,
            ..LifecycleSettings::default()
        },
        None,
    );
    let (first, _) = fake(&c, true);
    first.identify(b"svc/instance-a");
    settle().await;
    assert!(c.drain_one(first.id, DrainReason::Shed));
    settle().await;
    let (again, _) = fake(&c, true);
    again.identify(b"svc/instance-a");
    assert!(again.returned(), "still counted");
    assert_eq!(c.returned(), 1);
    let picked = crate::shed::pick(c.snapshot(), 10);
    assert_eq!(
        picked.len(),
        1,
        "back by chance (virtual IP): it may move next time"
    );
}
