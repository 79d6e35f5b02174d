//! `GET /metrics`: the aggregator's operational numbers in the Prometheus
//! text exposition format (version 0.0.4), encoded by `prometheus-client`.
//!
//! Two kinds of numbers. [`Metrics`] holds the few counters only this
//! module keeps, bumped by the drivers: QUIC connections (open, accepted)
//! and bundle imports by outcome, plus the ingest rate window. Everything
//! else is read at scrape time from what the aggregator already keeps: the
//! writer's [`IngestStats`](crate::ingest::IngestStats), refusals by reason,
//! the store's event count and forks, and the connectivity views by zone
//! and by region (the numbers `/api/v1/connectivity` answers, from the
//! observations held in the projection engine). A scrape costs one pass
//! over the fleet table per grouping, and nothing per event.
//!
//! Every name starts with `sx_aggregator_`; counters end in `_total`.

use crate::projection::views::{self, ConnectivityAggregate, GroupBy};
use crate::server::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sx_common::time::Timestamp;

/// The content type of the answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The window of the ingest rate gauge.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How often the ingest rate window takes a sample.
pub const RATE_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Outcomes of a bundle import through the API, each a series from the
/// start (so `rate()` sees the first one).
pub const BUNDLE_OUTCOMES: [&str; 3] = ["imported", "already-held", "refused"];

/// Refusal reasons the aggregator itself gives before a session starts;
/// exported at 0 from the start. Others appear when they first happen.
const CONNECTION_REFUSALS: [&str; 2] = ["tls-handshake", "identity"];

