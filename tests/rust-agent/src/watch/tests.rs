//! The watcher fed hand-built HTTP/2 bytes: header blocks from a real HPACK encoder (its
//! dynamic table carried across blocks as a peer's is), frames cut at every boundary.

use super::*;
use crate::testing::*;
use loona_hpack::Encoder;

/// A watcher and its tally.
fn watcher() -> (ConnWatch, Arc<Tally>) {
    let tally = Arc::new(Tally::default());
    (ConnWatch::new(Arc::clone(&tally)), tally)
}

/// Feed `bytes` in chunks of the sizes in `sizes`, cycling.
fn feed_chunked(bytes: &[u8], sizes: &[usize], mut feed: impl FnMut(&[u8])) {
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at == bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        feed(&bytes[at..end]);
        at = end;
    }
}

/// A trace stream of 3 messages and a log stream of 2, both told OK.
fn two_streams() -> (Side, Side) {
    let (mut c, mut s) = (Side::client(), Side::server());
    c.request(1, TRACE);
    c.request(3, LOG);
    c.data(1, 0, &messages(2, 30));
    c.data(3, 0, &messages(2, 10));
    c.data(1, 0, &messages(1, 30));
    c.data(1, END_STREAM, &[]);
    c.data(3, END_STREAM, &[]);
    s.response(1);
    s.response(3);
    s.trailers(3, "0");
    s.trailers(1, "0");
    (c, s)
}

#[test]
fn streams_told_ok_count_their_messages_by_path() {
    let (c, s) = two_streams();
    let (mut w, tally) = watcher();
    w.on_sent(&c.bytes);
    w.on_received(&s.bytes);
    assert_eq!(tally.told_ok.get(), (3, 2, 0));
    assert_eq!(tally.not_ok.get(), (0, 0, 0));
    assert_eq!(w.open_streams(), 0);
    assert_eq!(tally.watch_errors.load(Ordering::SeqCst), 0);
}

