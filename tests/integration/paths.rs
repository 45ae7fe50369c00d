//! Every path satmesh carries, end to end through the real binary to the sink.

use std::time::Duration;

use bytes::Bytes;
use satmesh::protocol::{METHODS, Payload, Policy, SKYWALKING_PATHS, Shape};
use tonic::Code;

use crate::support::{admin::*, client::*, messages::*, processes::*};

/// A payload that looks like the method's message, with a field satmesh does not know.
fn payload_for(payload: Payload, path_index: usize, n: usize) -> Bytes {
    let service = format!("svc-{path_index}");
    match payload {
        Payload::Meter => meter(&service, "inst", n),
        Payload::Log => log(&service, "inst", n),
        _ => segment(&service, "inst", path_index * 100 + n, 64 + n),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_round_trips_with_identical_bytes() {
    assert_eq!(SKYWALKING_PATHS, 45);
    let sink = sink(&["--echo"]).await;
    let peer = satmesh(&[sink.grpc], "pipeline:\n  flush_interval: 5ms\n").await;
    ready(&peer).await;
    let client = Client::connect(peer.grpc).await;
    let mut expected = Vec::new();
    for (i, m) in METHODS.iter().enumerate() {
        let payloads: Vec<Bytes> = match m.shape {
            Shape::Unary => vec![payload_for(m.payload, i, 0)],
            _ => (0..3).map(|n| payload_for(m.payload, i, n)).collect(),
        };
        match (m.shape, m.policy) {
            (Shape::ClientStream, Policy::Async) => {
                let answer = client.stream(m.path, payloads.clone(), md(&[])).await;
                assert_eq!(answer.expect(m.path), Bytes::new(), "{}", m.path);
            }
            (Shape::Unary, Policy::Async) => {
                let answer = client.unary(m.path, payloads[0].clone(), md(&[])).await;
                assert_eq!(answer.expect(m.path), Bytes::new(), "{}", m.path);
            }
            (Shape::Unary, Policy::Sync | Policy::Query) => {
                // The sink echoes: the agent must get the OAP's answer byte for byte.
                let answer = client
                    .unary(m.path, payloads[0].clone(), md(&[]))
                    .await
                    .expect(m.path);
                assert_eq!(answer, payloads[0], "sync answer of {} relayed", m.path);
            }
            (Shape::Bidi, Policy::Relay) => {
                let answers = client.bidi(m.path, payloads.clone()).await.expect(m.path);
                assert_eq!(answers, payloads, "relayed stream of {}", m.path);
            }
            other => panic!("unexpected shape {other:?} for {}", m.path),
        }
        expected.push((m.path, payloads));
    }
    let counts = wait_for(&sink, Duration::from_secs(10), |c| {
        expected
            .iter()
            .all(|(path, p)| method_count(c, path, "messages") >= p.len() as u64)
    })
    .await;
    for (path, payloads) in &expected {
        assert_eq!(
            method_count(&counts, path, "messages"),
            payloads.len() as u64,
            "messages of {path}"
        );
        assert_eq!(
            method_count(&counts, path, "digest"),
            digest(payloads),
            "bytes of {path} changed"
        );
        let bytes: usize = payloads.iter().map(|p| p.len()).sum();
        assert_eq!(method_count(&counts, path, "bytes"), bytes as u64, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_unimplemented_naming_it() {
    let sink = sink(&[]).await;
    let peer = satmesh(&[sink.grpc], "").await;
    let client = Client::connect(peer.grpc).await;
    let err = client
        .unary(
            "/skywalking.v3.Nope/collect",
            Bytes::from_static(b"x"),
            md(&[]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(
        err.message().contains("/skywalking.v3.Nope/collect"),
        "{}",
        err.message()
    );
    // The connection is still good for a known path.
    client
        .unary(METHODS[2].path, segment("s", "i", 0, 10), md(&[]))
        .await
        .expect("known path after unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_gzip_compressed_reports_arrive_with_identical_bytes() {
    let sink = sink(&[]).await;
    let peer = satmesh(&[sink.grpc], "").await;
    let client = Client::connect(peer.grpc).await;
    let path = "/skywalking.v3.TraceSegmentReportService/collect";
    // Plain ones are sliced out of the DATA frames by satmesh's own framing, with sizes
    // that split messages across frames; compressed ones go through tonic's decoder.
    let plain: Vec<Bytes> = (0..40)
        .map(|n| segment("s", "plain", n, 1 + n * 997))
        .collect();
    let gzipped: Vec<Bytes> = (0..10)
        .map(|n| segment("s", "gzip", n, 300 + n * 5000))
        .collect();
    client
        .stream(path, plain.clone(), md(&[]))
        .await
        .expect("plain call");
    client
        .gzip()
        .stream(path, gzipped.clone(), md(&[]))
        .await
        .expect("compressed call");
    let sent: Vec<Bytes> = plain.into_iter().chain(gzipped).collect();
    assert_all_arrived(&sink, path, &sent, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_invalid_argument_and_the_connection_lives_on() {
    let sink = sink(&[]).await;
    let peer = satmesh_env(
        &[sink.grpc],
        "",
        &[("SATMESH__SERVER__MAX_MESSAGE_BYTES", "4096")],
    )
    .await;
    let client = Client::connect(peer.grpc).await;
    let path = "/skywalking.v3.TraceSegmentReportService/collect";
    // A stream already open on the same connection.
    let (open_tx, open_call) = client.open_stream(path).await;
    open_tx.send(segment("s", "before", 0, 100)).await.unwrap();

    let big = segment("s", "big", 1, 10_000);
    let err = client.stream(path, vec![big], md(&[])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("max_message_bytes"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("4096"), "{}", err.message());

    // The other stream and new calls on the connection carry on.
    open_tx.send(segment("s", "after", 2, 100)).await.unwrap();
    drop(open_tx);
    open_call
        .await
        .unwrap()
        .expect("the open stream finished OK");
    client
        .stream(path, vec![segment("s", "next", 3, 100)], md(&[]))
        .await
        .expect("a new call");
    let counts = wait_for(&sink, Duration::from_secs(5), |c| {
        method_count(c, path, "messages") == 3
    })
    .await;
    assert_eq!(method_count(&counts, path, "messages"), 3);
    assert_eq!(
        peer.metric("satmesh_calls_refused_total{reason=\"oversize\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiler_streams_are_relayed_live_both_ways() {
    use futures_util::StreamExt;
    let sink = sink(&["--echo"]).await;
    let peer = satmesh(&[sink.grpc], "").await;
    ready(&peer).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", peer.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outbound = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let path = http::uri::PathAndQuery::from_static("/skywalking.v10.PprofTask/collect");
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let mut answers = grpc
        .streaming(
            tonic::Request::new(outbound),
            path,
            satmesh::codec::PassThrough,
        )
        .await
        .unwrap()
        .into_inner();
    // Each answer comes back while the agent's side of the stream is still open.
    for word in ["first", "second", "third"] {
        if word != "first" {
            tx.send(Bytes::from(word)).await.unwrap();
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await
            .unwrap();
        assert_eq!(answer.unwrap().unwrap(), Bytes::from(word));
    }
    drop(tx);
    assert!(
        answers.next().await.is_none(),
        "the stream ends when the agent ends it"
    );
}
