//! `satmesh status`: fetches `/status` from a peer's admin port and prints the tier as a
//! table, or the raw document with `--json`.

use std::time::Duration;

use bytes::Bytes;

use super::doc::{PeerStatus, ShedStatus, StatusDoc};
use crate::http1::RequestError;

/// How long `satmesh status` waits for a peer, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A status document is a few KiB per peer; anything this large is not one.
const MAX_BODY_BYTES: usize = 16 << 20;

/// Why `satmesh status` printed nothing. Every variant is safe to retry. Causes are
/// `source()`s: print with `{:#}` (anyhow) to get one line with the cause.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid admin address {0:?}: expected host:port or http://host:port")]
    Address(String),
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("http error talking to {addr}")]
    Http {
        addr: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("http://{addr}/status answered {status}")]
    Status {
        addr: String,
        status: hyper::StatusCode,
    },
    #[error("http://{addr}/status did not return a status document")]
    Json {
        addr: String,
        source: serde_json::Error,
    },
}

/// What `satmesh status --admin <admin> [--json]` prints.
pub async fn run(admin: &str, json: bool) -> Result<String, FetchError> {
    let addr = parse_admin(admin)?;
    let body = tokio::time::timeout(FETCH_TIMEOUT, get_status(&addr))
        .await
        .map_err(|_| FetchError::Timeout {
            addr: addr.clone(),
            timeout: FETCH_TIMEOUT,
        })??;
    // Parsed even for --json, so a wrong port fails the same way in both modes.
    let doc: StatusDoc = serde_json::from_slice(&body).map_err(|source| FetchError::Json {
        addr: addr.clone(),
        source,
    })?;
    if json {
        Ok(String::from_utf8_lossy(&body).trim_end().to_owned())
    } else {
        Ok(render_table(&doc))
    }
}

/// `host:port` from `host:port`, `http://host:port` or `http://host:port/`.
fn parse_admin(admin: &str) -> Result<String, FetchError> {
    let bare = admin.strip_prefix("http://").unwrap_or(admin);
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    let valid = !bare.is_empty()
        && !bare.contains('/')
        && bare
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(bare.to_owned())
    } else {
        Err(FetchError::Address(admin.to_owned()))
    }
}

/// The body of `GET /status` (JSON asked for), over one HTTP/1.1 connection.
async fn get_status(addr: &str) -> Result<Bytes, FetchError> {
    let (status, body) = crate::http1::request(
        addr,
        hyper::Method::GET,
        "/status",
        Some("application/json"),
        MAX_BODY_BYTES,
    )
    .await
    .map_err(|e| match e {
        RequestError::Connect(source) => FetchError::Connect {
            addr: addr.to_owned(),
            source,
        },
        RequestError::Http(source) => FetchError::Http {
            addr: addr.to_owned(),
            source,
        },
    })?;
    if !status.is_success() {
        return Err(FetchError::Status {
            addr: addr.to_owned(),
            status,
        });
    }
    Ok(body)
}

