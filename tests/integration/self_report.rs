//! `self_report`: a peer reports its own numbers to the OAP (here the sink) through the
//! meter protocol, under Satellite's metric names, as its own service instance.

use std::time::Duration;

use satmesh::selfreport::{
    CONNECTION_COUNT, CPU_GAUGE, PATH, QUEUE_PARTITION_SIZE, QUEUE_TOTAL_CAPACITY, RECEIVE_COUNT,
    SENDER_OUTPUT_COUNT,
};
use serde_json::Value;

use crate::support::{admin::*, client::*, messages::*, processes::*};

const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";

/// Meter elements the sink acknowledged for (service, instance).
fn meters_of(c: &Value, service: &str, instance: &str) -> u64 {
    c["meters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["service"] == service && m["instance"] == instance)
        .map(|m| m["messages"].as_u64().unwrap_or(0))
        .sum()
}

fn named(c: &Value, name: &str) -> u64 {
    c["meter_names"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reports_satellite_metric_names_as_its_own_instance() {
    let sink = sink(&[]).await;
    let peer = satmesh(
        &[sink.grpc],
        "cluster:\n  node_id: \"peer-self\"\nself_report:\n  enabled: true\n  interval: 200ms\n",
    )
    .await;
    ready(&peer).await;
    // Agent traffic, so the received and sent counters have a series.
    let client = Client::connect(peer.grpc).await;
    let sent: Vec<_> = (0..5).map(|i| segment("svc", "agent-1", i, 50)).collect();
    client
        .stream(SEGMENTS, sent, md(&[]))
        .await
        .expect("agent call answered OK");

    let mut names = vec![
        RECEIVE_COUNT,
        SENDER_OUTPUT_COUNT,
        CONNECTION_COUNT,
        QUEUE_TOTAL_CAPACITY,
        QUEUE_PARTITION_SIZE,
    ];
    if std::path::Path::new("/proc/self/stat").exists() {
        names.push(CPU_GAUGE);
    }
    let c = wait_for(&sink, Duration::from_secs(10), |c| {
        method_count(c, PATH, "messages") >= 3 && names.iter().all(|n| named(c, n) > 0)
    })
    .await;
    for n in &names {
        assert!(named(&c, n) > 0, "no {n} reached the OAP: {c}");
    }
    // Every element is filed under the peer: Satellite's default service, the node id.
    let reports = method_count(&c, PATH, "messages");
    assert!(reports >= 3, "periodic reports: {c}");
    let elements: u64 = c["meter_names"]
        .as_object()
        .expect("meter_names")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(meters_of(&c, "satellite-service", "peer-self"), elements);
    assert_eq!(c["malformed"], 0);
    // The reports are the peer's own, not agents' messages.
    assert_eq!(
        peer.metric("satmesh_messages_in_total{protocol=\"meter\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_instance_are_configurable_and_nothing_is_sent_when_off() {
    let sink = sink(&[]).await;
    let off = satmesh(&[sink.grpc], "").await;
    let on = satmesh(
        &[sink.grpc],
        "self_report:\n  enabled: true\n  interval: 100ms\n  service: tier-a\n  instance: pod-1\n",
    )
    .await;
    ready(&off).await;
    let c = wait_for(&sink, Duration::from_secs(10), |c| {
        meters_of(c, "tier-a", "pod-1") > 0
    })
    .await;
    assert!(meters_of(&c, "tier-a", "pod-1") > 0, "{c}");
    // Only the enabled peer reports: every meter element is its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = sink.counts().await;
    let all: u64 = c["meters"]
        .as_array()
        .expect("meters")
        .iter()
        .filter_map(|m| m["messages"].as_u64())
        .sum();
    assert_eq!(all, meters_of(&c, "tier-a", "pod-1"), "{c}");
    drop(on);
}
