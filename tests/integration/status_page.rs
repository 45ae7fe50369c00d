//! `GET /status`: the JSON document, the HTML page served to browsers (rendered and
//! refreshed in headless Chromium), and `satmesh status` against a live endpoint.
//!
//! Most tests serve the routes in-process from a scripted [`StatusSource`]: each call
//! takes the next document of its script and the last one repeats, so a test decides
//! exactly what the page's first and later fetches see. The shedding test runs a real
//! two-peer tier and a synthetic fleet.
//!
//! Chromium: Debian's `chromium` package at /usr/bin/chromium (or `SATMESH_CHROMIUM`). When
//! it is missing the browser test skips loudly, unless `SATMESH_REQUIRE_CHROMIUM=1`, which
//! makes it fail (CI sets it).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use satmesh::shed::ShedRound;
use satmesh::status::{PeerStatus, ShedStatus, StatusDoc, StatusSource, routes};
use satmesh_cluster::{
    BalanceAction, ClusterView, Peer, PeerFacts, PeerId, PeerState, Ring, ShedDecision,
};
use satmesh_tools::load::{self, LoadSpec, Progress};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::support::admin::ready;
use crate::support::processes::{BIN, Proc, free_port, free_udp_port, satmesh_env, sink};

const OAP_A: &str = "10.2.0.1:11800";
const OAP_B: &str = "10.2.0.2:11800";

/// Serves a script of documents: the first call gets the first one, the last one repeats.
#[derive(Default)]
struct Scripted {
    docs: Mutex<VecDeque<StatusDoc>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn set(&self, docs: Vec<StatusDoc>) {
        *self.docs.lock().unwrap() = docs.into();
        self.calls.store(0, Ordering::SeqCst);
    }
}

impl StatusSource for Scripted {
    fn status(&self) -> StatusDoc {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut docs = self.docs.lock().unwrap();
        if docs.len() > 1 {
            docs.pop_front().unwrap()
        } else {
            docs.front().cloned().expect("a scripted document")
        }
    }
}

fn peer(name: &str, live: bool, state: PeerState, connections: u64, digest: u64) -> Peer {
    Peer {
        id: PeerId {
            node_id: name.into(),
            generation: 1_700_000_000_000_000_000,
        },
        gossip_addr: "127.0.0.1:7946".parse().unwrap(),
        facts: PeerFacts {
            grpc_addr: format!("{name}.satmesh:11800"),
            admin_addr: format!("{name}.satmesh:1234"),
            state,
            connections,
            // A draining peer's connections are all draining.
            draining: if state == PeerState::Draining {
                connections
            } else {
                0
            },
            connection_limit: 4000,
            events_per_sec: 250.0,
            oap_health: [(OAP_A.into(), true), (OAP_B.into(), true)].into(),
            ring_digest: digest,
            connections_shed: 0,
            connections_turned_away: 0,
            balance_action: BalanceAction::Balanced,
            fair_share: Some(280.0),
        },
        live,
        heartbeat: 42,
        last_seen_ms_ago: 300,
        is_self: name == "peer-1",
    }
}

/// Three peers (ready, draining, dead) agreeing on a ring of two OAP nodes; peer-1 (this
/// peer) is shedding and has shed twice.
fn first_doc() -> StatusDoc {
    let ring = Ring::new(&[OAP_A, OAP_B]);
    let d = ring.digest();
    let mut shedding = peer("peer-1", true, PeerState::Ready, 812, d);
    shedding.facts.connections_shed = 1234;
    shedding.facts.connections_turned_away = 56;
    shedding.facts.balance_action = BalanceAction::Shedding;
    let view = ClusterView {
        self_id: shedding.id.clone(),
        peers: vec![
            shedding,
            peer("peer-2", true, PeerState::Draining, 37, d),
            peer("peer-3", false, PeerState::Ready, 5, 0xdead),
        ],
    };
    let traffic = [(OAP_A.to_owned(), 1200), (OAP_B.to_owned(), 300)].into();
    let latest = ShedDecision {
        shed: 50,
        turn_away: true,
        mean: Some(280.0),
        hold: None,
    };
    let rounds = vec![
        ShedRound {
            at_ms: 900,
            drained: 50,
            serving: 812,
            mean: 280.0,
        },
        ShedRound {
            at_ms: 0,
            drained: 48,
            serving: 862,
            mean: 280.0,
        },
    ];
    StatusDoc::build(&view, &ring, &traffic, 1_000)
        .with_shedding(ShedStatus::new(Some(&latest), rounds))
}

