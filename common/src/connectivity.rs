//! The agent's connectivity state machine: a pure transition function from
//! observations (link status, RTT, time since last contact, backlog) to the
//! seed's seven states, with configurable thresholds.
//!
//! ```text
//!            rtt >= delayed         link lost            no contact >= autonomous_after
//!   live ----------------> delayed ---------> edge-cached ---------------------------> autonomous
//!    ^  <---------------- (rtt < live)                            no contact >= disconnected_after
//!    |                                                          autonomous -----------> disconnected
//!    |   backlog drained              resumed, backlog      connection detected
//!    +------------------- replaying <----------------- returning <------------ (any down state)
//! ```
//!
//! The agent records every transition the function returns as a
//! `connectivity.state_transition` event, so the aggregator's ledger is the
//! node's own account.

use crate::event::ConnectivityTransition;
use crate::model::ConnectivityState;
use crate::time::Span;
use serde::{Deserialize, Serialize};

/// Thresholds of the state machine. Defaults suit a WAN-connected node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// RTT at or above which a connected node is `delayed`.
    pub delayed_rtt_ms: u32,
    /// RTT below which a `delayed` node is `live` again (hysteresis).
    pub live_rtt_ms: u32,
    /// Without contact this long a node is `autonomous` (before: `edge-cached`).
    pub autonomous_after: Span,
    /// Without contact this long a node is `disconnected`.
    pub disconnected_after: Span,
    /// A resumed session with more unacknowledged events than this is
    /// `replaying` until they are drained.
    pub replay_backlog: u64,
    /// The sync interval reported while `edge-cached` (how often the agent
    /// tries the link at most).
    pub edge_sync_interval: Span,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            delayed_rtt_ms: 1_000,
            live_rtt_ms: 500,
            autonomous_after: Span::from_mins(5),
            disconnected_after: Span::from_secs(24 * 3_600),
            replay_backlog: 0,
            edge_sync_interval: Span::from_mins(15),
        }
    }
}

/// The state of the uplink as the agent's driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// No connection.
    Down,
    /// A connection is being set up (QUIC handshake, Hello sent).
    Connecting,
    /// The aggregator answered `Resume`: the session streams.
    Up,
}

/// What the agent observes at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub link: Link,
    /// Last measured round-trip time, if any.
    pub rtt_ms: Option<u32>,
    /// Time since the aggregator was last heard from (or since the agent
    /// started, if never).
    pub since_contact: Span,
    /// Events recorded and not yet acknowledged.
    pub backlog: u64,
}

/// The state the observation calls for while the link is down.
fn down_state(since_contact: Span, th: &Thresholds) -> ConnectivityState {
    if since_contact >= th.disconnected_after {
        ConnectivityState::Disconnected
    } else if since_contact >= th.autonomous_after {
        ConnectivityState::Autonomous
    } else {
        ConnectivityState::EdgeCached
    }
}

fn is_down(state: ConnectivityState) -> bool {
    matches!(
        state,
        ConnectivityState::EdgeCached
            | ConnectivityState::Autonomous
            | ConnectivityState::Disconnected
    )
}

