//! The wire format of a report (checked byte by byte and with the repo's peek views),
//! the mapping of counters to Satellite's series, CPU arithmetic, and the reporter's
//! schedule on tokio's paused clock.

use super::*;
use crate::pipeline::MemoryQueue;

fn labels(v: &MeterSingleValue) -> Vec<(&str, &str)> {
    v.labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect()
}

#[test]
fn meter_data_uses_the_published_field_numbers() {
    let data = MeterData {
        single_value: Some(single("n", &[("a", "b")], 1.0)),
        service: "s".into(),
        service_instance: "i".into(),
        timestamp: 7,
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x0a, 20,                                   // MeterData.singleValue = 1
            0x0a, 1, b'n',                          //   MeterSingleValue.name = 1
            0x12, 6,                                //   MeterSingleValue.labels = 2
                0x0a, 1, b'a', 0x12, 1, b'b',       //     Label.name = 1, Label.value = 2
            0x19, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f,     //   MeterSingleValue.value = 3 (double 1.0)
        0x1a, 1, b's',                              // MeterData.service = 3
        0x22, 1, b'i',                              // MeterData.serviceInstance = 4
        0x28, 7,                                    // MeterData.timestamp = 5
    ];
    assert_eq!(data.encode_to_vec(), expected);
}

fn snapshot() -> Snapshot {
    Snapshot {
        protocols: vec![
            ProtocolCounts {
                protocol: "trace",
                received: 10,
                delivered: 8,
                lost: 2,
            },
            ProtocolCounts {
                protocol: "meter",
                received: 0,
                delivered: 3,
                lost: 0,
            },
            ProtocolCounts {
                protocol: "log",
                ..Default::default()
            },
        ],
        connections: 4,
        queue_used: 5,
        queue_capacity: 100,
        cpu_percent: Some(12.5),
    }
}

#[test]
fn counters_become_satellite_series_once_above_zero_and_gauges_always() {
    let all = series(&snapshot());
    /// Name, labels, value.
    type Series<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);
    let got: Vec<Series> = all
        .iter()
        .map(|v| (v.name.as_str(), labels(v), v.value))
        .collect();
    let sent = |pipe, status| vec![("pipe", pipe), ("status", status), ("type", pipe)];
    assert_eq!(
        got,
        vec![
            (
                RECEIVE_COUNT,
                vec![("pipe", "trace"), ("status", "all")],
                10.0
            ),
            (SENDER_OUTPUT_COUNT, sent("trace", "success"), 8.0),
            (SENDER_OUTPUT_COUNT, sent("trace", "failure"), 2.0),
            (SENDER_OUTPUT_COUNT, sent("meter", "success"), 3.0),
            (CONNECTION_COUNT, vec![], 4.0),
            (CPU_GAUGE, vec![], 12.5),
            (QUEUE_TOTAL_CAPACITY, vec![("pipeline", "satmesh")], 100.0),
            (
                QUEUE_PARTITION_SIZE,
                vec![("pipeline", "satmesh"), ("partition", "0")],
                5.0
            ),
        ]
    );
    let without_cpu = series(&Snapshot {
        cpu_percent: None,
        ..snapshot()
    });
    assert!(without_cpu.iter().all(|v| v.name != CPU_GAUGE));
    assert_eq!(without_cpu.len(), all.len() - 1);
}

#[test]
fn every_element_of_a_report_names_service_instance_and_time() {
    let bytes = report(
        &snapshot(),
        "satellite-service",
        "peer-1",
        1_700_000_000_000,
    );
    let decoded = MeterDataCollection::decode(bytes.clone()).expect("valid protobuf");
    assert_eq!(decoded.meter_data.len(), series(&snapshot()).len());
    for d in &decoded.meter_data {
        assert_eq!(
            (d.service.as_str(), d.service_instance.as_str(), d.timestamp),
            ("satellite-service", "peer-1", 1_700_000_000_000)
        );
        assert!(d.single_value.is_some());
    }
    // The repo's read-only views find the routing key and every element where the
    // protocol puts them.
    let key = satmesh_proto::peek_first_key(&bytes, satmesh_proto::METER_DATA)
        .expect("well formed")
        .expect("one element at least");
    assert_eq!((key.service, key.instance), ("satellite-service", "peer-1"));
    let names: Vec<String> = satmesh_proto::repeated(&bytes, satmesh_proto::COLLECTION_ITEMS)
        .map(|item| {
            let value = satmesh_proto::repeated(item.unwrap(), 1).next().unwrap();
            let name = satmesh_proto::repeated(value.unwrap(), 1).next().unwrap();
            String::from_utf8(name.unwrap().to_vec()).unwrap()
        })
        .collect();
    assert!(names.contains(&RECEIVE_COUNT.to_owned()), "{names:?}");
    assert!(names.contains(&CONNECTION_COUNT.to_owned()), "{names:?}");
}