/// The tier as text: one row per peer, then totals, the ring and the OAP nodes.
pub fn render_table(doc: &StatusDoc) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let peers: Vec<Vec<String>> = doc
        .peers
        .iter()
        .map(|p| {
            let name = if p.is_self {
                format!("{} (self)", p.node_id)
            } else {
                p.node_id.clone()
            };
            let agree = if p.live {
                yes_no(p.same_ring_as_self)
            } else {
                "-"
            };
            vec![
                name,
                p.condition().to_owned(),
                yes_no(p.live).to_owned(),
                connections(p),
                format!("{:.1}", p.events_per_sec),
                p.ring_digest.clone(),
                agree.to_owned(),
                p.connections_shed.to_string(),
                p.connections_turned_away.to_string(),
                action(p.balance_action.as_str(), p.fair_share),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "PEER",
            "STATE",
            "LIVE",
            "CONNECTIONS",
            "EVENTS/S",
            "RING DIGEST",
            "AGREE",
            "SHED",
            "TURNED AWAY",
            "ACTION",
        ],
        &[
            false, false, false, true, true, false, false, true, true, false,
        ],
        &peers,
    );

    let t = &doc.totals;
    let draining = match t.draining {
        0 => String::new(),
        n => format!(" ({n} draining)"),
    };
    out.push_str(&format!(
        "totals: {} peers, {} live, {} ready; {}/{} connections{draining}; {:.1} events/s\n",
        t.peers, t.peers_live, t.peers_ready, t.connections, t.connection_limit, t.events_per_sec
    ));
    let r = &doc.ring;
    let members = if r.members.is_empty() {
        "none, round-robin".to_owned()
    } else {
        r.members.join(", ")
    };
    let agreement = if r.all_live_peers_agree {
        "all live peers agree".to_owned()
    } else {
        let groups: Vec<String> = r
            .live_digests
            .iter()
            .map(|(digest, peers)| format!("{digest}: {}", peers.join(" ")))
            .collect();
        format!("LIVE PEERS DISAGREE ({})", groups.join("; "))
    };
    out.push_str(&format!(
        "ring: digest {}, {} OAP nodes ({members}); {agreement}\n",
        r.digest,
        r.members.len()
    ));
    out.push_str(&shedding_line(&doc.shedding));

    if !doc.oap.is_empty() {
        let oap: Vec<Vec<String>> = doc
            .oap
            .iter()
            .map(|o| {
                vec![
                    o.node.clone(),
                    yes_no(o.on_ring).to_owned(),
                    o.healthy_in_this_peer_view.map_or("?", yes_no).to_owned(),
                    format!("{}/{}", o.healthy_votes, o.voters),
                    o.messages_sent_by_this_peer.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["OAP NODE", "ON RING", "HEALTHY HERE", "VOTES", "SENT HERE"],
            &[false, false, false, true, true],
            &oap,
        ));
    }
    out.trim_end().to_owned()
}

/// A peer's open connections of its limit, with the draining ones when there are any:
/// `412/4000 (9 draining)`.
fn connections(p: &PeerStatus) -> String {
    let open = format!("{}/{}", p.connections, p.connection_limit);
    match p.draining {
        0 => open,
        n => format!("{open} ({n} draining)"),
    }
}

/// A peer's balance action with the fair share it acted on: `shedding (mean 33.3)`.
fn action(action: &str, mean: Option<f64>) -> String {
    match (action, mean) {
        ("", _) => "-".to_owned(),
        (action, Some(mean)) => format!("{action} (mean {mean:.1})"),
        (action, None) => action.to_owned(),
    }
}

/// How many recent shed rounds `satmesh status` lists.
const ROUNDS_SHOWN: usize = 5;

/// This peer's shedder: its latest action and its last few shed rounds, newest first.
fn shedding_line(s: &ShedStatus) -> String {
    let mut line = format!("shedding here: {}", action(s.action.as_str(), s.mean));
    if s.recent.is_empty() {
        line.push_str("; no recent sheds");
    } else {
        let rounds: Vec<String> = s
            .recent
            .iter()
            .take(ROUNDS_SHOWN)
            .map(|r| format!("-{} ({} left)", r.drained, r.serving))
            .collect();
        let more = s.recent.len().saturating_sub(ROUNDS_SHOWN);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        line.push_str(&format!(
            "; recent sheds, newest first: {}{more}",
            rounds.join(", ")
        ));
    }
    line.push('\n');
    line
}

/// Columns padded to their widest cell, two spaces apart; `right[i]` right-aligns column i.
fn table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(right)
            .map(|((cell, &w), &right)| {
                if right {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use satmesh_cluster::{BalanceAction, PeerId, PeerState};

    use super::*;
    use crate::status::doc::{OapStatus, RingStatus, Totals};

    fn peer(name: &str, live: bool, state: PeerState, connections: u64, same: bool) -> PeerStatus {
        PeerStatus {
            node_id: name.into(),
            generation: 1,
            is_self: name == "a",
            gossip_addr: "127.0.0.1:7946".into(),
            grpc_addr: "127.0.0.1:11800".into(),
            admin_addr: "127.0.0.1:1234".into(),
            state,
            live,
            connections,
            // A draining peer's connections are all draining.
            draining: if state == PeerState::Draining {
                connections
            } else {
                0
            },
            connection_limit: 4000,
            events_per_sec: 1520.25,
            oap_view: BTreeMap::new(),
            ring_digest: if same {
                "00000000000000aa"
            } else {
                "00000000000000bb"
            }
            .into(),
            same_ring_as_self: same,
            heartbeat: 9,
            last_seen_ms_ago: 100,
            connections_shed: connections / 10,
            connections_turned_away: connections / 100,
            balance_action: if live {
                BalanceAction::Balanced
            } else {
                BalanceAction::Unknown
            },
            fair_share: live.then_some(409.5),
        }
    }

    fn doc(agree: bool) -> StatusDoc {
        StatusDoc {
            generated_at_ms: 0,
            self_id: PeerId {
                node_id: "a".into(),
                generation: 1,
            },
            peers: vec![
                peer("a", true, PeerState::Ready, 812, true),
                peer("bb", true, PeerState::Draining, 7, agree),
                peer("c", false, PeerState::Ready, 0, false),
            ],
            totals: Totals {
                peers: 3,
                peers_live: 2,
                peers_ready: 1,
                connections: 819,
                draining: 7,
                connection_limit: 4000,
                events_per_sec: 3040.5,
            },
            ring: RingStatus {
                members: vec!["10.2.0.1:11800".into()],
                digest: "00000000000000aa".into(),
                all_live_peers_agree: agree,
                live_digests: if agree {
                    [("00000000000000aa".into(), vec!["a".into(), "bb".into()])].into()
                } else {
                    [
                        ("00000000000000aa".into(), vec!["a".into()]),
                        ("00000000000000bb".into(), vec!["bb".into()]),
                    ]
                    .into()
                },
            },
            oap: vec![OapStatus {
                node: "10.2.0.1:11800".into(),
                on_ring: true,
                healthy_in_this_peer_view: Some(true),
                healthy_votes: 1,
                voters: 1,
                messages_sent_by_this_peer: 123456,
            }],
            shedding: ShedStatus::default(),
        }
    }

    #[test]
    fn table_has_one_aligned_row_per_peer_then_totals_ring_and_oap() {
        let text = render_table(&doc(true));
        let expected = "\
PEER      STATE     LIVE          CONNECTIONS  EVENTS/S  RING DIGEST       AGREE  SHED  TURNED AWAY  ACTION
a (self)  ready     yes              812/4000    1520.2  00000000000000aa  yes      81            8  balanced (mean 409.5)
bb        draining  yes   7/4000 (7 draining)    1520.2  00000000000000aa  yes       0            0  balanced (mean 409.5)
c         dead      no                 0/4000    1520.2  00000000000000bb  -         0            0  -
totals: 3 peers, 2 live, 1 ready; 819/4000 connections (7 draining); 3040.5 events/s
ring: digest 00000000000000aa, 1 OAP nodes (10.2.0.1:11800); all live peers agree
shedding here: -; no recent sheds

OAP NODE        ON RING  HEALTHY HERE  VOTES  SENT HERE
10.2.0.1:11800  yes      yes             1/1     123456";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn disagreement_is_spelled_out() {
        let text = render_table(&doc(false));
        assert!(
            text.contains("LIVE PEERS DISAGREE (00000000000000aa: a; 00000000000000bb: bb)"),
            "{text}"
        );
        let bb = text.lines().find(|l| l.starts_with("bb ")).unwrap();
        assert!(bb.contains("  no  "), "{bb}");
    }

    #[test]
    fn this_peers_recent_sheds_are_listed_newest_first() {
        let mut d = doc(true);
        d.shedding = ShedStatus {
            enabled: true,
            action: BalanceAction::Shedding,
            shed: 9,
            turn_away: true,
            mean: Some(100.0),
            hold: None,
            recent: (0..7)
                .map(|i| crate::shed::ShedRound {
                    at_ms: 1000 - i,
                    drained: 9 - i as usize,
                    serving: 150 - i as usize,
                    mean: 100.0,
                })
                .collect(),
        };
        let text = render_table(&d);
        assert!(
            text.contains(
                "shedding here: shedding (mean 100.0); recent sheds, newest first: \
                 -9 (150 left), -8 (149 left), -7 (148 left), -6 (147 left), -5 (146 left) \
                 and 2 more"
            ),
            "{text}"
        );
    }

    #[test]
    fn admin_addresses() {
        assert_eq!(parse_admin("127.0.0.1:1234").unwrap(), "127.0.0.1:1234");
        assert_eq!(parse_admin("http://peer-0:1234/").unwrap(), "peer-0:1234");
        assert_eq!(parse_admin("[::1]:1234").unwrap(), "[::1]:1234");
        for bad in [
            "",
            "peer-0",
            "https://peer-0:1234",
            "peer-0:x",
            "h:1/status",
        ] {
            assert!(parse_admin(bad).is_err(), "{bad}");
        }
    }
}