/// Later: peer-1 took more agents, peer-2 is gone, peer-3 came back on another ring.
fn second_doc() -> StatusDoc {
    let ring = Ring::new(&[OAP_A, OAP_B]);
    let d = ring.digest();
    let view = ClusterView {
        self_id: peer("peer-1", true, PeerState::Ready, 0, d).id,
        peers: vec![
            peer("peer-1", true, PeerState::Ready, 1500, d),
            peer("peer-2", false, PeerState::Draining, 37, d),
            peer("peer-3", true, PeerState::Ready, 99, 0xbeef),
        ],
    };
    let traffic = [(OAP_A.to_owned(), 5000), (OAP_B.to_owned(), 2100)].into();
    StatusDoc::build(&view, &ring, &traffic, 2_000)
}

/// Serves the status routes on 127.0.0.1:0 until the token is dropped.
async fn serve(source: Arc<Scripted>) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(satmesh::admin::serve(
        listener,
        routes(source),
        stop.clone(),
    ));
    (addr, stop.drop_guard())
}

fn scripted(docs: Vec<StatusDoc>) -> Arc<Scripted> {
    let source = Arc::new(Scripted::default());
    source.set(docs);
    source
}

#[tokio::test]
async fn json_is_the_default_and_html_is_for_browsers() {
    let (addr, _stop) = serve(scripted(vec![first_doc()])).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/status");

    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header(&response, "content-type"), "application/json");
    assert_eq!(header(&response, "vary"), "accept");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["self_id"]["node_id"], "peer-1");
    assert_eq!(json["totals"]["peers_live"], 2);
    assert_eq!(json["totals"]["connections"], 812 + 37);
    assert_eq!(json["totals"]["draining"], 37);
    assert_eq!(json["peers"][1]["draining"], 37);
    assert_eq!(json["ring"]["all_live_peers_agree"], true);
    assert_eq!(json["peers"][1]["state"], "draining");
    assert_eq!(json["peers"][2]["live"], false);
    assert_eq!(json["peers"][2]["ring_digest"], "000000000000dead");
    assert_eq!(json["oap"][0]["messages_sent_by_this_peer"], 1200);
    assert_eq!(json["peers"][0]["connections_shed"], 1234);
    assert_eq!(json["peers"][0]["connections_turned_away"], 56);
    assert_eq!(json["peers"][0]["balance_action"], "shedding");
    assert_eq!(json["peers"][0]["fair_share"], 280.0);
    assert_eq!(json["shedding"]["action"], "shedding");
    assert_eq!(json["shedding"]["shed"], 50);
    assert_eq!(json["shedding"]["recent"][0]["drained"], 50);
    let doc: StatusDoc = serde_json::from_value(json).unwrap();
    assert_eq!(doc, first_doc());

    let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let response = client
        .get(&url)
        .header("accept", firefox)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/html"));
    let html = response.text().await.unwrap();
    assert!(html.contains("<script>") && html.contains("<style>"));
    for external in ["src=", "href=", "http://", "https://", "@import"] {
        assert!(!html.contains(external), "page loads {external}");
    }
}

#[tokio::test]
async fn satmesh_status_prints_the_table_or_the_raw_document() {
    let (addr, _stop) = serve(scripted(vec![first_doc()])).await;
    let admin = addr.to_string();

    let out = Command::new(BIN)
        .args(["status", "--admin", &admin])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("peer-1")[..6],
        ["peer-1", "(self)", "ready", "yes", "812/4000", "250.0"]
    );
    assert_eq!(
        row("peer-1")[8..],
        ["1234", "56", "shedding", "(mean", "280.0)"],
        "{stdout}"
    );
    assert_eq!(
        row("peer-2")[..6],
        ["peer-2", "draining", "yes", "37/4000", "(37", "draining)"]
    );
    assert_eq!(row("peer-3")[..3], ["peer-3", "dead", "no"]);
    assert!(
        stdout.contains("totals: 3 peers, 2 live, 1 ready; 849/4000 connections (37 draining)"),
        "{stdout}"
    );
    assert!(stdout.contains("all live peers agree"), "{stdout}");
    assert!(
        stdout.contains(
            "shedding here: shedding (mean 280.0); recent sheds, newest first: \
             -50 (812 left), -48 (862 left)"
        ),
        "{stdout}"
    );

    let out = Command::new(BIN)
        .args(["status", "--json", "--admin", &format!("http://{admin}/")])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: StatusDoc = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc, first_doc());
}

