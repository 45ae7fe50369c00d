use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn names(nodes: &[HostPort]) -> Vec<String> {
    nodes.iter().map(ToString::to_string).collect()
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::load(None, env(&[])).unwrap();
    assert_eq!(c.server.listen, addr("0.0.0.0:11800"));
    assert_eq!(c.server.max_message_bytes, 50 * 1024 * 1024);
    assert_eq!(c.admin.listen, addr("0.0.0.0:1234"));
    assert_eq!(c.cluster.gossip_listen, addr("0.0.0.0:7946"));
    assert!(c.upstream.static_nodes.is_empty());
    assert!(c.require_upstream().is_err());
}

#[test]
fn environment_overrides_with_double_underscore_and_lists() {
    let c = Config::load(
        None,
        env(&[
            ("SATMESH__SERVER__LISTEN", "127.0.0.1:9000"),
            ("SATMESH__SERVER__MAX_MESSAGE_BYTES", "1024"),
            ("SATMESH__UPSTREAM__STATIC", "oap-1:11800,oap-2:11800"),
            ("SATMESH__UPSTREAM__DNS", "oap.ns.svc:11800"),
            ("SATMESH__PIPELINE__FLUSH_INTERVAL", "5ms"),
            ("SATMESH__ROUTING__PROTOCOLS__LOG", "weighted"),
            ("SATMESH__CLUSTER__SEEDS", "p-0.peers:7946, p-1.peers:7946"),
            ("SATMESH__CLUSTER__ADVERTISE", "10.0.0.7:7946"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.listen, addr("127.0.0.1:9000"));
    assert_eq!(c.server.max_message_bytes, 1024);
    assert_eq!(
        names(&c.upstream.static_nodes),
        ["oap-1:11800", "oap-2:11800"]
    );
    let dns = c.upstream.dns.as_ref().unwrap();
    assert_eq!((dns.host(), dns.port()), ("oap.ns.svc", 11800));
    assert_eq!(c.pipeline.flush_interval, Duration::from_millis(5));
    assert_eq!(c.routing.protocols["log"], Route::Weighted);
    assert_eq!(
        names(&c.cluster.seeds),
        ["p-0.peers:7946", "p-1.peers:7946"]
    );
    assert_eq!(c.cluster.advertise, Some(addr("10.0.0.7:7946")));
}

#[test]
fn an_empty_environment_list_means_none() {
    let c = Config::load(
        None,
        env(&[
            ("SATMESH__UPSTREAM__STATIC", ""),
            ("SATMESH__UPSTREAM__WEIGHTS", ""),
            ("SATMESH__CLUSTER__SEEDS", ""),
        ]),
    )
    .unwrap();
    assert!(c.upstream.static_nodes.is_empty());
    assert!(c.upstream.weights.is_empty());
    assert!(c.cluster.seeds.is_empty());
}

#[test]
fn file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "server:\n  listen: 127.0.0.1:1\nupstream:\n  static: [a:1]\n",
    )
    .unwrap();
    let c = Config::load(
        Some(&path),
        env(&[("SATMESH__SERVER__LISTEN", "127.0.0.1:2")]),
    )
    .unwrap();
    assert_eq!(c.server.listen, addr("127.0.0.1:2"));
    assert_eq!(names(&c.upstream.static_nodes), ["a:1"]);
}

fn error_of(pairs: &[(&str, &str)]) -> String {
    Config::load(None, env(pairs)).unwrap_err().to_string()
}

#[test]
fn errors_name_the_key() {
    for (variable, value, key) in [
        ("SATMESH__SERVER__LISTEN", "nope", "server.listen"),
        ("SATMESH__SERVER__LISTN", "x", "listn"),
        ("SATMESH__ADMIN__LISTEN", "localhost:1", "admin.listen"),
        ("SATMESH__UPSTREAM__STATIC", "oap", "upstream.static"),
        ("SATMESH__UPSTREAM__DNS", "oap:0", "upstream.dns"),
        ("SATMESH__UPSTREAM__WEIGHTS", "a:1=0", "upstream.weights"),
        ("SATMESH__CLUSTER__SEEDS", "a:1,b", "cluster.seeds"),
        (
            "SATMESH__CLUSTER__GOSSIP_LISTEN",
            "0.0.0.0",
            "cluster.gossip_listen",
        ),
        ("SATMESH__CLUSTER__ADVERTISE", "pod:1", "cluster.advertise"),
        ("SATMESH__ROUTING__DEFAULT", "fixed", "routing.default"),
        ("SATMESH__PIPELINE__BATCH_SIZE", "0", "pipeline.batch_size"),
        (
            "SATMESH__PIPELINE__FLUSH_INTERVAL",
            "soon",
            "flush_interval",
        ),
        (
            "SATMESH__SERVER__CONNECTION_WINDOW_BYTES",
            "100",
            "server.connection_window_bytes",
        ),
        (
            "SATMESH__UPSTREAM__BACKOFF_MIN",
            "0s",
            "upstream.backoff_min",
        ),
        (
            "SATMESH__UPSTREAM__TOKEN",
            "bad\u{1}token",
            "upstream.token",
        ),
        (
            "SATMESH__PIPELINE__MAX_REJECTIONS",
            "0",
            "pipeline.max_rejections",
        ),
        ("SATMESH__BALANCE__STEP", "1.5", "balance.step"),
        ("SATMESH__SELF_REPORT__SERVICE", " ", "self_report.service"),
    ] {
        let error = error_of(&[(variable, value)]);
        assert!(error.contains(key), "{variable}={value}: {error}");
    }
    // The value at fault is shown too.
    assert!(error_of(&[("SATMESH__SERVER__LISTEN", "nope")]).contains("`nope`"));
    assert!(error_of(&[("SATMESH__UPSTREAM__STATIC", "oap")]).contains("`oap`"));
}

#[test]
fn weights_parse_and_print_as_written() {
    let c = Config::load(None, env(&[("SATMESH__UPSTREAM__WEIGHTS", "a:1=3, b:2=1")])).unwrap();
    let w = c.upstream.weight_map();
    assert_eq!(w.get("a:1"), Some(&3));
    assert_eq!(w.get("b:2"), Some(&1));
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(
        json["upstream"]["weights"],
        serde_json::json!(["a:1=3", "b:2=1"])
    );
    assert_eq!(json["server"]["listen"], "0.0.0.0:11800");
}
