//! The in-memory [`Pair`]: one [`AgentSession`] and one
//! [`AggregatorSession`] joined by two lossy in-memory links, with virtual
//! time, in the manner of quinn-proto's test `Pair`.
//!
//! - **Time** is a [`Timestamp`] in microseconds that only the harness moves:
//!   it jumps to the next thing due (a frame's delivery, a session timer, a
//!   store commit, a reconnect), so an hour of protocol costs what its
//!   messages cost.
//! - **Links** carry real frames ([`wire::encode_frame`] in,
//!   [`FrameDecoder`] out, fed in random pieces), each with a delivery time.
//!   [`LinkFaults`] sets latency (min/max), drop and duplicate probabilities,
//!   reordering (random delivery times instead of FIFO) and `silent` (nothing
//!   gets through, not even a close). Filters drop chosen messages exactly.
//! - **The agent driver** keeps the journal (`Vec<SealedEvent>`, node
//!   [`NODE`], key [`KEY_SEED`]), answers `NeedBatch` from it with a real
//!   signed checkpoint (at once, or after a random read delay, as a journal
//!   read off the event loop), and [`Pair::append`] grows it live.
//! - **The aggregator driver** keeps the store: `events[..durable_len]` is
//!   durable, the rest is staged behind a FIFO of pending commits with
//!   random delays. A batch is admitted with [`admit_batch`] against the
//!   staged head and acknowledged (`committed`) only when its commit is
//!   durable; a rejection is answered at once, before pending commits (the
//!   session must not rely on its driver delaying it). [`Pair::cut`] is a crash (the connection dies and pending
//!   commits are lost, committed events never); [`Pair::disconnect`] kills
//!   only the connection (pending commits still complete later).
//! - **Connections** end when a session closes (its peer learns it after
//!   the frames already sent, unless the link is silent), on a decode error,
//!   or on a cut; with `reconnect_after_us` set a fresh pair of sessions is made
//!   after a random delay, as a real reconnect.
//!
//! The safety invariants are checked on every step and panic with the seed:
//! the window on every batch sent; every `Ack`/`Rewind`/`Resume` head and
//! every `Acked`/`Resumed` the agent reports is at most the store's durable
//! head at that instant and names the journal's event there; acked heads
//! never go back, not even across connections.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use sx_common::chain::{ChainHead, Checkpoint, Digest, SealedEvent, event_hash};
use sx_common::codec::DecodeError;
use sx_common::event::{Event, EventPayload, ReplayStarted};
use sx_common::protocol::{
    AgentConfig, AgentEvent, AgentSession, AggregatorConfig, AggregatorEvent, AggregatorSession,
    Rejection, SessionEnd, admit_batch,
};
use sx_common::time::Timestamp;
use sx_common::wire::{self, AgentMessage, AggregatorMessage, FrameDecoder, RefusalCode};

/// The node of the session (and of its client certificate).
pub const NODE: &str = "n1";
/// The node's signing key is `SigningKey::from_bytes(&[KEY_SEED; 32])`.
pub const KEY_SEED: u8 = 1;
pub const MS: i64 = 1_000;
pub const SEC: i64 = 1_000_000;

/// What one direction of the connection does to frames.
#[derive(Clone, Debug)]
pub struct LinkFaults {
    pub latency_min_us: i64,
    pub latency_max_us: i64,
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame arrives twice.
    pub duplicate: f64,
    /// Frames get independent random delivery times instead of FIFO.
    pub reorder: bool,
    /// Nothing gets through, close notifications included.
    pub silent: bool,
}

impl LinkFaults {
    /// A perfect link with a fixed one-way latency.
    pub fn clean(latency_us: i64) -> Self {
        LinkFaults {
            latency_min_us: latency_us,
            latency_max_us: latency_us,
            drop: 0.0,
            duplicate: 0.0,
            reorder: false,
            silent: false,
        }
    }
}

/// Everything a [`Pair`] is built from.
#[derive(Clone, Debug)]
pub struct Setup {
    pub agent: AgentConfig,
    pub aggregator: AggregatorConfig,
    pub faults: LinkFaults,
    /// A batch's commit becomes durable this long after admission (uniform),
    /// and never before an earlier one (one writer, FIFO). `(0, 0)` commits
    /// inside the `Submit` handler.
    pub commit_delay_us: (i64, i64),
    /// The agent's driver answers `NeedBatch` this long (uniform) after it
    /// was asked, as a journal read off the event loop would; `(0, 0)`
    /// answers inside the event handler.
    pub journal_read_us: (i64, i64),
    /// Reconnect this long (uniform) after a connection ends; `None`: stay
    /// disconnected until [`Pair::connect`].
    pub reconnect_after_us: Option<(i64, i64)>,
    /// Keep a [`Record`] of every message and event (for targeted tests).
    pub record: bool,
}

