//! Kubernetes discovery against recorded API responses: `kubernetes::run` drives a real
//! `kube::Client` whose transport is a tower-test mock, and the test plays the API server
//! with the recordings under tests/fixtures/kubernetes/ (an EndpointSliceList, watch
//! events as newline-delimited JSON, Status errors). Time is paused, so the retry
//! backoff passes at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::client::Body;
use satmesh::config::{Config, KubernetesPort};
use satmesh::metrics::Metrics;
use satmesh::upstream::conn::ConnectSettings;
use satmesh::upstream::kubernetes::{self, KubernetesSource};
use satmesh::upstream::{Health, Pool, discovery};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_test::mock;

type ResponseBody = BoxBody<Bytes, std::io::Error>;
type Respond = mock::SendResponse<Response<ResponseBody>>;

const SLICES_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/skywalking/endpointslices";
const SELECTOR: &str = "kubernetes.io/service-name=oap";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes");
    std::fs::read_to_string(path.join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The recorded watch events, one JSON line each, newline kept.
fn watch_events() -> Vec<String> {
    fixture("watch-events.jsonl")
        .lines()
        .map(|l| format!("{l}\n"))
        .collect()
}

fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// A whole JSON answer, as a list or a Status error comes.
fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap()
}

/// A watch answer whose events the test sends one at a time; dropping the sender ends
/// the response, as the API server does when a watch times out.
fn watch_stream() -> (mpsc::UnboundedSender<String>, Response<ResponseBody>) {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok(Frame::data(Bytes::from(line))), rx))
    });
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(frames).boxed())
        .unwrap();
    (tx, response)
}

/// The test's side of the API server, and the discovery task under test.
struct Harness {
    api: mock::Handle<Request<Body>, Response<ResponseBody>>,
    pods: watch::Receiver<BTreeSet<SocketAddr>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    fn start(port: KubernetesPort) -> Harness {
        let (service, api) = mock::pair::<Request<Body>, Response<ResponseBody>>();
        let client = kube::Client::new(service, "default");
        let source = KubernetesSource {
            namespace: "skywalking".into(),
            label_selector: SELECTOR.into(),
            port,
        };
        let (tx, pods) = watch::channel(BTreeSet::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(kubernetes::run(client, source, tx, stop.clone()));
        Harness {
            api,
            pods,
            stop,
            task,
        }
    }

    /// The next request the client sends, with its decoded query, and the means to answer.
    async fn request(&mut self) -> (Request<Body>, HashMap<String, String>, Respond) {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(600), self.api.next_request())
                .await
                .expect("the client sends another request")
                .expect("the client is alive");
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(request.uri().path(), SLICES_PATH, "{}", request.uri());
        let query = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect::<HashMap<_, _>>();
        assert_eq!(
            query.get("labelSelector").map(String::as_str),
            Some(SELECTOR),
            "{}",
            request.uri()
        );
        (request, query, respond)
    }

    /// A list request (not a watch), answered with `response`.
    async fn expect_list(&mut self, response: Response<ResponseBody>) {
        let (request, query, respond) = self.request().await;
        assert!(
            !query.contains_key("watch"),
            "expected a list: {}",
            request.uri()
        );
        respond.send_response(response);
    }

    /// A watch request from `resource_version`, answered with `response`.
    async fn expect_watch(&mut self, resource_version: &str, response: Response<ResponseBody>) {
        let (request, query, respond) = self.request().await;
        assert_eq!(
            query.get("watch").map(String::as_str),
            Some("true"),
            "{}",
            request.uri()
        );
        assert_eq!(
            query.get("resourceVersion").map(String::as_str),
            Some(resource_version),
            "{}",
            request.uri()
        );
        respond.send_response(response);
    }

    /// The set after its next change.
    async fn next_set(&mut self) -> BTreeSet<SocketAddr> {
        tokio::time::timeout(Duration::from_secs(600), self.pods.changed())
            .await
            .expect("the set changes")
            .expect("discovery is alive");
        self.pods.borrow_and_update().clone()
    }

    /// Stops discovery and checks it ends.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("discovery stops when told")
            .unwrap();
    }
}

fn recorded_ready() -> BTreeSet<SocketAddr> {
    addrs(&[
        "10.244.1.17:11800",
        "10.244.2.31:11800",
        "[fd00:10:244:1::11]:11800",
        "[fd00:10:244:2::1f]:11800",
    ])
}

