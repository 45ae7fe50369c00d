//! The disk queue against real files in a temporary directory: a queue dropped without
//! `finish` is what a `kill -9` leaves (the writer thread's files as the kernel has them).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

fn settings(dir: &Path, fsync: Fsync) -> DiskSettings {
    DiskSettings {
        dir: dir.to_owned(),
        max_bytes: 64 * 1024 * 1024,
        segment_bytes: 64 * 1024,
        fsync,
        window_events: 10_000,
        window_bytes: 64 * 1024 * 1024,
    }
}

fn event(n: usize) -> Event {
    Event {
        method: 3,
        auth: n.is_multiple_of(2).then(|| Bytes::from_static(b"token")),
        payload: Bytes::from(format!("message {n:06} {}", "x".repeat(200))),
        enqueued: Instant::now(),
        key: n
            .is_multiple_of(3)
            .then(|| Bytes::from(format!("svc\0inst-{n}"))),
        seq: 0,
    }
}

/// Pushes `range` and waits until the queue may tell the agent OK.
async fn push_all(q: &DiskQueue, range: std::ops::Range<usize>) {
    let mut last = 0;
    for n in range {
        last = q.push(event(n)).await.expect("pushed");
    }
    if let Some(settling) = q.settle(last) {
        tokio::time::timeout(Duration::from_secs(10), settling)
            .await
            .expect("settled in time")
            .expect("settled");
    }
}

/// Pops `n` events (bounded wait).
async fn pop_n(q: &DiskQueue, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let more = tokio::time::timeout(Duration::from_secs(10), q.pop(n - out.len(), &mut out))
            .await
            .expect("events in time");
        assert!(more, "queue ended early");
    }
    out
}

