//! The admin port of a running satmesh ([`Proc`]): counts, metrics, readiness, faults
//! and connections, and waits on them.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::messages::digest;
use super::processes::Proc;

impl Proc {
    /// `GET path` on the admin port: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin);
        let r = reqwest::get(&url).await.expect("admin request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// `GET /counts` (the sink's counts by method) as JSON.
    pub async fn counts(&self) -> Value {
        let (_, body) = self.get("/counts").await;
        serde_json::from_str(&body).expect("counts json")
    }

    /// The value of one metric sample line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |v| v.trim().parse().expect("metric value"))
    }

    /// `POST /faults` (the sink's injected faults).
    pub async fn set_faults(&self, faults: Value) {
        let url = format!("http://{}/faults", self.admin);
        let r = reqwest::Client::new()
            .post(url)
            .json(&faults)
            .send()
            .await
            .expect("faults");
        assert!(r.status().is_success());
    }

    /// `POST path` (no body) on the admin port: the status and the body.
    pub async fn post(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin);
        let r = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .expect("admin request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// `GET /connections`: the limit, counts by reason and every live connection.
    pub async fn connections(&self) -> Value {
        let (_, body) = self.get("/connections").await;
        serde_json::from_str(&body).expect("connections json")
    }

    /// Ids of the live connections in `state` (`serving`, `draining`), oldest first.
    pub async fn connection_ids(&self, state: &str) -> Vec<u64> {
        self.connections().await["connections"]
            .as_array()
            .expect("connections array")
            .iter()
            .filter(|c| c["state"] == state)
            .map(|c| c["id"].as_u64().expect("id"))
            .collect()
    }

    /// Drains connection `id` (reason `shed`); true if it was serving.
    pub async fn drain_connection(&self, id: u64) -> bool {
        let (status, body) = self.post(&format!("/connections/drain?id={id}")).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("drain json");
        v["drained"] == 1
    }
}

/// Polls `f` over the sink's counts until it holds or `within` passes.
pub async fn wait_for(p: &Proc, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let c = p.counts().await;
        if f(&c) {
            return c;
        }
        if start.elapsed() > within {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the peer's /readyz says ready.
pub async fn ready(p: &Proc) {
    for _ in 0..200 {
        if p.get("/readyz").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("satmesh never became ready");
}

/// One count of one method in the sink's `/counts` (`messages`, `digest`, ...), 0 if absent.
pub fn method_count(c: &Value, path: &str, field: &str) -> u64 {
    c["methods"][path][field].as_u64().unwrap_or(0)
}

/// Waits (bounded) until the sink acknowledged exactly `sent` on `path`, bytes unchanged.
pub async fn assert_all_arrived(sink: &Proc, path: &str, sent: &[Bytes], within: Duration) {
    let c = wait_for(sink, within, |c| {
        method_count(c, path, "messages") >= sent.len() as u64
    })
    .await;
    assert_eq!(
        method_count(&c, path, "messages"),
        sent.len() as u64,
        "messages at the sink"
    );
    assert_eq!(
        method_count(&c, path, "digest"),
        digest(sent),
        "payload bytes at the sink"
    );
}