#[tokio::test(start_paused = true)]
async fn the_initial_list_gives_the_ready_addresses_of_the_namespace_and_selector() {
    let mut h = Harness::start(KubernetesPort::Name("grpc".into()));
    // The list: the namespace in the path, the selector in the query (checked by `request`).
    h.expect_list(json(StatusCode::OK, fixture("endpointslices-list.json")))
        .await;
    // oap-2 (not ready) and the terminating pod are left out; IPv6 is kept.
    assert_eq!(h.next_set().await, recorded_ready());
    // Then a watch from the list's resourceVersion.
    let (_events, response) = watch_stream();
    h.expect_watch("48213", response).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_port_number_is_used_for_every_endpoint() {
    let mut h = Harness::start(KubernetesPort::Number(11900));
    h.expect_list(json(StatusCode::OK, fixture("endpointslices-list.json")))
        .await;
    let set = h.next_set().await;
    let expected: BTreeSet<SocketAddr> = recorded_ready()
        .into_iter()
        .map(|a| SocketAddr::new(a.ip(), 11900))
        .collect();
    assert_eq!(set, expected);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn watch_events_follow_readiness_and_slices() {
    let mut h = Harness::start(KubernetesPort::Name("grpc".into()));
    h.expect_list(json(StatusCode::OK, fixture("endpointslices-list.json")))
        .await;
    assert_eq!(h.next_set().await, recorded_ready());
    let (events, response) = watch_stream();
    h.expect_watch("48213", response).await;
    let [modified, bookmark, added, deleted] = <[String; 4]>::try_from(watch_events()).unwrap();

    // MODIFIED: oap-1 fails its readiness probe and leaves.
    events.send(modified).unwrap();
    let mut expected = recorded_ready();
    expected.remove(&"10.244.2.31:11800".parse().unwrap());
    assert_eq!(h.next_set().await, expected);

    // A BOOKMARK changes nothing; ADDED: a new slice brings two pods.
    events.send(bookmark).unwrap();
    events.send(added).unwrap();
    expected.extend(addrs(&["10.244.4.12:11800", "10.244.5.9:11800"]));
    assert_eq!(h.next_set().await, expected);

    // DELETED: the IPv6 slice goes, and its addresses with it.
    events.send(deleted).unwrap();
    expected.retain(SocketAddr::is_ipv4);
    assert_eq!(h.next_set().await, expected);

    // The watch ends (the server's timeout): it resumes from the last event seen.
    drop(events);
    let (_events, response) = watch_stream();
    h.expect_watch("48290", response).await;
    assert!(!h.pods.has_changed().unwrap());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn api_errors_keep_the_last_set_until_a_list_succeeds() {
    let mut h = Harness::start(KubernetesPort::Name("grpc".into()));
    h.expect_list(json(StatusCode::OK, fixture("endpointslices-list.json")))
        .await;
    let before = h.next_set().await;
    assert_eq!(before, recorded_ready());

    // The watch's resourceVersion has expired: 410 Gone as a watch ERROR event.
    let (gone, response) = watch_stream();
    h.expect_watch("48213", response).await;
    gone.send(fixture("watch-gone.jsonl")).unwrap();

    // The re-list fails twice: an etcd timeout, then a dropped connection.
    h.expect_list(json(
        StatusCode::INTERNAL_SERVER_ERROR,
        fixture("status-500.json"),
    ))
    .await;
    let (_, _, respond) = h.request().await;
    respond.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    ));
    // Nothing was sent meanwhile: the pool still has every OAP it had.
    assert!(!h.pods.has_changed().unwrap());
    assert_eq!(*h.pods.borrow(), before);

    // The list that succeeds replaces the set whole.
    h.expect_list(json(StatusCode::OK, fixture("endpointslices-relist.json")))
        .await;
    assert_eq!(
        h.next_set().await,
        addrs(&["10.244.1.17:11800", "10.244.2.31:11800", "10.244.5.9:11800"])
    );
    let (_events, response) = watch_stream();
    h.expect_watch("48400", response).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_forbidden_list_is_retried_with_a_growing_backoff() {
    let mut h = Harness::start(KubernetesPort::Name("grpc".into()));
    let mut asked = Vec::new();
    for _ in 0..4 {
        let (_, _, respond) = h.request().await;
        asked.push(Instant::now());
        respond.send_response(json(StatusCode::FORBIDDEN, fixture("status-403.json")));
    }
    // 1s, 2s, 4s, each +-20 %.
    let gaps: Vec<Duration> = asked.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, base) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        let secs = gap.as_secs_f64();
        assert!(
            (base * 0.8..=base * 1.2 + 0.01).contains(&secs),
            "gaps {gaps:?}"
        );
    }
    assert!(h.pods.borrow().is_empty());
    assert!(!h.pods.has_changed().unwrap());
    // Stopping works during a backoff too.
    h.stop().await;
}

