//! The status page: one self-contained HTML file (inline CSS and JS, no external
//! resources), served on `/status` to browsers. It fetches `/status` as JSON every
//! second and draws connections per peer against each limit, messages sent per OAP node,
//! the ring agreement, each peer's state, shed and turned-away totals and balance action,
//! and this peer's recent shed rounds.
//!
//! The page lives in `page.html` next to this file so it can be edited as HTML. Elements
//! tests look for: `.peer-bar[data-node][data-connections][data-limit][data-condition]`,
//! `.oap-bar[data-node][data-sent]`, `#ring[data-agree]`, `body[data-refreshes]`,
//! `.peer-row[data-node][data-shed][data-turned-away][data-action]`, `#decision[data-action]`,
//! `.shed-round[data-at][data-drained][data-serving][data-mean]`.

/// The whole page.
pub const PAGE: &str = include_str!("page.html");