type Labels = [(&'static str, String); 1];

/// The counters this module keeps; see the module doc.
#[derive(Debug)]
pub struct Metrics {
    quic_open: Gauge,
    quic_accepted: Counter,
    bundle_imports: Family<Labels, Counter>,
    rate: Mutex<RateWindow>,
}

impl Default for Metrics {
    fn default() -> Self {
        let bundle_imports = Family::<Labels, Counter>::default();
        for outcome in BUNDLE_OUTCOMES {
            let _ = bundle_imports.get_or_create(&[("outcome", outcome.to_owned())]);
        }
        Metrics {
            quic_open: Gauge::default(),
            quic_accepted: Counter::default(),
            bundle_imports,
            rate: Mutex::new(RateWindow::default()),
        }
    }
}

/// A QUIC connection being handled; counted open until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// A connection completed its TLS handshake; keep the guard for as
    /// long as it is handled.
    pub fn connection_opened(&self) -> OpenConnection {
        self.quic_accepted.inc();
        self.quic_open.inc();
        OpenConnection(self.quic_open.clone())
    }

    /// A bundle import through the API ended with `outcome` (one of
    /// [`BUNDLE_OUTCOMES`]).
    pub fn bundle_import(&self, outcome: &'static str) {
        self.bundle_imports
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
    }

    /// Records the writer's stored-events total at `now` in the rate window.
    pub fn sample_ingest(&self, now: Instant, events_stored: u64) {
        self.rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(now, events_stored);
    }

    fn events_per_second(&self) -> f64 {
        self.rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_second()
    }
}

/// Samples the writer's total every [`RATE_SAMPLE_EVERY`] into the rate
/// window, until the task is dropped.
pub async fn sample_ingest_rate(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(RATE_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let total = shared.ingest.stats.events_stored.load(Ordering::Relaxed);
        shared.metrics.sample_ingest(Instant::now(), total);
    }
}

/// Samples of a growing total over the last [`RATE_WINDOW`], and the newest
/// sample before it (the baseline).
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    pub fn record(&mut self, now: Instant, total: u64) {
        self.samples.push_back((now, total));
        // Drop samples while the next one is old enough to be the baseline.
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Per second between the baseline and the newest sample; 0 before
    /// there are two samples.
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The whole exposition for a scrape.
pub fn render(shared: &Shared) -> Result<String, String> {
    let scrape = Scrape::read(shared)?;
    let m = &shared.metrics;
    let mut registry = Registry::with_prefix("sx_aggregator");
    registry.register(
        "quic_connections",
        "QUIC connections being handled now (past the TLS handshake)",
        m.quic_open.clone(),
    );
    registry.register(
        "quic_connections_accepted",
        "QUIC connections that completed the TLS handshake since start",
        m.quic_accepted.clone(),
    );
    registry.register(
        "bundle_imports",
        "Bundle imports through the API since start, by outcome",
        m.bundle_imports.clone(),
    );
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .map_err(|e| format!("encoding the metrics: {e}"))?;
    Ok(out)
}

/// The numbers read at scrape time.
#[derive(Debug)]
struct Scrape {
    events_ingested: u64,
    duplicates: u64,
    rejected_batches: u64,
    commits: u64,
    writer_busy_seconds: f64,
    events_per_second: f64,
    events_stored: u64,
    forks: u64,
    nodes: u64,
    refusals: BTreeMap<String, u64>,
    zones: Vec<ConnectivityAggregate>,
    regions: Vec<ConnectivityAggregate>,
    started_at: Timestamp,
}

impl Scrape {
    fn read(shared: &Shared) -> Result<Scrape, String> {
        let stats = &shared.ingest.stats;
        let stale_after = shared.config.aggregator.stale_after;
        let now = Timestamp::now();
        let (zones, regions, nodes) = shared.projections.read(|e| {
            (
                views::connectivity_observed_by(e, GroupBy::Zone, stale_after, now),
                views::connectivity_observed_by(e, GroupBy::Region, stale_after, now),
                e.len() as u64,
            )
        });
        let mut refusals = shared.refusals.counts();
        for reason in CONNECTION_REFUSALS {
            refusals.entry(reason.to_owned()).or_default();
        }
        Ok(Scrape {
            events_ingested: stats.events_stored.load(Ordering::Relaxed),
            duplicates: stats.duplicates.load(Ordering::Relaxed),
            rejected_batches: stats.rejected.load(Ordering::Relaxed),
            commits: stats.commits.load(Ordering::Relaxed),
            writer_busy_seconds: stats.busy_us.load(Ordering::Relaxed) as f64 / 1e6,
            events_per_second: shared.metrics.events_per_second(),
            events_stored: shared.store.event_count().map_err(|e| e.to_string())?,
            forks: shared.store.forks().map_err(|e| e.to_string())?.len() as u64,
            nodes,
            refusals,
            zones,
            regions,
            started_at: shared.started_at,
        })
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

/// One gauge per group of `groups`, labelled `label="<group>"`.
fn group_gauges<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    label: &'static str,
    groups: &[ConnectivityAggregate],
    value: impl Fn(&ConnectivityAggregate) -> N,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for g in groups {
        let labels: Labels = [(label, g.group.clone())];
        ConstGauge::new(value(g)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        counter(
            e,
            "events_ingested",
            "Events newly stored since start (QUIC and bundles), each once.",
            self.events_ingested,
        )?;
        counter(
            e,
            "duplicate_events",
            "Events received again that the store already held, since start.",
            self.duplicates,
        )?;
        counter(
            e,
            "rejected_batches",
            "Batches the store refused (bad chain, signature, fork, gap), since start.",
            self.rejected_batches,
        )?;
        counter(
            e,
            "group_commits",
            "Durable write transactions of the ingest writer, since start.",
            self.commits,
        )?;
        ConstCounter::new(self.writer_busy_seconds).encode(e.encode_descriptor(
            "ingest_writer_busy",
            "Time the ingest writer spent verifying and committing, since start (its utilisation is the rate of this).",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        gauge(
            e,
            "ingest_events_per_second",
            "Events newly stored per second over the last 10 s.",
            None,
            self.events_per_second,
        )?;
        gauge(
            e,
            "events_stored",
            "Events the store holds (all nodes, since the store was created).",
            None,
            self.events_stored,
        )?;
        gauge(
            e,
            "forks",
            "Fork evidence kept: a seq offered again with another hash.",
            None,
            self.forks,
        )?;
        gauge(e, "nodes", "Nodes the projections hold.", None, self.nodes)?;
        gauge(
            e,
            "start_time",
            "When this aggregator process started, in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            self.started_at.0 as f64 / 1e6,
        )?;
        {
            let mut family = e.encode_descriptor(
                "refusals",
                "Refused connections, sessions and bundle imports since start, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &self.refusals {
                let labels: Labels = [("reason", reason.clone())];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        for (label, groups) in [("zone", &self.zones), ("region", &self.regions)] {
            let name = |what: &str| format!("{label}_{what}");
            let seconds = Some(&Unit::Seconds);
            group_gauges(
                e,
                (&name("nodes"), "Nodes of the group.", None),
                label,
                groups,
                |g| g.nodes as u64,
            )?;
            group_gauges(
                e,
                (
                    &name("stale_nodes"),
                    "Nodes of the group not heard from within stale_after.",
                    None,
                ),
                label,
                groups,
                |g| g.stale as u64,
            )?;
            group_gauges(
                e,
                (
                    &name("backlog_events"),
                    "Events the group's nodes hold that the aggregator does not (sum).",
                    None,
                ),
                label,
                groups,
                |g| g.backlog_total,
            )?;
            group_gauges(
                e,
                (
                    &name("backlog_max_events"),
                    "Largest backlog of one node of the group.",
                    None,
                ),
                label,
                groups,
                |g| g.backlog_max,
            )?;
            group_gauges(
                e,
                (
                    &name("sync_debt_max"),
                    "Longest time since the last sync of a node of the group.",
                    seconds,
                ),
                label,
                groups,
                |g| g.sync_debt_max.as_secs(),
            )?;
            group_gauges(
                e,
                (
                    &name("oldest_unreceived_max"),
                    "Age of the oldest event known to wait on a node of the group.",
                    seconds,
                ),
                label,
                groups,
                |g| g.oldest_unreceived_max.as_secs(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_taken_over_the_window() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = RateWindow::default();
        assert_eq!(w.per_second(), 0.0);
        w.record(at(0), 100);
        assert_eq!(w.per_second(), 0.0, "one sample is no rate");
        w.record(at(1), 100);
        assert_eq!(w.per_second(), 0.0);
        w.record(at(2), 300);
        assert_eq!(w.per_second(), 100.0);
        // 1000 events in second 3; then quiet for the rest of the window.
        w.record(at(3), 1_300);
        for s in 4..=12 {
            w.record(at(s), 1_300);
        }
        // Baseline at 2 s (10 s before 12 s): (1300 - 300) / 10.
        assert_eq!(w.per_second(), 100.0);
        w.record(at(13), 1_300);
        assert_eq!(w.per_second(), 0.0, "the burst left the window");
        assert!(w.samples.len() <= 12, "the window stays bounded");
    }

    #[test]
    fn connection_guards_count_open_and_accepted() {
        let m = Metrics::default();
        let a = m.connection_opened();
        let b = m.connection_opened();
        assert_eq!(m.quic_open.get(), 2);
        drop(a);
        assert_eq!(m.quic_open.get(), 1);
        drop(b);
        assert_eq!(m.quic_open.get(), 0);
        assert_eq!(m.quic_accepted.get(), 2);
    }
}