#[tokio::test]
async fn satmesh_status_fails_in_one_line_with_exit_code_1() {
    // A port that was just free: connection refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    // An HTTP server that is not a satmesh admin port: bad JSON.
    let not_status = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let not_status_addr = not_status.local_addr().unwrap();
    let stop = CancellationToken::new();
    let router = axum::Router::new().route("/status", axum::routing::get(|| async { "hello" }));
    tokio::spawn(satmesh::admin::serve(not_status, router, stop.clone()));
    let _stop = stop.drop_guard();

    for (admin, expected) in [
        (closed.to_string(), "cannot connect to"),
        (
            not_status_addr.to_string(),
            "did not return a status document",
        ),
        ("no-port".to_owned(), "invalid admin address"),
    ] {
        let out = Command::new(BIN)
            .args(["status", "--admin", &admin])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{admin}: {stderr}");
        assert!(out.stdout.is_empty(), "{admin}: {out:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{admin}: {stderr}");
        assert!(
            stderr.starts_with("satmesh: ") && stderr.contains(expected),
            "{stderr}"
        );
    }
}

/// The Chromium binary, or None (after a loud message) when it is not installed and not
/// required.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("SATMESH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.exists() {
        return Some(path);
    }
    let required = std::env::var("SATMESH_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "SATMESH_REQUIRE_CHROMIUM=1 but {} is missing: apt-get install -y chromium",
        path.display()
    );
    eprintln!(
        "\n*** SKIPPED: status page browser test: {} is missing (apt-get install -y chromium) ***\n",
        path.display()
    );
    None
}

/// Loads `url` in headless Chromium, lets the page run for `budget_ms` of virtual time
/// (timers fire at once, fetches are waited for) and returns the DOM as HTML.
async fn dump_dom(chromium: &PathBuf, url: &str, budget_ms: u64) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("chromium finished within 60 s")
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// Attributes of every element whose class list holds `class`, in document order.
fn elements(dom: &str, class: &str) -> Vec<BTreeMap<String, String>> {
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        let tag = &rest[start + 1..start + len];
        rest = &rest[start + len..];
        let attrs = attributes(tag);
        if attrs
            .get("class")
            .is_some_and(|c| c.split_whitespace().any(|c| c == class))
        {
            found.push(attrs);
        }
    }
    found
}

/// `name="value"` pairs of one start tag (as Chromium serializes them: double quotes).
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(' ').next().unwrap_or("").to_owned();
        let value_start = eq + 2;
        let Some(value_len) = rest[value_start..].find('"') else {
            break;
        };
        attrs.insert(name, rest[value_start..value_start + value_len].to_owned());
        rest = &rest[value_start + value_len + 1..];
    }
    attrs
}

/// `(node, condition, connections, limit)` of each peer bar.
fn peer_bars(dom: &str) -> Vec<(String, String, u64, u64)> {
    elements(dom, "peer-bar")
        .into_iter()
        .map(|a| {
            (
                a["data-node"].clone(),
                a["data-condition"].clone(),
                a["data-connections"].parse().unwrap(),
                a["data-limit"].parse().unwrap(),
            )
        })
        .collect()
}

/// `(node, messages sent)` of each OAP bar.
fn oap_bars(dom: &str) -> Vec<(String, u64)> {
    elements(dom, "oap-bar")
        .into_iter()
        .map(|a| (a["data-node"].clone(), a["data-sent"].parse().unwrap()))
        .collect()
}

/// `(node, shed, turned away, action)` of each row of the peer table.
fn peer_rows(dom: &str) -> Vec<(String, u64, u64, String)> {
    elements(dom, "peer-row")
        .into_iter()
        .map(|a| {
            (
                a["data-node"].clone(),
                a["data-shed"].parse().unwrap(),
                a["data-turned-away"].parse().unwrap(),
                a["data-action"].clone(),
            )
        })
        .collect()
}

/// `(at_ms, drained, serving)` of each recent shed round listed.
fn shed_rounds(dom: &str) -> Vec<(u64, u64, u64)> {
    elements(dom, "shed-round")
        .into_iter()
        .map(|a| {
            (
                a["data-at"].parse().unwrap(),
                a["data-drained"].parse().unwrap(),
                a["data-serving"].parse().unwrap(),
            )
        })
        .collect()
}

fn ring_agrees(dom: &str) -> Option<String> {
    let start = dom.find("<div id=\"ring\"")?;
    attributes(&dom[start..start + dom[start..].find('>')?]).remove("data-agree")
}

