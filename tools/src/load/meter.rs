//! Meter reports and keepAlive pings, encoded with prost (`satmesh_proto::messages`: the
//! published field numbers of `language-agent/Meter.proto` and
//! `management/Management.proto`).

use bytes::Bytes;
use prost::Message;

pub use satmesh_proto::messages::InstancePingPkg;
use satmesh_proto::messages::{Label, MeterData, MeterSingleValue};

pub const METER_PATH: &str = "/skywalking.v3.MeterReportService/collect";
pub const KEEPALIVE_PATH: &str = "/skywalking.v3.ManagementService/keepAlive";

/// Names of the meters a synthetic agent reports, cycled through a stream.
const METER_NAMES: [&str; 4] = [
    "bench_http_requests_total",
    "bench_thread_pool_active",
    "bench_queue_depth",
    "bench_cache_hit_ratio",
];

/// One report period of one instance: `count` MeterData, as one `collect` stream. As the
/// protocol says, service, serviceInstance and timestamp (milliseconds) are set on the
/// first element only; each element is a single value with a `slot` label, so every
/// element is its own series.
pub fn report(service: &str, instance: &str, count: usize, timestamp_ms: i64) -> Vec<Bytes> {
    (0..count)
        .map(|i| {
            let first = i == 0;
            MeterData {
                single_value: Some(MeterSingleValue {
                    name: METER_NAMES[i % METER_NAMES.len()].to_owned(),
                    labels: vec![Label {
                        name: "slot".to_owned(),
                        value: (i / METER_NAMES.len()).to_string(),
                    }],
                    value: (timestamp_ms % 1000) as f64 + i as f64,
                }),
                service: if first {
                    service.to_owned()
                } else {
                    String::new()
                },
                service_instance: if first {
                    instance.to_owned()
                } else {
                    String::new()
                },
                timestamp: if first { timestamp_ms } else { 0 },
            }
            .encode_to_vec()
            .into()
        })
        .collect()
}

/// One keepAlive ping of an instance.
pub fn ping(service: &str, instance: &str) -> Bytes {
    InstancePingPkg {
        service: service.to_owned(),
        service_instance: instance.to_owned(),
        layer: String::new(),
    }
    .encode_to_vec()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_its_instance_on_the_first_element_only() {
        let report = report("svc", "inst-3", 6, 1_760_000_000_123);
        assert_eq!(report.len(), 6);
        let data: Vec<MeterData> = report
            .iter()
            .map(|b| MeterData::decode(b.as_ref()).unwrap())
            .collect();
        assert_eq!(
            (data[0].service.as_str(), data[0].service_instance.as_str()),
            ("svc", "inst-3")
        );
        assert_eq!(data[0].timestamp, 1_760_000_000_123);
        assert!(
            data[1..]
                .iter()
                .all(|d| d.service.is_empty() && d.service_instance.is_empty() && d.timestamp == 0)
        );
        let names: Vec<&str> = data
            .iter()
            .map(|d| d.single_value.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(names[..4], METER_NAMES);
        assert_eq!(names[4], METER_NAMES[0]);
        let slot = |d: &MeterData| d.single_value.as_ref().unwrap().labels[0].value.clone();
        assert_eq!((slot(&data[0]), slot(&data[4])), ("0".into(), "1".into()));
        // The routing key satmesh peeks is the first element's.
        let key = satmesh_proto::peek_key(&report[0], satmesh_proto::METER_DATA).unwrap();
        assert_eq!((key.service, key.instance), ("svc", "inst-3"));
    }

    #[test]
    fn a_ping_uses_the_published_field_numbers() {
        let bytes = ping("svc", "inst-1");
        let key = satmesh_proto::peek_key(&bytes, satmesh_proto::INSTANCE_PING).unwrap();
        assert_eq!((key.service, key.instance), ("svc", "inst-1"));
        // service (1) and serviceInstance (2) as strings, no layer.
        assert_eq!(bytes[..5], [0x0a, 3, b's', b'v', b'c']);
        assert_eq!(bytes[5..7], [0x12, 6]);
        assert_eq!(bytes.len(), 13);
    }
}
