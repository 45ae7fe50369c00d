//! A tier on loopback: peers that seed each other, and an L4 virtual IP in front of them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::processes::{Proc, satmesh_env};

/// Starts peer `i` of a tier: node id `peer-{i}`, agents on `127.0.0.1:{grpc}`, gossip on
/// `127.0.0.1:{gossip[i]}`, every gossip port as a seed, plus `envs` overrides.
pub async fn tier_peer(
    i: usize,
    grpc: u16,
    gossip: &[u16],
    oaps: &[SocketAddr],
    envs: &[(&str, &str)],
) -> Proc {
    let seeds: Vec<String> = gossip.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let seeds = seeds.join(",");
    let (id, listen, glisten) = (
        format!("peer-{i}"),
        format!("127.0.0.1:{grpc}"),
        format!("127.0.0.1:{}", gossip[i]),
    );
    let mut all = vec![
        ("SATMESH__CLUSTER__NODE_ID", id.as_str()),
        ("SATMESH__CLUSTER__GOSSIP_LISTEN", glisten.as_str()),
        ("SATMESH__CLUSTER__SEEDS", seeds.as_str()),
        ("SATMESH__SERVER__LISTEN", listen.as_str()),
    ];
    all.extend_from_slice(envs);
    satmesh_env(oaps, "", &all).await
}

/// An L4 virtual IP in front of a tier, as a Kubernetes ClusterIP with kube-proxy: each
/// new connection goes to one random *ready* backend, bytes copied both ways. A backend
/// is ready while its `/readyz` answers 200, polled every 100 ms (the endpoints controller
/// and kube-proxy take about a second). Like kube-proxy, a connection whose backend
/// refuses it is closed, not sent to another backend.
pub struct Vip {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<Backend>>>,
}

#[derive(Clone, Copy)]
struct Backend {
    grpc: SocketAddr,
    admin: SocketAddr,
    ready: bool,
}

impl Vip {
    pub async fn start(peers: &[&Proc]) -> Vip {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let vip = Vip {
            addr: listener.local_addr().unwrap(),
            backends: Arc::default(),
        };
        for p in peers {
            vip.add(p);
        }
        let backends = vip.backends.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let ready: Vec<SocketAddr> = lock(&backends)
                    .iter()
                    .filter(|b| b.ready)
                    .map(|b| b.grpc)
                    .collect();
                if ready.is_empty() {
                    continue;
                }
                let pick = ready[rand::random_range(0..ready.len())];
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(pick).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        let backends = Arc::downgrade(&vip.backends);
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap();
            while let Some(backends) = backends.upgrade() {
                let admins: Vec<SocketAddr> = lock(&backends).iter().map(|b| b.admin).collect();
                for admin in admins {
                    let ready = http
                        .get(format!("http://{admin}/readyz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    for b in lock(&backends).iter_mut().filter(|b| b.admin == admin) {
                        b.ready = ready;
                    }
                }
                drop(backends);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        vip
    }

    /// Puts `peer` behind the VIP (it takes connections once its readiness is seen).
    pub fn add(&self, peer: &Proc) {
        lock(&self.backends).push(Backend {
            grpc: peer.grpc,
            admin: peer.admin,
            ready: false,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Each peer's `/status` (its view of the tier and its latest decision), for a failure.
pub async fn statuses(peers: &[Proc]) -> String {
    let mut text = String::new();
    for (i, p) in peers.iter().enumerate() {
        let (code, body) = p.get("/status").await;
        text.push_str(&format!("peer-{i} /status ({code}): {body}\n"));
    }
    text
}