impl Setup {
    /// Short timers, a clean 5 ms link, immediate commits, no reconnects.
    pub fn quick() -> Self {
        Setup {
            agent: AgentConfig {
                batch_max_events: 10,
                window_events: 100,
                heartbeat_interval_us: SEC,
                ack_timeout_us: 2 * SEC,
                idle_timeout_us: 10 * SEC,
                ..AgentConfig::default()
            },
            aggregator: AggregatorConfig {
                max_batch_events: 1_000,
                idle_timeout_us: 10 * SEC,
            },
            faults: LinkFaults::clean(5 * MS),
            commit_delay_us: (0, 0),
            journal_read_us: (0, 0),
            reconnect_after_us: None,
            record: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Agent,
    Aggregator,
}

/// Why one side's end of a connection stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    /// Its session closed.
    Session(SessionEnd),
    /// Its driver could not decode a frame (the agent session has no decode
    /// entry point: its driver just closes with the error).
    Decode(DecodeError),
    /// The peer closed the connection first.
    PeerClosed,
}

#[derive(Clone, Debug)]
pub struct Ended {
    pub at: Timestamp,
    pub conn: u64,
    pub side: Side,
    pub end: End,
}

impl Ended {
    /// An end an honest pair must never see: a refusal either way, a
    /// protocol violation, a decode error.
    pub fn is_failure(&self) -> bool {
        match &self.end {
            End::Session(SessionEnd::Timeout) | End::PeerClosed => false,
            End::Session(_) | End::Decode(_) => true,
        }
    }
}

/// What happened, when `Setup::record` is on.
#[derive(Clone, Debug)]
pub enum Record {
    AgentSent {
        at: Timestamp,
        conn: u64,
        msg: AgentMessage,
        dropped: bool,
    },
    AggregatorSent {
        at: Timestamp,
        conn: u64,
        msg: AggregatorMessage,
        dropped: bool,
    },
    AgentEvent {
        at: Timestamp,
        conn: u64,
        event: AgentEvent,
    },
    AggregatorEvent {
        at: Timestamp,
        conn: u64,
        event: AggregatorEvent,
    },
}

/// Counters, for test output and sanity assertions.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connections: u64,
    pub crashes: u64,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub frames_duplicated: u64,
    pub batches_sent: u64,
    /// Most events ever sent and unacknowledged (last seq sent - acked).
    pub max_in_flight: u64,
    pub submits: u64,
    /// Submitted batches that held nothing new.
    pub duplicate_submits: u64,
    pub rejected_ahead: u64,
    pub rewinds_sent: u64,
    pub acks_sent: u64,
    pub commits: u64,
    pub lost_commits: u64,
}

impl Stats {
    /// Adds `other`'s counts (maxima for maxima).
    pub fn add(&mut self, other: &Stats) {
        self.connections += other.connections;
        self.crashes += other.crashes;
        self.frames_sent += other.frames_sent;
        self.frames_dropped += other.frames_dropped;
        self.frames_duplicated += other.frames_duplicated;
        self.batches_sent += other.batches_sent;
        self.max_in_flight = self.max_in_flight.max(other.max_in_flight);
        self.submits += other.submits;
        self.duplicate_submits += other.duplicate_submits;
        self.rejected_ahead += other.rejected_ahead;
        self.rewinds_sent += other.rewinds_sent;
        self.acks_sent += other.acks_sent;
        self.commits += other.commits;
        self.lost_commits += other.lost_commits;
    }
}

/// The aggregator's store for the one node: `events[..durable_len]` is
/// durable, the rest waits in `pending` commits.
#[derive(Clone, Debug, Default)]
pub struct Store {
    pub events: Vec<SealedEvent>,
    pub durable_len: usize,
    pending: VecDeque<PendingCommit>,
}

#[derive(Clone, Debug)]
struct PendingCommit {
    at: Timestamp,
    /// `events.len()` once this commit is durable.
    end_len: usize,
    /// The connection whose session is told, and the head to acknowledge.
    ack: (u64, ChainHead),
}

impl Store {
    pub fn durable_head(&self) -> ChainHead {
        head_of(&self.events[..self.durable_len])
    }

    pub fn staged_head(&self) -> ChainHead {
        head_of(&self.events)
    }

    pub fn pending_commits(&self) -> usize {
        self.pending.len()
    }

    fn hash_at(&self, seq: u64) -> Option<Digest> {
        let i = usize::try_from(seq).ok()?.checked_sub(1)?;
        self.events.get(i).map(|e| e.hash)
    }

    /// Durable prefix only: what survives a crash.
    pub fn durable(&self) -> &[SealedEvent] {
        &self.events[..self.durable_len]
    }
}

fn head_of(events: &[SealedEvent]) -> ChainHead {
    events
        .last()
        .map_or_else(ChainHead::default, |e| ChainHead {
            seq: e.event.seq,
            hash: e.hash,
        })
}