#[test]
fn frames_split_across_reads_at_every_size() {
    let (c, s) = two_streams();
    for sizes in [&[1][..], &[2, 7], &[5, 1, 13, 64], &[9], &[4096]] {
        let (mut w, tally) = watcher();
        feed_chunked(&c.bytes, sizes, |b| w.on_sent(b));
        feed_chunked(&s.bytes, sizes, |b| w.on_received(b));
        assert_eq!(tally.told_ok.get(), (3, 2, 0), "chunks {sizes:?}");
        assert_eq!(tally.watch_errors.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn a_message_spans_data_frames() {
    let (mut c, mut s) = (Side::client(), Side::server());
    c.request(1, METER);
    // Three messages of 40 000 bytes cut into DATA frames of 16 384 bytes: prefixes and
    // bodies fall across frame boundaries.
    let body = messages(3, 40_000);
    for chunk in body.chunks(16_384) {
        c.data(1, 0, chunk);
    }
    c.data(1, END_STREAM, &messages(1, 0));
    s.response(1);
    s.trailers(1, "0");
    let (mut w, tally) = watcher();
    w.on_sent(&c.bytes);
    w.on_received(&s.bytes);
    assert_eq!(tally.told_ok.get(), (0, 0, 4));
}

#[test]
fn padding_is_not_taken_for_messages() {
    let (mut c, mut s) = (Side::client(), Side::server());
    // HEADERS padded and with priority fields.
    let block = c.block(&[(":method", "POST"), (":path", TRACE)]);
    let mut payload = vec![3, 0, 0, 0, 0, 16];
    payload.extend(&block);
    payload.extend([0xff; 3]);
    c.bytes
        .extend(frame(0x1, END_HEADERS | PADDED | PRIORITY, 1, &payload));
    // DATA padded with bytes that would read as a message prefix.
    let mut data = vec![10];
    data.extend(messages(2, 4));
    data.extend([0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    c.data(1, PADDED | END_STREAM, &data);
    s.response(1);
    s.trailers(1, "0");
    let (mut w, tally) = watcher();
    w.on_sent(&c.bytes);
    w.on_received(&s.bytes);
    assert_eq!(tally.told_ok.get(), (2, 0, 0));
    assert_eq!(tally.watch_errors.load(Ordering::SeqCst), 0);
}

#[test]
fn header_blocks_continue_across_continuation_frames() {
    let (mut c, mut s) = (Side::client(), Side::server());
    let block = c.block(&[(":method", "POST"), (":path", LOG), ("x-pad", "0123456789")]);
    let (a, b) = block.split_at(block.len() / 2);
    let (b, d) = b.split_at(b.len() / 2);
    c.bytes.extend(frame(0x1, 0, 1, a));
    c.bytes.extend(frame(0x9, 0, 1, b));
    c.bytes.extend(frame(0x9, END_HEADERS, 1, d));
    c.data(1, END_STREAM, &messages(5, 3));
    s.response(1);
    // Trailers-only style: status and grpc-status in one block, END_STREAM on HEADERS,
    // the block finished by a CONTINUATION.
    let block = s.block(&[(":status", "200"), ("grpc-status", "0")]);
    let (a, b) = block.split_at(2);
    s.bytes.extend(frame(0x1, END_STREAM, 1, a));
    s.bytes.extend(frame(0x9, END_HEADERS, 1, b));
    let (mut w, tally) = watcher();
    w.on_sent(&c.bytes);
    w.on_received(&s.bytes);
    assert_eq!(tally.told_ok.get(), (0, 5, 0));
}

#[test]
fn dynamic_table_entries_and_size_updates_are_followed() {
    let (mut c, mut s) = (Side::client(), Side::server());
    for stream in [1, 3, 5] {
        c.request(stream, TRACE);
        c.data(stream, END_STREAM, &messages(1, 8));
    }
    let (mut w, tally) = watcher();
    w.on_sent(&c.bytes);
    // Stream 1: grpc-status 0 goes into the server's dynamic table (index 62).
    let block = s.block(&[("grpc-status", "0")]);
    s.bytes
        .extend(frame(0x1, END_HEADERS | END_STREAM, 1, &block));
    // Stream 3: grpc-status 0 by that index alone.
    s.bytes
        .extend(frame(0x1, END_HEADERS | END_STREAM, 3, &[0x80 | 62]));
    w.on_received(&s.bytes);
    assert_eq!(tally.told_ok.get(), (2, 0, 0));
    // Stream 5: the table emptied (size update to 0, then back to 4096) before the same
    // index: the entry is gone, so the block cannot be decoded and nothing is counted.
    let block = [0x20, 0x3f, 0xe1, 0x1f, 0x80 | 62];
    w.on_received(&frame(0x1, END_HEADERS | END_STREAM, 5, &block));
    assert_eq!(tally.told_ok.get(), (2, 0, 0));
    assert_eq!(tally.not_ok.get(), (1, 0, 0));
    assert_eq!(tally.watch_errors.load(Ordering::SeqCst), 1);
}

#[test]
fn other_endings_are_not_ok() {
    let (mut c, mut s) = (Side::client(), Side::server());
    for stream in [1, 3, 5, 7] {
        c.request(stream, TRACE);
        c.data(stream, 0, &messages(stream as usize, 8));
    }
    c.bytes.extend(frame(0x3, 0, 7, &8u32.to_be_bytes())); // the client cancels 7
    s.response(1);
    s.trailers(1, "14"); // UNAVAILABLE
    s.bytes.extend(frame(0x3, 0, 3, &2u32.to_be_bytes())); // the server resets 3
    s.response(5);
    s.data(5, END_STREAM, &[]); // a response without trailers
    let (mut w, tally) = watcher();
    w.on_sent(&c.bytes);
    w.on_received(&s.bytes);
    assert_eq!(tally.told_ok.get(), (0, 0, 0));
    assert_eq!(tally.not_ok.get(), (1 + 3 + 5 + 7, 0, 0));
    assert_eq!(w.open_streams(), 0);
}

#[test]
fn a_cut_connection_ends_its_open_streams_not_ok() {
    let (mut c, mut s) = (Side::client(), Side::server());
    c.request(1, TRACE);
    c.request(3, LOG);
    c.data(1, 0, &messages(4, 8));
    c.data(3, END_STREAM, &messages(2, 8));
    s.response(1);
    s.response(3);
    s.trailers(3, "0");
    let (mut w, tally) = watcher();
    w.on_sent(&c.bytes);
    // The server's last bytes arrive, then half of stream 1's trailers, then EOF.
    let mut late = Side::server();
    late.encoder = std::mem::replace(&mut s.encoder, Encoder::new());
    late.bytes.clear();
    late.trailers(1, "0");
    w.on_received(&s.bytes);
    w.on_received(&late.bytes[..late.bytes.len() - 1]);
    w.on_cut();
    assert_eq!(tally.told_ok.get(), (0, 2, 0));
    assert_eq!(tally.not_ok.get(), (4, 0, 0));
    assert_eq!(w.open_streams(), 0);
    // Nothing after the cut counts, even the rest of those trailers.
    w.on_received(&late.bytes[late.bytes.len() - 1..]);
    assert_eq!(tally.told_ok.get(), (0, 2, 0));
}

#[test]
fn other_methods_are_not_counted() {
    let (mut c, mut s) = (Side::client(), Side::server());
    c.request(1, "/skywalking.v3.ManagementService/keepAlive");
    c.request(3, "/skywalking.v3.MeterReportService/collectBatch");
    c.data(1, END_STREAM, &messages(1, 8));
    c.data(3, END_STREAM, &messages(1, 8));
    s.trailers(1, "0");
    s.trailers(3, "0");
    let (mut w, tally) = watcher();
    w.on_sent(&c.bytes);
    w.on_received(&s.bytes);
    assert_eq!(tally.told_ok.get(), (0, 0, 0));
    assert_eq!(tally.not_ok.get(), (0, 0, 0));
}

#[test]
fn bytes_that_are_not_http2_stop_the_watch() {
    let (mut w, tally) = watcher();
    w.on_sent(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(tally.watch_errors.load(Ordering::SeqCst), 1);
    let (mut w, tally) = watcher();
    let mut c = Side::client();
    c.bytes.extend(frame(0x9, END_HEADERS, 1, &[0x82]));
    w.on_sent(&c.bytes);
    assert_eq!(tally.watch_errors.load(Ordering::SeqCst), 1);
    let (mut w, tally) = watcher();
    let mut c = Side::client();
    c.bytes.extend(frame(0x0, PADDED, 1, &[9, 0, 0]));
    w.on_sent(&c.bytes);
    assert_eq!(tally.watch_errors.load(Ordering::SeqCst), 1);
}