/// The process's CPU time by the kernel's CPU clock (nanoseconds, no clock ticks).
fn cpu_clock() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(target_os = "linux")]
#[test]
fn process_cpu_time_agrees_with_the_kernels_cpu_clock() {
    // Some CPU time first, so that a wrong unit (ticks taken for centiseconds, say)
    // cannot hide in the tolerance.
    let start = cpu_clock();
    let mut spin = 0u64;
    while cpu_clock() < start + Duration::from_millis(300) {
        spin = std::hint::black_box(spin.wrapping_add(1));
    }
    // /proc counts in clock ticks, truncated: up to a tick or two behind the clock.
    let tolerance = Duration::from_millis(20);
    for _ in 0..5 {
        let before = cpu_clock();
        let read = process_cpu_time().expect("/proc/self/stat is readable here");
        let after = cpu_clock();
        assert!(
            read + tolerance >= before && read <= after + tolerance,
            "/proc says {read:?}, the CPU clock {before:?}..{after:?}"
        );
    }
}

#[test]
fn cpu_percent_is_of_the_usable_cpus() {
    let second = Duration::from_secs(1);
    // 1 s of CPU over 1 s on 2 CPUs: half of them.
    assert_eq!(cpu_percent(second, second, 2), Some(50.0));
    assert_eq!(cpu_percent(Duration::ZERO, second, 4), Some(0.0));
    assert_eq!(cpu_percent(second * 10, second, 1), Some(100.0));
    assert_eq!(
        cpu_percent(Duration::from_millis(250), second / 2, 1),
        Some(50.0)
    );
    assert_eq!(cpu_percent(second, Duration::ZERO, 2), None);
}

#[tokio::test(start_paused = true)]
async fn queues_one_routed_report_per_interval_until_stopped() {
    let metrics = Arc::new(Metrics::new());
    let trace = METHODS.iter().position(|m| m.protocol == "trace").unwrap();
    metrics.method(trace as MethodId).messages_in.inc_by(3);
    let queue = Arc::new(MemoryQueue::new(100, 1 << 20));
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        Reporter {
            metrics,
            queue: queue.clone(),
            connections: Connections::default(),
            interval: Duration::from_secs(10),
            service: "satellite-service".into(),
            instance: "peer-1".into(),
            fixed: true,
        }
        .run(stop.clone()),
    );
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        queue.depth().events,
        0,
        "the first report comes one interval in"
    );
    tokio::time::sleep(Duration::from_secs(22)).await;
    let mut events = Vec::new();
    queue.try_pop(10, &mut events);
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(Some(e.method), protocol::lookup(PATH));
        assert_eq!(e.auth, None);
        let expected = satmesh_cluster::route_key("satellite-service", "peer-1");
        assert_eq!(e.key.as_deref(), Some(&expected[..]));
        let report = MeterDataCollection::decode(e.payload.clone()).unwrap();
        let received = report
            .meter_data
            .iter()
            .filter_map(|d| d.single_value.as_ref())
            .find(|v| v.name == RECEIVE_COUNT)
            .expect("trace received messages");
        assert_eq!(labels(received), [("pipe", "trace"), ("status", "all")]);
        assert_eq!(received.value, 3.0);
    }
    stop.cancel();
    task.await.unwrap();
}

fn load(env: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::load(None, Some(env))
}

#[test]
fn config_defaults_to_off_every_10s_as_satellite_service_on_the_node_id() {
    let c = load(&[("SATMESH__CLUSTER__NODE_ID", "peer-7")]).unwrap();
    let r = &c.self_report;
    assert!(!r.enabled);
    assert_eq!(r.interval, Duration::from_secs(10));
    assert_eq!(r.service, "satellite-service");
    let reporter = Reporter::new(
        &c,
        Arc::new(Metrics::new()),
        Arc::new(MemoryQueue::new(1, 1)),
        Connections::default(),
    );
    assert_eq!(reporter.instance, "peer-7");
    assert!(reporter.fixed, "meter is routed fixed by default");
}

#[test]
fn config_is_read_from_the_environment_and_bad_values_name_their_key() {
    let c = load(&[
        ("SATMESH__SELF_REPORT__ENABLED", "true"),
        ("SATMESH__SELF_REPORT__INTERVAL", "200ms"),
        ("SATMESH__SELF_REPORT__SERVICE", "tier-a"),
        ("SATMESH__SELF_REPORT__INSTANCE", "pod-1"),
    ])
    .unwrap();
    let r = &c.self_report;
    assert!(r.enabled);
    assert_eq!(r.interval, Duration::from_millis(200));
    assert_eq!(
        (r.service.as_str(), r.instance.as_deref()),
        ("tier-a", Some("pod-1"))
    );
    for (key, value, named) in [
        (
            "SATMESH__SELF_REPORT__INTERVAL",
            "0s",
            "self_report.interval",
        ),
        ("SATMESH__SELF_REPORT__SERVICE", " ", "self_report.service"),
        ("SATMESH__SELF_REPORT__INSTANCE", "", "self_report.instance"),
    ] {
        let err = load(&[(key, value)]).expect_err(key).to_string();
        assert!(err.contains(named), "{err}");
    }
}