/// The hash of `events`' entry at `seq` (seq 0: genesis).
fn hash_at(events: &[SealedEvent], seq: u64) -> Option<Digest> {
    if seq == 0 {
        return Some(Digest::GENESIS);
    }
    events.get(usize::try_from(seq - 1).ok()?).map(|e| e.hash)
}

enum Item {
    Frame(Vec<u8>),
    /// The sender closed the connection after everything it sent before.
    Close,
}

/// Frames in flight in one direction, by delivery time.
#[derive(Default)]
struct Link {
    in_flight: BTreeMap<(i64, u64), Item>,
    /// Latest delivery time queued (FIFO mode never delivers before it).
    last_at: i64,
}

impl Link {
    fn next_at(&self) -> Option<Timestamp> {
        self.in_flight.keys().next().map(|&(at, _)| Timestamp(at))
    }
}

type AgentFilter = Box<dyn FnMut(&AgentMessage) -> bool>;
type AggregatorFilter = Box<dyn FnMut(&AggregatorMessage) -> bool>;

/// One live connection: both sessions, their decoders, both links.
struct Conn {
    id: u64,
    agent: AgentSession,
    aggregator: AggregatorSession,
    agent_rx: FrameDecoder,
    aggregator_rx: FrameDecoder,
    to_aggregator: Link,
    to_agent: Link,
    agent_end: Option<End>,
    aggregator_end: Option<End>,
    /// Whether the close of each side (agent, aggregator) is on its way.
    close_sent: (bool, bool),
    /// Last `Resumed`/`Acked` head the agent session reported.
    acked: ChainHead,
    /// `NeedBatch` requests being read from the journal: `(due, from, max)`.
    reads: VecDeque<(Timestamp, u64, usize)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    // Order breaks ties at one instant: durability first, then messages,
    // then timers.
    Reconnect,
    Commit,
    JournalRead,
    DeliverToAggregator,
    DeliverToAgent,
    AgentTimer,
    AggregatorTimer,
}