fn numbers(events: &[Event]) -> Vec<usize> {
    let mut ns: Vec<usize> = events
        .iter()
        .map(|e| {
            std::str::from_utf8(&e.payload[8..14])
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    ns.sort_unstable();
    ns
}

/// Ends the queue as a `kill -9` would, as far as a test can: no final write or sync, the
/// writes it made stay as the kernel has them. Waits for its thread so the lock is free.
async fn crash(q: DiskQueue) {
    q.stop.cancel();
    let writer = q.writer.lock().unwrap().take();
    let reader = q.reader.lock().unwrap().take();
    drop(q);
    if let Some(reader) = reader {
        let _ = reader.await;
    }
    if let Some(writer) = writer {
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap()
            .unwrap();
    }
}

fn files(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == ext)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_come_back_whole_and_acknowledged_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let q = DiskQueue::open(settings(dir.path(), Fsync::Always)).unwrap();
    push_all(&q, 0..1000).await;
    let events = pop_n(&q, 1000).await;
    assert_eq!(numbers(&events), (0..1000).collect::<Vec<_>>());
    for e in &events {
        let n: usize = std::str::from_utf8(&e.payload[8..14])
            .unwrap()
            .parse()
            .unwrap();
        let want = event(n);
        assert_eq!(
            (e.method, &e.auth, &e.key, &e.payload),
            (want.method, &want.auth, &want.key, &want.payload)
        );
    }
    assert!(
        files(dir.path(), "seg") > 2,
        "1000 records of ~250 bytes fill several 64 KiB segments"
    );
    q.release(&events);
    // Every sealed segment goes; the one being written stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    while files(dir.path(), "seg") > 1 {
        assert!(
            Instant::now() < deadline,
            "acknowledged segments never deleted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(q.stats().fsyncs.load(Ordering::Relaxed) > 0);
    q.finish().await;
}

/// Waits until the reader has caught up with the writer and follows it.
async fn until_following(q: &DiskQueue) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !q.shared.index().following {
        assert!(Instant::now() < deadline, "the reader never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_senders_keep_up_nothing_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let q = DiskQueue::open(settings(
        dir.path(),
        Fsync::Interval(Duration::from_millis(10)),
    ))
    .unwrap();
    until_following(&q).await;
    let mut all = Vec::new();
    for round in 0..10 {
        push_all(&q, round * 100..round * 100 + 100).await;
        let events = pop_n(&q, 100).await;
        q.release(&events);
        all.extend(events);
    }
    assert_eq!(numbers(&all), (0..1000).collect::<Vec<_>>());
    assert_eq!(q.stats().read_back.load(Ordering::Relaxed), 0);
    let written = q.stats().bytes_written.load(Ordering::Relaxed);
    assert!(
        written > 1000 * 230,
        "they were written all the same: {written} bytes"
    );
    q.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_window_sends_the_reader_back_to_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let q = DiskQueue::open(DiskSettings {
        window_events: 50,
        ..settings(dir.path(), Fsync::Always)
    })
    .unwrap();
    until_following(&q).await;
    // 40 fit the window and go straight out; the rest must wait for room.
    push_all(&q, 0..40).await;
    let first = pop_n(&q, 40).await;
    push_all(&q, 40..1000).await;
    q.release(&first);
    let mut all = first;
    while all.len() < 1000 {
        let events = pop_n(&q, 10.min(1000 - all.len())).await;
        q.release(&events);
        all.extend(events);
    }
    assert_eq!(
        numbers(&all),
        (0..1000).collect::<Vec<_>>(),
        "each once, none lost"
    );
    let read_back = q.stats().read_back.load(Ordering::Relaxed);
    assert!(read_back >= 900, "read back {read_back}");
    assert_eq!(q.stats().corrupt.load(Ordering::Relaxed), 0);
    // Caught up again, the reader follows the writer once more.
    until_following(&q).await;
    push_all(&q, 1000..1010).await;
    q.release(&pop_n(&q, 10).await);
    assert_eq!(q.stats().read_back.load(Ordering::Relaxed), read_back);
    q.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_not_acknowledged_is_sent_again_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    for fsync in [Fsync::Always, Fsync::Interval(Duration::from_millis(50))] {
        {
            let q = DiskQueue::open(settings(dir.path(), fsync)).unwrap();
            push_all(&q, 0..600).await;
            let events = pop_n(&q, 600).await;
            // The OAP acknowledged the even ones, then the process died.
            let even: Vec<Event> = events
                .into_iter()
                .filter(|e| e.payload[13] % 2 == 0)
                .collect();
            q.release(&even);
            // The acknowledgements reach their file (a killed process loses no write it made).
            let deadline = Instant::now() + Duration::from_secs(10);
            while q.stats().bytes_written.load(Ordering::Relaxed) < 300 * 8 {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            crash(q).await;
        }
        let q = DiskQueue::open(settings(dir.path(), fsync)).unwrap();
        let events = pop_n(&q, 300).await;
        assert_eq!(
            numbers(&events),
            (0..600).filter(|n| n % 2 == 1).collect::<Vec<_>>(),
            "{fsync:?}"
        );
        assert_eq!(q.stats().replayed.load(Ordering::Relaxed), 300);
        let mut more = Vec::new();
        q.try_pop(10, &mut more);
        assert!(more.is_empty(), "nothing else: {} more", more.len());
        q.release(&events);
        q.finish().await;
    }
}

/// A crash right after a roll leaves a last segment with a header and no record; its name
/// is the next record's number. Found by the kill -9 test under load: the next run's
/// first segment took the same name, deleting the empty one deleted the live one, and
/// what was written to it after was never read (acknowledged to agents, lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_last_segment_from_a_crash_does_not_take_the_next_ones_records() {
    let dir = tempfile::tempdir().unwrap();
    let q = DiskQueue::open(settings(dir.path(), Fsync::Always)).unwrap();
    push_all(&q, 0..100).await;
    crash(q).await;
    let paths: Vec<&str> = crate::protocol::METHODS.iter().map(|m| m.path).collect();
    std::fs::write(
        segment::segment_path(dir.path(), 101),
        segment::header(101, &paths),
    )
    .unwrap();

    let q = DiskQueue::open(settings(dir.path(), Fsync::Always)).unwrap();
    push_all(&q, 100..101).await;
    let names: Vec<u64> = q
        .shared
        .index()
        .segments
        .iter()
        .map(|s| s.first_seq)
        .collect();
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "one name, one segment: {names:?}"
    );
    let replayed = pop_n(&q, 101).await;
    assert_eq!(numbers(&replayed), (0..101).collect::<Vec<_>>());
    q.release(&replayed);
    let mut all = Vec::new();
    for round in 0..10 {
        let range = 101 + round * 100..201 + round * 100;
        push_all(&q, range).await;
        let events = pop_n(&q, 100).await;
        q.release(&events);
        all.extend(events);
    }
    assert_eq!(numbers(&all), (101..1101).collect::<Vec<_>>());
    crash(q).await;
    // Nothing acknowledged comes back: the first event of the next run is its own (the
    // last run's records would be read first).
    let q = DiskQueue::open(settings(dir.path(), Fsync::Always)).unwrap();
    push_all(&q, 5000..5001).await;
    assert_eq!(numbers(&pop_n(&q, 1).await), [5000]);
    q.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_a_damaged_record_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = DiskQueue::open(DiskSettings {
            segment_bytes: 1024 * 1024,
            ..settings(dir.path(), Fsync::Always)
        })
        .unwrap();
        push_all(&q, 0..100).await;
        crash(q).await;
    }
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    // A write cut by the crash: the last record loses its last 5 bytes.
    bytes.truncate(len - 5);
    // Damage in the middle: a byte of some record near the middle flipped.
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&seg, &bytes).unwrap();

    let q = DiskQueue::open(settings(dir.path(), Fsync::Always)).unwrap();
    assert!(
        std::fs::metadata(&seg).unwrap().len() < (len - 5) as u64,
        "the torn tail is truncated"
    );
    // 100 written, the last torn, one damaged: 98 come back, and nothing else.
    let events = pop_n(&q, 98).await;
    let ns = numbers(&events);
    assert_eq!(ns.len(), 98);
    assert!(!ns.contains(&99), "the torn record is gone");
    assert_eq!(q.stats().corrupt.load(Ordering::Relaxed), 1);
    let mut more = Vec::new();
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.try_pop(10, &mut more);
    assert!(more.is_empty());
    q.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_owner_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let q = DiskQueue::open(settings(dir.path(), Fsync::Always)).unwrap();
    let Err(e) = DiskQueue::open(settings(dir.path(), Fsync::Always)) else {
        panic!("a second owner was let in");
    };
    let text = e.to_string();
    assert!(matches!(e, OpenError::Locked { .. }), "{text}");
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    q.finish().await;
    // Free again once the owner is gone.
    DiskQueue::open(settings(dir.path(), Fsync::Always))
        .unwrap()
        .finish()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_bytes_pushes_wait_and_nothing_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let q = DiskQueue::open(DiskSettings {
        max_bytes: 1024 * 1024,
        segment_bytes: 64 * 1024,
        ..settings(dir.path(), Fsync::Interval(Duration::from_millis(20)))
    })
    .unwrap();
    // ~260 bytes a record: a MiB holds about 4,000. Push 6,000 while nothing is acked.
    let producer = async {
        let mut last = 0;
        for n in 0..6000 {
            last = q.push(event(n)).await.unwrap();
        }
        if let Some(s) = q.settle(last) {
            s.await.unwrap();
        }
    };
    let consumer = async {
        let mut got = Vec::new();
        // Nothing acknowledged until the writer has stopped at the bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !q.stats().full.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "never reached max_bytes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(q.stats().used_bytes.load(Ordering::Relaxed) <= 1024 * 1024);
        while got.len() < 6000 {
            let mut batch = Vec::new();
            let more = tokio::time::timeout(Duration::from_secs(10), q.pop(500, &mut batch))
                .await
                .expect("events keep coming once acknowledged");
            assert!(more);
            q.release(&batch);
            got.extend(batch);
        }
        got
    };
    let ((), got) = tokio::join!(producer, consumer);
    assert_eq!(numbers(&got), (0..6000).collect::<Vec<_>>());
    assert!(!q.stats().full.load(Ordering::Relaxed), "writing again");
    q.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_acknowledgement_is_cut_off_and_later_ones_stay_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let big = DiskSettings {
        segment_bytes: 1024 * 1024,
        ..settings(dir.path(), Fsync::Always)
    };
    let wait_written = |q: &DiskQueue, bytes: u64| {
        let stats = q.stats();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while stats.bytes_written.load(Ordering::Relaxed) < bytes {
                assert!(Instant::now() < deadline, "acknowledgements never written");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    {
        let q = DiskQueue::open(big.clone()).unwrap();
        push_all(&q, 0..100).await;
        let events = pop_n(&q, 100).await;
        let written = q.stats().bytes_written.load(Ordering::Relaxed);
        q.release(&events[..50]);
        wait_written(&q, written + 50 * 8).await;
        crash(q).await;
    }
    let ack = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "ack"))
        .expect("an acknowledgement file");
    // A crash in the middle of the next entry.
    let mut bytes = std::fs::read(&ack).unwrap();
    bytes.extend_from_slice(&[7, 7, 7]);
    std::fs::write(&ack, &bytes).unwrap();
    {
        let q = DiskQueue::open(big.clone()).unwrap();
        let events = pop_n(&q, 50).await;
        let written = q.stats().bytes_written.load(Ordering::Relaxed);
        q.release(&events[..10]);
        wait_written(&q, written + 10 * 8).await;
        crash(q).await;
    }
    assert_eq!(
        std::fs::metadata(&ack).unwrap().len() % 8,
        0,
        "entries aligned"
    );
    let q = DiskQueue::open(big).unwrap();
    let events = pop_n(&q, 40).await;
    assert_eq!(numbers(&events).len(), 40);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut more = Vec::new();
    q.try_pop(10, &mut more);
    assert!(
        more.is_empty(),
        "acknowledged records came back: {}",
        more.len()
    );
    q.finish().await;
}