/// Discovery joins the pods with the static nodes and follows the pods as they change.
/// The addresses are on loopback: the pool's connection managers only meet refusals.
#[tokio::test]
async fn discovery_joins_the_pods_with_the_static_nodes() {
    let pool = Pool::new(
        ConnectSettings {
            connect_timeout: Duration::from_millis(200),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5),
        },
        Health {
            eject_after: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5),
        },
        Arc::new(Metrics::new()),
        tokio_util::task::TaskTracker::new(),
    );
    let weights = BTreeMap::from([("127.0.0.2:1".to_owned(), 3), ("127.0.0.1:1".to_owned(), 2)]);
    let sources = discovery::sources(&["127.0.0.1:1".to_owned()], None, &weights);
    let (tx, rx) = watch::channel(addrs(&["127.0.0.1:1", "127.0.0.2:1"]));
    let stop = CancellationToken::new();
    let mut changed = pool.subscribe();
    let task = tokio::spawn(discovery::run(
        pool.clone(),
        sources,
        weights,
        Duration::from_secs(3600),
        Some(rx),
        stop.clone(),
    ));
    let members = |pool: &Pool| -> BTreeMap<SocketAddr, u32> {
        pool.nodes().iter().map(|n| (n.addr, n.weight)).collect()
    };
    let mut wait_for = async |expected: BTreeMap<SocketAddr, u32>| {
        tokio::time::timeout(Duration::from_secs(10), async {
            while members(&pool) != expected {
                changed.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("pool {:?}, expected {expected:?}", members(&pool)));
    };
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();

    // A pod that is also a static node keeps its static weight.
    wait_for(BTreeMap::from([
        (a("127.0.0.1:1"), 2),
        (a("127.0.0.2:1"), 3),
    ]))
    .await;
    tx.send(addrs(&["127.0.0.2:1", "127.0.0.3:1"])).unwrap();
    wait_for(BTreeMap::from([
        (a("127.0.0.1:1"), 2),
        (a("127.0.0.2:1"), 3),
        (a("127.0.0.3:1"), 1),
    ]))
    .await;
    // No pods: the static node stays.
    tx.send(BTreeSet::new()).unwrap();
    wait_for(BTreeMap::from([(a("127.0.0.1:1"), 2)])).await;
    // The Kubernetes side going away leaves the last set in place.
    tx.send(addrs(&["127.0.0.4:1"])).unwrap();
    wait_for(BTreeMap::from([
        (a("127.0.0.1:1"), 2),
        (a("127.0.0.4:1"), 1),
    ]))
    .await;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        members(&pool),
        BTreeMap::from([(a("127.0.0.1:1"), 2), (a("127.0.0.4:1"), 1)])
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    pool.close();
}

/// `upstream.kubernetes` in config: defaults, the port as number or name, errors naming
/// the key.
#[test]
fn config_section() {
    let load = |yaml: &str, env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(Some(&path), Some(env))
    };

    let c = load(
        "upstream:\n  kubernetes:\n    label_selector: kubernetes.io/service-name=oap\n",
        &[],
    )
    .unwrap();
    let k = c.upstream.kubernetes.as_ref().unwrap();
    assert_eq!(k.namespace, None);
    assert_eq!(k.label_selector, SELECTOR);
    assert_eq!(k.port, KubernetesPort::Number(11800));
    // The section alone is enough OAP for `run`.
    c.require_upstream().unwrap();
    assert!(Config::default().upstream.kubernetes.is_none());

    let c = load(
        "upstream:\n  kubernetes:\n    namespace: observability\n    label_selector: app=oap\n    port: grpc\n",
        &[],
    )
    .unwrap();
    let k = c.upstream.kubernetes.unwrap();
    assert_eq!(k.namespace.as_deref(), Some("observability"));
    assert_eq!(k.port, KubernetesPort::Name("grpc".into()));

    // From the environment; a selector with commas stays one string, a quoted number is a number.
    let c = load(
        "",
        &[
            (
                "SATMESH__UPSTREAM__KUBERNETES__LABEL_SELECTOR",
                "app=oap,tier in (a,b)",
            ),
            ("SATMESH__UPSTREAM__KUBERNETES__PORT", "11801"),
        ],
    )
    .unwrap();
    let k = c.upstream.kubernetes.unwrap();
    assert_eq!(k.label_selector, "app=oap,tier in (a,b)");
    assert_eq!(k.port, KubernetesPort::Number(11801));
    let c = load(
        "upstream:\n  kubernetes:\n    label_selector: a=b\n    port: \"12800\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.upstream.kubernetes.unwrap().port,
        KubernetesPort::Number(12800)
    );

    let error = |yaml: &str| load(yaml, &[]).unwrap_err().to_string();
    let e = error("upstream:\n  kubernetes:\n    namespace: x\n");
    assert!(e.contains("upstream.kubernetes.label_selector"), "{e}");
    let e = error("upstream:\n  kubernetes:\n    label_selector: a=b\n    port: 0\n");
    assert!(e.contains("upstream.kubernetes.port"), "{e}");
    let e = error("upstream:\n  kubernetes:\n    label_selector: a=b\n    port: 70000\n");
    assert!(e.contains("port"), "{e}");
    let e = error("upstream:\n  kubernetes:\n    label_selector: a=b\n    port: GRPC_Port\n");
    assert!(e.contains("upstream.kubernetes.port"), "{e}");
    let e =
        error("upstream:\n  kubernetes:\n    label_selector: a=b\n    namespace: Sky_Walking\n");
    assert!(e.contains("upstream.kubernetes.namespace"), "{e}");
    let e = error("upstream:\n  kubernetes:\n    label_selectr: a=b\n");
    assert!(e.contains("label_selectr"), "{e}");
}
