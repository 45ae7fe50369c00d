//! The lifecycle under tokio's paused clock: the driver's transitions and timers, and the
//! rule for ending a draining stream.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

// ---------------------------------------------------------------------------------------
// stream_end: a pure function of instants

#[test]
fn a_stream_may_end_only_after_the_patience_then_at_a_quiet_boundary() {
    let t0 = Instant::now();
    let policy = StreamEnd {
        after: s(5.0),
        quiet: s(0.2),
    };
    let hard = t0 + s(60.0);
    // Before the patience ends, whatever the stream does.
    assert_eq!(
        stream_end(t0 + s(1.0), t0, hard, t0, true, policy),
        StreamCheck::RecheckAt(t0 + s(5.0))
    );
    // Quiet for longer than the pause: end now.
    assert_eq!(
        stream_end(t0 + s(6.0), t0, hard, t0 + s(5.5), true, policy),
        StreamCheck::EndNow
    );
    // Data 50 ms ago: look again when the (slightly shrunk) pause has passed.
    let now = t0 + s(6.0);
    let StreamCheck::RecheckAt(at) = stream_end(now, t0, hard, now - 50 * MS, true, policy) else {
        panic!("must wait")
    };
    assert!(at > now && at <= now + 150 * MS, "{:?}", at - now);
    // Mid-message never ends, even when quiet for long.
    assert!(matches!(
        stream_end(t0 + s(30.0), t0, hard, t0, false, policy),
        StreamCheck::RecheckAt(_)
    ));
}

#[test]
fn the_pause_required_shrinks_to_nothing_by_the_hard_close() {
    let t0 = Instant::now();
    let policy = StreamEnd {
        after: s(5.0),
        quiet: s(0.2),
    };
    let hard = t0 + s(60.0);
    // Data 10 ms ago is too recent early in the window, fine near its end.
    let at = |secs: f64| stream_end(t0 + s(secs), t0, hard, t0 + s(secs) - 10 * MS, true, policy);
    assert!(matches!(at(6.0), StreamCheck::RecheckAt(_)));
    assert!(matches!(at(50.0), StreamCheck::RecheckAt(_)));
    assert_eq!(at(59.0), StreamCheck::EndNow);
}

#[test]
fn a_short_grace_halves_the_patience() {
    let t0 = Instant::now();
    let policy = StreamEnd {
        after: s(5.0),
        quiet: s(0.1),
    };
    // Grace 2 s: streams may be ended from 1 s on, not 5 s.
    assert_eq!(
        stream_end(t0, t0, t0 + s(2.0), t0, true, policy),
        StreamCheck::RecheckAt(t0 + s(1.0))
    );
    assert_eq!(
        stream_end(t0 + s(1.5), t0, t0 + s(2.0), t0, true, policy),
        StreamCheck::EndNow
    );
}

// ---------------------------------------------------------------------------------------
// drive: a fake connection

/// Stands in for hyper's connection: finishes when `close` fires; records GOAWAYs and,
/// with `close_on_goaway`, finishes right after one (no open streams).
struct Fake {
    close: CancellationToken,
    goaways: Arc<StdMutex<Vec<Instant>>>,
    close_on_goaway: bool,
}

impl Fake {
    fn new(close_on_goaway: bool) -> Fake {
        Fake {
            close: CancellationToken::new(),
            goaways: Default::default(),
            close_on_goaway,
        }
    }