/// See the module doc.
pub struct Pair {
    pub seed: u64,
    pub now: Timestamp,
    pub setup: Setup,
    rng: StdRng,
    key: SigningKey,
    verifying_key: VerifyingKey,
    pub journal: Vec<SealedEvent>,
    /// Checkpoints signed so far, by seq (Ed25519 signing is deterministic
    /// and the journal never changes, so resends reuse them: signing is most
    /// of the cost of a schedule otherwise).
    checkpoints: HashMap<u64, Checkpoint>,
    pub store: Store,
    conn: Option<Conn>,
    next_conn: u64,
    reconnect_at: Option<Timestamp>,
    order: u64,
    /// The best head ever acknowledged to the agent's driver.
    pub acked: ChainHead,
    pub ends: Vec<Ended>,
    pub log: Vec<Record>,
    pub stats: Stats,
    /// The last `Rtt` the agent measured.
    pub last_rtt_ms: Option<u32>,
    /// Decode errors of the aggregator's driver, in order.
    pub aggregator_decode_errors: Vec<DecodeError>,
    /// Messages for which this returns true are dropped on the way.
    pub drop_to_aggregator: Option<AgentFilter>,
    pub drop_to_agent: Option<AggregatorFilter>,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("journal", &self.journal.len())
            .field("durable", &self.store.durable_len)
            .field("staged", &self.store.events.len())
            .field("acked", &self.acked.seq)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Pair {
    /// A pair at virtual time 1000 s with an empty journal and store, not yet
    /// connected.
    pub fn new(seed: u64, setup: Setup) -> Self {
        let key = SigningKey::from_bytes(&[KEY_SEED; 32]);
        Pair {
            seed,
            now: Timestamp::from_secs(1_000),
            setup,
            rng: StdRng::seed_from_u64(seed),
            verifying_key: key.verifying_key(),
            key,
            journal: Vec::new(),
            checkpoints: HashMap::new(),
            store: Store::default(),
            conn: None,
            next_conn: 1,
            reconnect_at: None,
            order: 0,
            acked: ChainHead::default(),
            ends: Vec::new(),
            log: Vec::new(),
            stats: Stats::default(),
            last_rtt_ms: None,
            aggregator_decode_errors: Vec::new(),
            drop_to_aggregator: None,
            drop_to_agent: None,
        }
    }

    /// Fails the test with the seed and where the pair is.
    #[track_caller]
    pub fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "seed {} at t={}us: {what}\n{self:?}\nends: {:?}",
            self.seed, self.now.0, self.ends
        )
    }

    pub fn journal_head(&self) -> ChainHead {
        head_of(&self.journal)
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The id of the live connection.
    pub fn conn_id(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.id)
    }

    pub fn agent(&self) -> Option<&AgentSession> {
        self.conn.as_ref().map(|c| &c.agent)
    }

    pub fn aggregator(&self) -> Option<&AggregatorSession> {
        self.conn.as_ref().map(|c| &c.aggregator)
    }

    /// Ends an honest pair must never see.
    pub fn failures(&self) -> Vec<&Ended> {
        self.ends.iter().filter(|e| e.is_failure()).collect()
    }

    /// The end `side` reported for connection `conn`.
    pub fn end_of(&self, conn: u64, side: Side) -> Option<&Ended> {
        self.ends.iter().find(|e| e.conn == conn && e.side == side)
    }

    /// Everything the agent recorded is durably stored and acknowledged, to
    /// the live session too.
    pub fn is_synced(&self) -> bool {
        let n = self.journal.len();
        self.acked.seq == n as u64
            && self.store.durable_len == n
            && self.store.events.len() == n
            && self.store.pending.is_empty()
            && self
                .conn
                .as_ref()
                .is_some_and(|c| c.agent.acked().seq == n as u64)
    }

    /// Asserts the end state: the store is the journal exactly (same bytes
    /// and hashes, in order, each once, a verified chain), all durable, and
    /// the agent was told so.
    pub fn assert_synced(&self) {
        if self.store.events.len() != self.journal.len() {
            self.fail(format!(
                "store holds {} events, journal {}",
                self.store.events.len(),
                self.journal.len()
            ));
        }
        let mut prev = Digest::GENESIS;
        for (i, (stored, recorded)) in self.store.events.iter().zip(&self.journal).enumerate() {
            let seq = i as u64 + 1;
            if stored.bytes != recorded.bytes || stored.hash != recorded.hash {
                self.fail(format!("store and journal differ at seq {seq}"));
            }
            if stored.event.seq != seq
                || stored.event.node_id != NODE
                || stored.event.prev_hash != prev
                || event_hash(&prev, &stored.bytes) != stored.hash
            {
                self.fail(format!("stored chain broken at seq {seq}"));
            }
            prev = stored.hash;
        }
        if self.store.durable_len != self.journal.len() || self.store.pending_commits() != 0 {
            self.fail("store not fully durable");
        }
        if self.acked != self.journal_head() {
            self.fail(format!(
                "agent acked {:?}, journal head {:?}",
                self.acked,
                self.journal_head()
            ));
        }
        if let Some(agent) = self.agent()
            && agent.acked() != self.journal_head()
        {
            self.fail("the live session's acked differs from the journal head");
        }
    }

    // ------------------------------------------------------------------
    // Things tests do.

    /// Opens a connection: fresh sessions on fresh links, as a reconnect.
    pub fn connect(&mut self) {
        self.connect_as(NODE);
    }

    /// Opens a connection whose agent session claims to be `node_id` (its
    /// certificate, which the aggregator session trusts, still says
    /// [`NODE`]).
    pub fn connect_as(&mut self, node_id: &str) {
        if self.conn.is_some() {
            return;
        }
        self.reconnect_at = None;
        let id = self.next_conn;
        self.next_conn += 1;
        self.stats.connections += 1;
        let head = self.journal_head();
        self.conn = Some(Conn {
            id,
            agent: AgentSession::new(self.setup.agent.clone(), node_id, head, self.now),
            aggregator: AggregatorSession::new(self.setup.aggregator.clone(), NODE, self.now),
            agent_rx: FrameDecoder::default(),
            aggregator_rx: FrameDecoder::default(),
            to_aggregator: Link::default(),
            to_agent: Link::default(),
            agent_end: None,
            aggregator_end: None,
            close_sent: (false, false),
            reads: VecDeque::new(),
            acked: ChainHead::default(),
        });
        self.flush();
    }

    /// The aggregator crashes: the connection dies and commits not yet
    /// durable are lost. Committed events survive.
    pub fn cut(&mut self) {
        self.stats.crashes += 1;
        self.stats.lost_commits += self.store.pending.len() as u64;
        self.store.pending.clear();
        self.store.events.truncate(self.store.durable_len);
        self.drop_connection();
    }

    /// The connection dies; the store keeps committing what it admitted.
    pub fn disconnect(&mut self) {
        self.drop_connection();
    }

    fn drop_connection(&mut self) {
        if self.conn.take().is_some() {
            self.schedule_reconnect();
        }
    }

    fn schedule_reconnect(&mut self) {
        if let Some((lo, hi)) = self.setup.reconnect_after_us {
            let delay = self.rng.gen_range(lo..=hi);
            self.reconnect_at = Some(Timestamp(self.now.0 + delay));
        }
    }

    /// Records `n` new events in the journal and tells the session.
    pub fn append(&mut self, n: usize) {
        for _ in 0..n {
            let prev = self.journal_head();
            let backlog = self.rng.r#gen::<u16>() as u64;
            self.journal.push(SealedEvent::seal(Event {
                node_id: NODE.to_owned(),
                seq: prev.seq + 1,
                timestamp: self.now,
                prev_hash: prev.hash,
                payload: EventPayload::ReplayStarted(ReplayStarted { backlog }),
            }));
        }
        let head = self.journal_head();
        if let Some(conn) = self.conn.as_mut()
            && conn.agent_end.is_none()
        {
            conn.agent.local_append(head);
        }
        self.flush();
    }

    /// Puts raw bytes on the wire towards the aggregator (or the agent).
    pub fn inject(&mut self, to: Side, bytes: Vec<u8>) {
        let lat = self.setup.faults.latency_min_us;
        let now = self.now.0;
        let order = self.next_order();
        if let Some(conn) = self.conn.as_mut() {
            let link = match to {
                Side::Aggregator => &mut conn.to_aggregator,
                Side::Agent => &mut conn.to_agent,
            };
            let at = (now + lat).max(link.last_at);
            link.last_at = at;
            link.in_flight.insert((at, order), Item::Frame(bytes));
        }
    }

    /// Sends `msg` to the aggregator as if the agent had.
    pub fn inject_to_aggregator(&mut self, msg: &AgentMessage) {
        self.inject(Side::Aggregator, wire::frame(msg));
    }

    /// Runs until `done` holds (true) or `deadline` passes (false).
    pub fn run_until(&mut self, deadline: Timestamp, mut done: impl FnMut(&Pair) -> bool) -> bool {
        let mut same_instant = 0u32;
        loop {
            self.flush();
            if done(self) {
                return true;
            }
            let Some((at, action)) = self.next_action() else {
                self.now = self.now.max(deadline);
                return false;
            };
            if at > deadline {
                self.now = self.now.max(deadline);
                return done(self);
            }
            if at <= self.now {
                same_instant += 1;
                if same_instant > 1_000_000 {
                    self.fail("no progress of time: a timer keeps firing");
                }
            } else {
                same_instant = 0;
                self.now = at;
            }
            self.act(action);
        }
    }

    pub fn drive_until(&mut self, deadline: Timestamp) {
        self.run_until(deadline, |_| false);
    }

    pub fn drive_for(&mut self, span_us: i64) {
        self.drive_until(Timestamp(self.now.0 + span_us));
    }

    // ------------------------------------------------------------------
    // The event loop.

    fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    fn next_action(&self) -> Option<(Timestamp, Action)> {
        let mut candidates: Vec<(Timestamp, Action)> = Vec::new();
        if let (Some(at), None) = (self.reconnect_at, &self.conn) {
            candidates.push((at, Action::Reconnect));
        }
        if let Some(p) = self.store.pending.front() {
            candidates.push((p.at, Action::Commit));
        }
        if let Some(conn) = &self.conn {
            if let Some(&(at, _, _)) = conn.reads.front() {
                candidates.push((at, Action::JournalRead));
            }
            if let Some(at) = conn.to_aggregator.next_at() {
                candidates.push((at, Action::DeliverToAggregator));
            }
            if let Some(at) = conn.to_agent.next_at() {
                candidates.push((at, Action::DeliverToAgent));
            }
            if conn.agent_end.is_none()
                && let Some(at) = conn.agent.poll_timeout()
            {
                candidates.push((at, Action::AgentTimer));
            }
            if conn.aggregator_end.is_none()
                && let Some(at) = conn.aggregator.poll_timeout()
            {
                candidates.push((at, Action::AggregatorTimer));
            }
        }
        candidates.into_iter().min()
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Reconnect => self.connect(),
            Action::Commit => self.commit_front(),
            Action::JournalRead => {
                if let Some(mut conn) = self.conn.take() {
                    if let Some((_, from, max)) = conn.reads.pop_front() {
                        self.answer_need_batch(&mut conn, from, max);
                    }
                    self.conn = Some(conn);
                }
            }
            Action::DeliverToAggregator => self.deliver(Side::Aggregator),
            Action::DeliverToAgent => self.deliver(Side::Agent),
            Action::AgentTimer => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.agent.handle_timeout(self.now);
                }
            }
            Action::AggregatorTimer => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.aggregator.handle_timeout(self.now);
                }
            }
        }
        self.flush();
    }

    /// The oldest pending commit becomes durable; its session (if still
    /// connected) acknowledges.
    fn commit_front(&mut self) {
        let Some(p) = self.store.pending.pop_front() else {
            return;
        };
        self.store.durable_len = p.end_len;
        self.stats.commits += 1;
        let (conn_id, head) = p.ack;
        self.check_durable(head, "committed() head");
        if let Some(conn) = self.conn.as_mut()
            && conn.id == conn_id
        {
            conn.aggregator.committed(head);
        }
    }

    fn deliver(&mut self, to: Side) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let link = match to {
            Side::Aggregator => &mut conn.to_aggregator,
            Side::Agent => &mut conn.to_agent,
        };
        let Some(item) = link.in_flight.pop_first().map(|(_, item)| item) else {
            self.conn = Some(conn);
            return;
        };
        match item {
            Item::Close => {
                // The peer closed the connection: this side is done too.
                let end = match to {
                    Side::Agent => &mut conn.agent_end,
                    Side::Aggregator => &mut conn.aggregator_end,
                };
                if end.is_none() {
                    *end = Some(End::PeerClosed);
                    self.ends.push(Ended {
                        at: self.now,
                        conn: conn.id,
                        side: to,
                        end: End::PeerClosed,
                    });
                }
                self.schedule_reconnect();
                return; // the connection is gone
            }
            Item::Frame(bytes) => {
                // In random pieces, so the decoder's reassembly is exercised.
                let mut rest: &[u8] = &bytes;
                while !rest.is_empty() {
                    let n = if rest.len() > 1 && self.rng.gen_bool(0.3) {
                        self.rng.gen_range(1..rest.len())
                    } else {
                        rest.len()
                    };
                    let (piece, tail) = rest.split_at(n);
                    rest = tail;
                    match to {
                        Side::Aggregator => self.feed_aggregator(&mut conn, piece),
                        Side::Agent => self.feed_agent(&mut conn, piece),
                    }
                }
            }
        }
        self.conn = Some(conn);
    }

    fn feed_aggregator(&mut self, conn: &mut Conn, piece: &[u8]) {
        if conn.aggregator_end.is_some() || conn.aggregator.is_closed() {
            return;
        }
        conn.aggregator_rx.push(piece);
        loop {
            match conn.aggregator_rx.next_message::<AgentMessage>() {
                Ok(Some(msg)) => conn.aggregator.handle_message(msg, self.now),
                Ok(None) => break,
                Err(err) => {
                    conn.aggregator.handle_decode_error(&err);
                    self.aggregator_decode_errors.push(err);
                    break;
                }
            }
        }
    }

    fn feed_agent(&mut self, conn: &mut Conn, piece: &[u8]) {
        if conn.agent_end.is_some() {
            return;
        }
        conn.agent_rx.push(piece);
        loop {
            match conn.agent_rx.next_message::<AggregatorMessage>() {
                Ok(Some(msg)) => conn.agent.handle_message(msg, self.now),
                Ok(None) => break,
                Err(err) => {
                    let end = End::Decode(err);
                    self.ends.push(Ended {
                        at: self.now,
                        conn: conn.id,
                        side: Side::Agent,
                        end: end.clone(),
                    });
                    conn.agent_end = Some(end);
                    break;
                }
            }
        }
    }

    /// `from` closed its end: the peer learns it after what was sent.
    fn close_link(&mut self, conn: &mut Conn, from: Side) {
        let lat = self.setup.faults.latency_max_us;
        let silent = self.setup.faults.silent;
        let now = self.now.0;
        let order = self.next_order();
        let link = match from {
            Side::Agent => &mut conn.to_aggregator,
            Side::Aggregator => &mut conn.to_agent,
        };
        if !silent {
            let at = (now + lat).max(link.last_at);
            link.last_at = at;
            link.in_flight.insert((at, order), Item::Close);
        }
    }

    /// Handles every event and transmit both sessions have, until none.
    fn flush(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        loop {
            let mut progressed = false;
            while let Some(event) = conn.agent.poll_event() {
                progressed = true;
                self.on_agent_event(&mut conn, event);
            }
            while let Some(event) = conn.aggregator.poll_event() {
                progressed = true;
                self.on_aggregator_event(&mut conn, event);
            }
            while let Some(msg) = conn.agent.poll_transmit() {
                progressed = true;
                self.agent_transmit(&mut conn, msg);
            }
            while let Some(msg) = conn.aggregator.poll_transmit() {
                progressed = true;
                self.aggregator_transmit(&mut conn, msg);
            }
            if !progressed {
                break;
            }
        }
        // A side that ended closes the connection after what it sent.
        if conn.agent_end.is_some() && !conn.close_sent.0 {
            conn.close_sent.0 = true;
            self.close_link(&mut conn, Side::Agent);
        }
        if conn.aggregator_end.is_some() && !conn.close_sent.1 {
            conn.close_sent.1 = true;
            self.close_link(&mut conn, Side::Aggregator);
        }
        if conn.agent_end.is_some() && conn.aggregator_end.is_some() {
            self.schedule_reconnect();
        } else {
            self.conn = Some(conn);
        }
    }

    // ------------------------------------------------------------------
    // The agent's driver.

    fn on_agent_event(&mut self, conn: &mut Conn, event: AgentEvent) {
        if self.setup.record {
            self.log.push(Record::AgentEvent {
                at: self.now,
                conn: conn.id,
                event: event.clone(),
            });
        }
        match event {
            AgentEvent::NeedBatch { from, max } => {
                let len = self.journal.len() as u64;
                if from == 0 || from > len || max == 0 || max > self.setup.agent.batch_max_events {
                    self.fail(format!(
                        "NeedBatch from {from} max {max}, journal ends at {len}"
                    ));
                }
                let (lo, hi) = self.setup.journal_read_us;
                let delay = self.rng.gen_range(lo..=hi);
                if delay == 0 && conn.reads.is_empty() {
                    self.answer_need_batch(conn, from, max);
                } else {
                    let after = conn.reads.back().map_or(self.now, |r| r.0);
                    let due = Timestamp(self.now.0 + delay).max(after);
                    conn.reads.push_back((due, from, max));
                }
            }
            AgentEvent::Resumed { durable, .. } => {
                if hash_at(&self.journal, durable.seq) != Some(durable.hash) {
                    self.fail(format!(
                        "Resumed at {durable:?}, not the journal's event there"
                    ));
                }
                if durable.seq < self.acked.seq {
                    self.fail(format!(
                        "Resumed at seq {} below the acked seq {}: acknowledged events lost",
                        durable.seq, self.acked.seq
                    ));
                }
                self.check_durable(durable, "Resumed");
                conn.acked = durable;
                self.acked = durable;
            }
            AgentEvent::Acked { head } => {
                if head.seq <= conn.acked.seq {
                    self.fail(format!(
                        "Acked {} after {}: not monotonic",
                        head.seq, conn.acked.seq
                    ));
                }
                if hash_at(&self.journal, head.seq) != Some(head.hash) {
                    self.fail(format!("Acked {head:?}, not the journal's event there"));
                }
                self.check_durable(head, "Acked");
                conn.acked = head;
                self.acked = head;
            }
            AgentEvent::Rtt { rtt_ms } => self.last_rtt_ms = Some(rtt_ms),
            AgentEvent::Closed(end) => {
                let end = End::Session(end);
                self.ends.push(Ended {
                    at: self.now,
                    conn: conn.id,
                    side: Side::Agent,
                    end: end.clone(),
                });
                conn.agent_end = Some(end);
            }
        }
    }

    /// Reads `max` events from `from` and hands them to the session with a
    /// checkpoint over the last.
    fn answer_need_batch(&mut self, conn: &mut Conn, from: u64, max: usize) {
        let start = (from - 1) as usize;
        let end = (start + max).min(self.journal.len());
        let batch = &self.journal[start..end];
        let last = &batch[batch.len() - 1];
        let key = &self.key;
        let checkpoint = self
            .checkpoints
            .entry(last.event.seq)
            .or_insert_with(|| Checkpoint::sign(key, NODE, last.event.seq, last.hash))
            .clone();
        let bytes = batch.iter().map(|e| e.bytes.clone()).collect();
        conn.agent.send_batch(from, bytes, checkpoint, self.now);
    }

    fn agent_transmit(&mut self, conn: &mut Conn, msg: AgentMessage) {
        if let AgentMessage::Batch { events, checkpoint } = &msg {
            self.stats.batches_sent += 1;
            let acked = conn.agent.acked().seq;
            let in_flight = checkpoint.seq.saturating_sub(acked);
            self.stats.max_in_flight = self.stats.max_in_flight.max(in_flight);
            if in_flight > self.setup.agent.window_events {
                self.fail(format!(
                    "window broken: batch up to seq {} with seq {acked} acked, window {}",
                    checkpoint.seq, self.setup.agent.window_events
                ));
            }
            if events.is_empty() || events.len() > self.setup.agent.batch_max_events {
                self.fail(format!("batch of {} events", events.len()));
            }
        }
        let dropped = match self.drop_to_aggregator.as_mut() {
            Some(filter) => filter(&msg),
            None => false,
        };
        if self.setup.record {
            self.log.push(Record::AgentSent {
                at: self.now,
                conn: conn.id,
                msg: msg.clone(),
                dropped,
            });
        }
        if !dropped {
            self.send(conn, Side::Aggregator, wire::frame(&msg));
        }
    }

    // ------------------------------------------------------------------
    // The aggregator's driver.

    fn on_aggregator_event(&mut self, conn: &mut Conn, event: AggregatorEvent) {
        if self.setup.record {
            self.log.push(Record::AggregatorEvent {
                at: self.now,
                conn: conn.id,
                event: event.clone(),
            });
        }
        match event {
            AggregatorEvent::Hello { .. } => {
                conn.aggregator.resume(self.store.durable_head(), None)
            }
            AggregatorEvent::Submit { events, checkpoint } => {
                self.stats.submits += 1;
                let staged = self.store.staged_head();
                let store = &self.store;
                let known = |seq: u64| store.hash_at(seq);
                let admitted = admit_batch(
                    NODE,
                    &self.verifying_key,
                    staged,
                    &events,
                    &checkpoint,
                    &known,
                );
                match admitted {
                    Ok(verified) => {
                        if verified.first_new == events.len() {
                            self.stats.duplicate_submits += 1;
                        }
                        self.store
                            .events
                            .extend(events[verified.first_new..].iter().cloned());
                        if self.store.staged_head() != verified.head {
                            self.fail("admitted batch does not end at the head verify_batch gave");
                        }
                        let (lo, hi) = self.setup.commit_delay_us;
                        let delay = self.rng.gen_range(lo..=hi);
                        if delay == 0 && self.store.pending.is_empty() {
                            self.store.durable_len = self.store.events.len();
                            self.stats.commits += 1;
                            conn.aggregator.committed(verified.head);
                        } else {
                            let after = self.store.pending.back().map_or(self.now, |p| p.at);
                            self.store.pending.push_back(PendingCommit {
                                at: Timestamp(self.now.0 + delay).max(after),
                                end_len: self.store.events.len(),
                                ack: (conn.id, verified.head),
                            });
                        }
                    }
                    Err(rejection) => {
                        if matches!(rejection, Rejection::AheadOfDurable { .. }) {
                            self.stats.rejected_ahead += 1;
                        }
                        conn.aggregator.rejected(rejection);
                    }
                }
            }
            AggregatorEvent::Heartbeat { agent_head, .. } => {
                if hash_at(&self.journal, agent_head.seq) != Some(agent_head.hash) {
                    self.fail(format!("heartbeat head {agent_head:?} not in the journal"));
                }
            }
            AggregatorEvent::Closed(end) => {
                let end = End::Session(end);
                self.ends.push(Ended {
                    at: self.now,
                    conn: conn.id,
                    side: Side::Aggregator,
                    end: end.clone(),
                });
                conn.aggregator_end = Some(end);
            }
        }
    }

    fn aggregator_transmit(&mut self, conn: &mut Conn, msg: AggregatorMessage) {
        match &msg {
            AggregatorMessage::Ack { head } => {
                self.stats.acks_sent += 1;
                self.check_durable(*head, "Ack");
            }
            AggregatorMessage::Rewind { durable } => {
                self.stats.rewinds_sent += 1;
                self.check_durable(*durable, "Rewind");
            }
            AggregatorMessage::Resume { durable, .. } => self.check_durable(*durable, "Resume"),
            AggregatorMessage::Pong { .. } | AggregatorMessage::Refuse { .. } => {}
        }
        let dropped = match self.drop_to_agent.as_mut() {
            Some(filter) => filter(&msg),
            None => false,
        };
        if self.setup.record {
            self.log.push(Record::AggregatorSent {
                at: self.now,
                conn: conn.id,
                msg: msg.clone(),
                dropped,
            });
        }
        if !dropped {
            self.send(conn, Side::Agent, wire::frame(&msg));
        }
    }

    /// `head` may be told to the agent as held: it is within the durable
    /// store and names the stored event there.
    #[track_caller]
    fn check_durable(&self, head: ChainHead, what: &str) {
        let durable = self.store.durable_head();
        if head.seq > durable.seq || hash_at(self.store.durable(), head.seq) != Some(head.hash) {
            self.fail(format!(
                "{what} {head:?} but the store is durable only up to {durable:?} \
                 (staged {:?}): an unsafe acknowledgement",
                self.store.staged_head()
            ));
        }
    }

    // ------------------------------------------------------------------
    // The links.

    fn send(&mut self, conn: &mut Conn, to: Side, frame: Vec<u8>) {
        self.stats.frames_sent += 1;
        let faults = &self.setup.faults;
        if faults.silent || (faults.drop > 0.0 && self.rng.gen_bool(faults.drop)) {
            self.stats.frames_dropped += 1;
            return;
        }
        let copies = if faults.duplicate > 0.0 && self.rng.gen_bool(faults.duplicate) {
            self.stats.frames_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let latency = self
                .rng
                .gen_range(faults.latency_min_us..=faults.latency_max_us);
            let reorder = faults.reorder;
            self.order += 1;
            let order = self.order;
            let link = match to {
                Side::Aggregator => &mut conn.to_aggregator,
                Side::Agent => &mut conn.to_agent,
            };
            let mut at = self.now.0 + latency;
            if !reorder {
                at = at.max(link.last_at);
            }
            link.last_at = link.last_at.max(at);
            link.in_flight
                .insert((at, order), Item::Frame(frame.clone()));
        }
    }
}

/// The refusal code of an end, if it is a refusal (either direction).
pub fn refusal_code(end: &End) -> Option<RefusalCode> {
    match end {
        End::Session(SessionEnd::Refused { code, .. } | SessionEnd::RefusedPeer { code, .. }) => {
            Some(*code)
        }
        _ => None,
    }
}