/// The transition the observation calls for from `current`, or `None` to
/// stay. Pure: same inputs, same answer.
pub fn next_state(
    current: ConnectivityState,
    obs: &Observation,
    th: &Thresholds,
) -> Option<ConnectivityTransition> {
    use ConnectivityState as S;
    let to = |to: S, reason: Option<&str>| ConnectivityTransition {
        from: current,
        to,
        reason: reason.map(str::to_owned),
        latency_ms: None,
        backlog: None,
        sync_interval: None,
    };
    match obs.link {
        Link::Down => {
            let target = down_state(obs.since_contact, th);
            // Down states only get worse while the link stays down, except
            // that `disconnected` with recent contact (a node just
            // provisioned, or one that was reached since) takes the state the
            // time since contact calls for.
            let improving = is_down(current) && target < current;
            if current == target || (improving && current != S::Disconnected) {
                return None;
            }
            let reason = match target {
                S::EdgeCached => "link_lost",
                S::Autonomous => "connection_lost",
                _ => "no_contact",
            };
            let mut t = to(target, Some(reason));
            if target == S::EdgeCached {
                t.sync_interval = Some(th.edge_sync_interval);
            }
            Some(t)
        }
        Link::Connecting => {
            (is_down(current)).then(|| to(S::Returning, Some("connection_detected")))
        }
        Link::Up => {
            let resuming = current == S::Replaying || is_down(current) || current == S::Returning;
            if resuming && obs.backlog > th.replay_backlog {
                if current == S::Replaying {
                    return None;
                }
                let mut t = to(S::Replaying, None);
                t.backlog = Some(obs.backlog);
                return Some(t);
            }
            let rtt = obs.rtt_ms.unwrap_or(0);
            let target = match current {
                S::Delayed if rtt >= th.live_rtt_ms => S::Delayed,
                _ if rtt >= th.delayed_rtt_ms => S::Delayed,
                _ => S::Live,
            };
            if current == target {
                return None;
            }
            let mut t = to(
                target,
                match (current, target) {
                    (S::Replaying, S::Live) => Some("replay_completed"),
                    (_, S::Delayed) => Some("high_latency"),
                    _ => Some("connectivity_restored"),
                },
            );
            t.latency_ms = obs.rtt_ms;
            Some(t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectivityState as S;

    fn obs(link: Link, rtt: Option<u32>, since: u64, backlog: u64) -> Observation {
        Observation {
            link,
            rtt_ms: rtt,
            since_contact: Span::from_secs(since),
            backlog,
        }
    }

    /// Runs observations through the machine and returns the states entered.
    fn run(start: S, steps: &[Observation]) -> Vec<S> {
        let th = Thresholds::default();
        let mut state = start;
        let mut out = Vec::new();
        for o in steps {
            if let Some(t) = next_state(state, o, &th) {
                assert_eq!(t.from, state);
                state = t.to;
                out.push(state);
            }
        }
        out
    }

    #[test]
    fn the_seed_ledger_sequence_follows_from_observations() {
        let states = run(
            S::Live,
            &[
                obs(Link::Up, Some(45), 0, 0),
                obs(Link::Up, Some(5_000), 0, 0),
                obs(Link::Down, None, 10, 3),
                obs(Link::Down, None, 400, 50),
                obs(Link::Connecting, None, 4 * 3_600, 1_247),
                obs(Link::Up, Some(60), 0, 1_247),
                obs(Link::Up, Some(50), 0, 600),
                obs(Link::Up, Some(50), 0, 0),
            ],
        );
        assert_eq!(
            states,
            vec![
                S::Delayed,
                S::EdgeCached,
                S::Autonomous,
                S::Returning,
                S::Replaying,
                S::Live
            ]
        );
    }

    #[test]
    fn details_match_the_ledger() {
        let th = Thresholds::default();
        let t = next_state(S::Returning, &obs(Link::Up, Some(60), 0, 1_247), &th).expect("replay");
        assert_eq!((t.to, t.backlog), (S::Replaying, Some(1_247)));
        let t = next_state(S::Live, &obs(Link::Up, Some(5_000), 0, 0), &th).expect("delayed");
        assert_eq!((t.to, t.latency_ms), (S::Delayed, Some(5_000)));
        let t = next_state(S::Delayed, &obs(Link::Down, None, 1, 0), &th).expect("edge");
        assert_eq!(
            (t.to, t.sync_interval),
            (S::EdgeCached, Some(Span::from_mins(15)))
        );
        let t = next_state(S::EdgeCached, &obs(Link::Down, None, 600, 0), &th).expect("auto");
        assert_eq!(
            (t.to, t.reason.as_deref()),
            (S::Autonomous, Some("connection_lost"))
        );
    }

    #[test]
    fn hysteresis_and_stability() {
        let th = Thresholds::default();
        // Between the two thresholds a delayed node stays delayed, a live one live.
        assert!(next_state(S::Delayed, &obs(Link::Up, Some(700), 0, 0), &th).is_none());
        assert!(next_state(S::Live, &obs(Link::Up, Some(700), 0, 0), &th).is_none());
        // Down states never improve while down, and stay put.
        assert!(next_state(S::Autonomous, &obs(Link::Down, None, 1, 0), &th).is_none());
        assert!(next_state(S::EdgeCached, &obs(Link::Down, None, 1, 0), &th).is_none());
        let t = next_state(S::Autonomous, &obs(Link::Down, None, 90_000, 0), &th).expect("disc");
        assert_eq!(t.to, S::Disconnected);
        // A fresh node (disconnected, recent contact) takes the state its
        // time since contact calls for.
        let t = next_state(S::Disconnected, &obs(Link::Down, None, 1, 0), &th).expect("fresh");
        assert_eq!(t.to, S::EdgeCached);
        assert!(next_state(S::Disconnected, &obs(Link::Down, None, 90_000, 0), &th).is_none());
        // Connecting only matters from a down state.
        assert!(next_state(S::Live, &obs(Link::Connecting, None, 0, 0), &th).is_none());
        // A resumed session without backlog goes straight to live.
        let t = next_state(S::Returning, &obs(Link::Up, Some(20), 0, 0), &th).expect("live");
        assert_eq!(t.to, S::Live);
    }
}