fn refreshes(dom: &str) -> u64 {
    let start = dom.find("<body").expect("a body");
    let tag = &dom[start..start + dom[start..].find('>').unwrap()];
    attributes(tag)["data-refreshes"].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_bars_and_refreshes_itself_in_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let source = scripted(vec![first_doc()]);
    let (addr, _stop) = serve(source.clone()).await;
    let url = format!("http://{addr}/status");
    let s = |v: &str| v.to_owned();

    // First load: the page fetched the document and drew it.
    let dom = dump_dom(&chromium, &url, 1500).await;
    assert_eq!(
        peer_bars(&dom),
        [
            (s("peer-1"), s("ready"), 812, 4000),
            (s("peer-2"), s("draining"), 37, 4000),
            (s("peer-3"), s("dead"), 5, 4000),
        ],
        "{dom}"
    );
    assert_eq!(oap_bars(&dom), [(s(OAP_A), 1200), (s(OAP_B), 300)]);
    assert_eq!(ring_agrees(&dom).as_deref(), Some("true"), "{dom}");
    assert!(dom.contains("812 / 4,000"), "{dom}");
    assert!(dom.contains("37 / 4,000 (37 draining)"), "{dom}");
    assert!(dom.contains("as seen by peer-1"), "{dom}");
    assert_eq!(
        peer_rows(&dom),
        [
            (s("peer-1"), 1234, 56, s("shedding")),
            (s("peer-2"), 0, 0, s("balanced")),
            (s("peer-3"), 0, 0, s("balanced")),
        ],
        "{dom}"
    );
    assert!(dom.contains(r#"<td class="num shed">1,234</td>"#), "{dom}");
    assert!(
        dom.contains(r#"<span class="badge act-shedding">shedding</span><span class="muted sub"> mean 280.0</span>"#),
        "{dom}"
    );
    assert_eq!(shed_rounds(&dom), [(900, 50, 812), (0, 48, 862)], "{dom}");
    assert!(
        dom.contains("Latest decision: shedding (mean 280.0), draining 50 connection(s)"),
        "{dom}"
    );

    // Second load: the page's first fetch gets the old document, the next one (a second
    // later) the new; the page shows the new numbers only if it refreshed itself.
    source.set(vec![first_doc(), second_doc()]);
    let dom = dump_dom(&chromium, &url, 1800).await;
    assert_eq!(
        peer_bars(&dom),
        [
            (s("peer-1"), s("ready"), 1500, 4000),
            (s("peer-2"), s("dead"), 37, 4000),
            (s("peer-3"), s("ready"), 99, 4000),
        ],
        "{dom}"
    );
    assert_eq!(oap_bars(&dom), [(s(OAP_A), 5000), (s(OAP_B), 2100)]);
    assert_eq!(ring_agrees(&dom).as_deref(), Some("false"), "{dom}");
    assert!(dom.contains("Ring NOT agreed"), "{dom}");
    // 3800 messages to OAP_A in the 1 s between the two documents' timestamps.
    assert!(dom.contains("5,000 msgs · 3,800/s"), "{dom}");
    assert!(refreshes(&dom) >= 2, "{dom}");
    assert!(source.calls.load(Ordering::SeqCst) >= 2);
}

/// Starts tier peer `i` of a tier gossiping on `gossip` (every port a seed), with
/// shedding at its defaults.
async fn tier_peer(i: usize, grpc: u16, gossip: &[u16], oaps: &[SocketAddr]) -> Proc {
    let seeds: Vec<String> = gossip.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let (id, listen, glisten) = (
        format!("peer-{i}"),
        format!("127.0.0.1:{grpc}"),
        format!("127.0.0.1:{}", gossip[i]),
    );
    let envs = [
        ("SATMESH__CLUSTER__NODE_ID", id.as_str()),
        ("SATMESH__CLUSTER__GOSSIP_LISTEN", glisten.as_str()),
        ("SATMESH__CLUSTER__SEEDS", &seeds.join(",")),
        ("SATMESH__SERVER__LISTEN", listen.as_str()),
    ];
    satmesh_env(oaps, "", &envs).await
}

async fn status_of(p: &Proc) -> StatusDoc {
    let (code, body) = p.get("/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("a status document")
}

fn peer_in<'a>(doc: &'a StatusDoc, node: &str) -> Option<&'a PeerStatus> {
    doc.peers.iter().find(|p| p.node_id == node)
}

/// The sum of every sample of metric `name` (all label values).
async fn metric_sum(p: &Proc, name: &str) -> f64 {
    let (_, body) = p.get("/metrics").await;
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every agent on peer-0 of a two-peer tier: peer-0 sheds, and the other peer's `/status`
/// (JSON and page) shows it from gossip, as it happens and then equal to peer-0's own
/// counters; peer-0's `/status` lists its recent shed rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_peer_shows_a_shedding_peer_and_it_lists_its_rounds() {
    let oap = sink(&[]).await;
    let oaps = [oap.grpc];
    let grpc: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let gossip: Vec<u16> = (0..2).map(|_| free_udp_port()).collect();
    let targets: Vec<SocketAddr> = grpc
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();

    // peer-0 alone first: every agent of the first-address-first fleet lands on it.
    let shedder = tier_peer(0, grpc[0], &gossip, &oaps).await;
    ready(&shedder).await;
    const AGENTS: usize = 40;
    let stop = CancellationToken::new();
    let _stop_fleet = stop.clone().drop_guard();
    tokio::spawn(load::run(
        LoadSpec {
            targets,
            connections: AGENTS,
            streams_per_connection: 1,
            messages_per_call: 2,
            message_bytes: 100,
            duration: Duration::from_secs(120),
            max_messages: None,
            call_interval: Duration::from_millis(200),
            ..LoadSpec::default()
        },
        Arc::new(Progress::default()),
        stop,
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while shedder.metric("satmesh_agent_connections").await < AGENTS as f64 {
        assert!(Instant::now() < deadline, "the fleet never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // peer-1 joins with no agent: peer-0 is over its share and sheds towards it.
    let other = tier_peer(1, grpc[1], &gossip, &oaps).await;
    let started = Instant::now();
    let mut seen_shedding = false;
    let (shed, turned_away) = loop {
        let doc = status_of(&other).await;
        let shed_metric = shedder
            .metric("satmesh_connections_drained_total{reason=\"shed\"}")
            .await;
        let turned_away_metric =
            metric_sum(&shedder, "satmesh_connections_turned_away_total").await;
        if let Some(p0) = peer_in(&doc, "peer-0") {
            if p0.balance_action == BalanceAction::Shedding {
                seen_shedding = true;
                assert!(p0.fair_share.is_some_and(|m| m > 0.0), "{p0:?}");
            }
            // Settled: no longer shedding, and gossip caught up with peer-0's counters.
            if seen_shedding
                && p0.balance_action != BalanceAction::Shedding
                && p0.connections_shed > 0
                && p0.connections_shed as f64 == shed_metric
                && p0.connections_turned_away as f64 == turned_away_metric
            {
                break (p0.connections_shed, p0.connections_turned_away);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "peer-1 never showed peer-0 shedding then settled (seen shedding: {seen_shedding}, \
             shed metric {shed_metric}, turned away {turned_away_metric}): {doc:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // peer-0's own document: its latest decision and the rounds it shed in.
    let own = status_of(&shedder).await;
    let s = &own.shedding;
    assert!(s.enabled, "{s:?}");
    assert!(!s.recent.is_empty(), "{s:?}");
    assert!(s.recent.len() <= satmesh::shed::ShedHistory::CAPACITY);
    assert!(
        s.recent.windows(2).all(|w| w[0].at_ms >= w[1].at_ms),
        "newest first: {s:?}"
    );
    let drained: usize = s.recent.iter().map(|r| r.drained).sum();
    assert!(drained > 0, "{s:?}");
    if s.recent.len() < satmesh::shed::ShedHistory::CAPACITY {
        // Every round is still listed: they add up to the total.
        assert_eq!(drained as u64, shed, "{s:?}");
    }
    for r in &s.recent {
        assert!(r.serving < AGENTS && r.mean > 0.0, "{r:?}");
        assert!(r.at_ms <= own.generated_at_ms, "{r:?}");
    }
    let me = peer_in(&own, "peer-0").expect("peer-0 in its own view");
    assert_eq!(me.balance_action, s.action);

    // The pages: peer-1 shows peer-0's shed column; peer-0 lists its rounds.
    let Some(chromium) = chromium() else {
        return;
    };
    let dom = dump_dom(&chromium, &format!("http://{}/status", other.admin), 1500).await;
    let rows = peer_rows(&dom);
    let p0 = rows
        .iter()
        .find(|r| r.0 == "peer-0")
        .unwrap_or_else(|| panic!("no row for peer-0: {dom}"));
    assert_eq!((p0.1, p0.2), (shed, turned_away), "{dom}");
    assert!(
        dom.contains(&format!(r#"<td class="num shed">{shed}</td>"#)),
        "{dom}"
    );
    let dom = dump_dom(&chromium, &format!("http://{}/status", shedder.admin), 1500).await;
    let listed = shed_rounds(&dom);
    assert!(!listed.is_empty(), "{dom}");
    assert!(listed.iter().any(|r| r.1 > 0), "{dom}");
}