    fn goaways(&self) -> Vec<Instant> {
        self.goaways.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Seen(StdMutex<Vec<DrainReason>>);

impl Observer for Seen {
    fn drained(&self, reason: DrainReason) {
        self.0.lock().unwrap().push(reason);
    }
}

type Conn = Pin<Box<dyn Future<Output = Result<(), ()>> + Send>>;

/// The task running a fake connection: how it ended and the drains it reported.
type Run = tokio::task::JoinHandle<(Ending<()>, Vec<DrainReason>)>;

/// Runs `info` through `drive` on a task; returns the fake and the task.
fn run(info: Arc<ConnInfo>, close_on_goaway: bool) -> (Fake, Run) {
    let fake = Fake::new(close_on_goaway);
    let close = fake.close.clone();
    let (goaways, auto) = (fake.goaways.clone(), fake.close_on_goaway);
    let kill = CancellationToken::new();
    let task = tokio::spawn(async move {
        let closed = close.clone();
        let mut conn: Conn = Box::pin(async move {
            closed.cancelled().await;
            Ok(())
        });
        let seen = Seen::default();
        let ending = drive(
            Pin::new(&mut conn),
            move |_| {
                goaways.lock().unwrap().push(Instant::now());
                if auto {
                    close.cancel();
                }
            },
            &info,
            &kill,
            &seen,
        )
        .await;
        (ending, seen.0.into_inner().unwrap())
    });
    (fake, task)
}

fn conn() -> Arc<ConnInfo> {
    Arc::new(ConnInfo::new(
        1,
        "127.0.0.1:9".parse().unwrap(),
        StreamEnd::default(),
    ))
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_drain_sends_one_goaway_at_its_instant_and_streams_finish() {
    let t0 = Instant::now();
    let info = conn();
    info.schedule_drain(t0 + s(5.0), DrainReason::Age, s(60.0));
    let (fake, task) = run(info.clone(), false);
    tokio::time::sleep_until(t0 + s(4.99)).await;
    settle().await;
    assert_eq!(info.state(), ConnState::Serving);
    assert!(fake.goaways().is_empty() && !info.is_draining());

    tokio::time::sleep_until(t0 + s(5.01)).await;
    settle().await;
    assert_eq!(
        fake.goaways(),
        [t0 + s(5.0)],
        "one GOAWAY, at the scheduled instant"
    );
    assert!(info.is_draining(), "handlers see the drain");
    assert_eq!(
        info.state(),
        ConnState::Draining {
            reason: DrainReason::Age,
            since: t0 + s(5.0),
            hard_close_at: t0 + s(65.0)
        }
    );
    // The streams finish, the connection ends by itself long before the hard close.
    tokio::time::sleep_until(t0 + s(20.0)).await;
    fake.close.cancel();
    let (ending, seen) = task.await.unwrap();
    assert!(matches!(ending, Ending::Finished(Ok(()))), "{ending:?}");
    assert_eq!(seen, [DrainReason::Age]);
    assert_eq!(fake.goaways().len(), 1, "no second GOAWAY");
}

#[tokio::test(start_paused = true)]
async fn a_connection_still_open_at_the_end_of_its_grace_is_closed_hard() {
    let t0 = Instant::now();
    let info = conn();
    let (fake, task) = run(info.clone(), false);
    info.schedule_drain(t0 + s(1.0), DrainReason::Shed, s(60.0));
    tokio::time::sleep_until(t0 + s(60.99)).await;
    settle().await;
    assert!(!task.is_finished(), "open until the grace ends");
    tokio::time::sleep_until(t0 + s(61.01)).await;
    settle().await;
    assert!(task.is_finished(), "closed at drain + grace");
    let (ending, _) = task.await.unwrap();
    assert!(
        matches!(ending, Ending::ClosedHard(DrainReason::Shed)),
        "{ending:?}"
    );
    assert_eq!(fake.goaways(), [t0 + s(1.0)]);
}

#[tokio::test(start_paused = true)]
async fn the_earliest_drain_wins_and_a_later_one_only_brings_the_hard_close_forward() {
    let t0 = Instant::now();
    let info = conn();
    let (fake, task) = run(info.clone(), false);
    assert!(info.schedule_drain(t0 + s(100.0), DrainReason::Age, s(60.0)));
    assert!(info.schedule_drain(t0 + s(2.0), DrainReason::Shed, s(60.0)));
    // A later request than the one pending adds nothing, and says so.
    assert!(!info.schedule_drain(t0 + s(50.0), DrainReason::Limit, s(60.0)));
    assert_eq!(
        info.scheduled_drain(),
        Some((t0 + s(2.0), DrainReason::Shed))
    );
    tokio::time::sleep_until(t0 + s(3.0)).await;
    settle().await;
    assert_eq!(fake.goaways(), [t0 + s(2.0)]);
    // Shutdown while draining: no new GOAWAY, hard close at 3 + 5 s instead of 62 s.
    assert!(!info.schedule_drain(t0 + s(3.0), DrainReason::Shutdown, s(5.0)));
    let (ending, seen) = task.await.unwrap();
    assert_eq!(Instant::now(), t0 + s(8.0));
    assert!(matches!(ending, Ending::ClosedHard(DrainReason::Shed)));
    assert_eq!(seen, [DrainReason::Shed]);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_token_drains_as_shed() {
    let info = conn();
    let (fake, task) = run(info.clone(), true);
    tokio::time::sleep(s(1.0)).await;
    info.drain.cancel();
    let (ending, seen) = task.await.unwrap();
    assert!(matches!(ending, Ending::Finished(Ok(()))));
    assert_eq!(seen, [DrainReason::Shed]);
    assert_eq!(fake.goaways().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stream_may_end_waits_for_the_drain_the_patience_and_a_pause() {
    let t0 = Instant::now();
    let info = Arc::new(ConnInfo::new(
        1,
        "127.0.0.1:9".parse().unwrap(),
        StreamEnd {
            after: s(2.0),
            quiet: s(0.2),
        },
    ));
    let (_fake, _task) = run(info.clone(), false);
    info.schedule_drain(t0 + s(1.0), DrainReason::Shed, s(60.0));
    // Data keeps arriving every 100 ms until 4 s, then stops.
    let last_data = move || {
        let now = Instant::now();
        let quiet_from = t0 + s(4.0);
        let last = if now < quiet_from {
            t0 + Duration::from_millis(((now - t0).as_millis() / 100 * 100) as u64)
        } else {
            quiet_from
        };
        (last, true)
    };
    info.stream_may_end(last_data).await;
    let ended = Instant::now() - t0;
    assert!(
        ended >= s(4.19) && ended <= s(4.21),
        "ended {ended:?} after the drain, patience and a 200 ms pause"
    );
}
