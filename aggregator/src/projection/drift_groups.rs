//! Drift aggregated per group, kept up to date member by member, so a group
//! view walks the groups rather than the fleet.
//!
//! Counts by severity and by score bucket and the compliance sum are
//! reversible: a member's change takes its old numbers out and puts its new
//! ones in. The extremes (the ten worst nodes, the lowest compliance, the
//! longest staleness) are not; for each, a group keeps a short ranked list
//! of candidates ([`Top`]) that stays exact as long as every member outside
//! it ranks after its last entry. A member leaving a list shrinks it; a
//! list too short to answer while members outside it exist is refilled by
//! offering it every member again ([`GroupDrift::begin_refill`]), which the
//! fleet table does for all such groups in one pass when a view asks.
//! Results never depend on the order members came and went in.

use super::drift::{DriftAggregate, DriftSummary, Severity};
use sx_common::time::Span;

/// The drift-score buckets of [`DriftAggregate::score_distribution`].
const BUCKETS: [&str; 4] = ["0", "1-9", "10-99", "100+"];

fn bucket(score: u32) -> usize {
    usize::from(score > 0) + usize::from(score > 9) + usize::from(score > 99)
}

/// Compliance scores are summed in fixed point, in units of 2^-64: integer
/// sums do not depend on the order members come in (float sums do), can be
/// taken back exactly, and every score in [2^-11, 2^40] is represented
/// exactly.
const FIXED_POINT: f64 = 18_446_744_073_709_551_616.0;

/// Compliance scores beyond ±2^40 (nonsense: a score is in [0, 1]) are
/// summed as ±2^40.
const COMPLIANCE_LIMIT: f64 = 1_099_511_627_776.0;

/// How many of a group's worst nodes an aggregate lists.
const WORST: usize = 10;

/// Candidates kept for the worst list: room for members to leave before a
/// refill is needed.
const WORST_KEPT: usize = 48;

/// Candidates kept for the lowest compliance and the longest staleness.
const EXTREME_KEPT: usize = 8;

/// A [`DriftSummary`] as groups add it: the compliance score already
/// converted to its fixed-point term.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DriftMember {
    /// In units of 2^-64; zero without a compliance score. As two words
    /// (high first), so a member is aligned to 8 bytes, not 16.
    compliance_term: [u64; 2],
    compliance: f64,
    stale_by: Span,
    drift_score: u32,
    severity: Severity,
    has_compliance: bool,
}

impl DriftMember {
    pub fn of(s: &DriftSummary) -> Self {
        let has = s.compliance_score.is_some();
        // NaN counts as 0 and -0 as 0, here and in the sum, so scores are
        // totally ordered: deterministic for any input.
        let c = s.compliance_score.filter(|c| !c.is_nan()).unwrap_or(0.0) + 0.0;
        // Exact for scores in [2^-11, 2^40]; others are clamped. With terms
        // of at most 2^104, no sum of fewer than 2^23 members overflows.
        let term = (c.clamp(-COMPLIANCE_LIMIT, COMPLIANCE_LIMIT) * FIXED_POINT) as i128;
        DriftMember {
            compliance_term: if has {
                [(term >> 64) as u64, term as u64]
            } else {
                [0, 0]
            },
            compliance: c,
            stale_by: s.stale_by,
            drift_score: s.drift_score,
            severity: s.severity,
            has_compliance: has,
        }
    }

    pub fn summary(&self) -> DriftSummary {
        DriftSummary {
            severity: self.severity,
            drift_score: self.drift_score,
            compliance_score: self.has_compliance.then_some(self.compliance),
            stale_by: self.stale_by,
        }
    }

    fn compliance_term(&self) -> i128 {
        let [high, low] = self.compliance_term;
        (i128::from(high as i64) << 64) | i128::from(low)
    }
}

/// Up to `N` members of a group (row, value), best first: exact while every
/// member of the group not in it ranks after its last entry.
#[derive(Clone, Copy, Debug)]
struct Top<T, const N: usize> {
    len: u8,
    /// Every qualifying member of the group is in the list.
    complete: bool,
    items: [(u32, T); N],
}

impl<T: Copy + Default, const N: usize> Default for Top<T, N> {
    fn default() -> Self {
        Top {
            len: 0,
            complete: true,
            items: [(0, T::default()); N],
        }
    }
}

impl<T: Copy, const N: usize> Top<T, N> {
    fn as_slice(&self) -> &[(u32, T)] {
        &self.items[..usize::from(self.len)]
    }

    /// A qualifying member joins or changes; `before(a, b)`: a ranks
    /// before b (a strict total order over members).
    fn offer(&mut self, member: (u32, T), before: impl Fn(&(u32, T), &(u32, T)) -> bool) {
        let len = usize::from(self.len);
        if !self.complete
            && self
                .as_slice()
                .last()
                .is_none_or(|last| !before(&member, last))
        {
            // Ranks with the members outside the list.
            return;
        }
        let at = self.as_slice().partition_point(|x| before(x, &member));
        if len == N {
            // The last entry (or the newcomer) leaves the list.
            self.complete = false;
            if at == N {
                return;
            }
            self.items.copy_within(at..N - 1, at + 1);
        } else {
            self.items.copy_within(at..len, at + 1);
            self.len += 1;
        }
        self.items[at] = member;
    }

    /// A member leaves (or is about to be offered again with a new value).
    fn withdraw(&mut self, row: u32) {
        let len = usize::from(self.len);
        if let Some(i) = self.as_slice().iter().position(|x| x.0 == row) {
            self.items.copy_within(i + 1..len, i);
            self.len -= 1;
        }
    }

    /// Whether the list knows the group's first `need` members.
    fn knows(&self, need: usize) -> bool {
        self.complete || usize::from(self.len) >= need
    }

    /// Whether the list has lost half its room to members leaving.
    fn low(&self) -> bool {
        !self.knows(N / 2)
    }
}

/// The drift of one group, kept up to date as members join, change and
/// leave.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupDrift {
    /// In units of 2^-64.
    compliance_sum: i128,
    compliance_count: u32,
    by_severity: [u32; Severity::ALL.len()],
    buckets: [u32; BUCKETS.len()],
    /// Members with a positive drift score, highest first, ties by node id.
    worst: Top<u32, WORST_KEPT>,
    /// Members with a compliance score, lowest first.
    lowest: Top<f64, EXTREME_KEPT>,
    /// Members with a positive staleness, longest first.
    stalest: Top<Span, EXTREME_KEPT>,
}

impl GroupDrift {
    /// How many members the group has.
    pub(crate) fn nodes(&self) -> u32 {
        self.by_severity.iter().sum()
    }

    /// Member `row` joins; `node` names rows (ties among the worst are
    /// broken by node id).
    pub(crate) fn add<'a>(&mut self, row: u32, m: &DriftMember, node: impl Fn(u32) -> &'a str) {
        self.by_severity[m.severity as usize] += 1;
        self.buckets[bucket(m.drift_score)] += 1;
        self.compliance_sum += m.compliance_term();
        self.compliance_count += u32::from(m.has_compliance);
        self.offer(row, m, node);
    }

    /// Member `row`, with the numbers it joined with, leaves.
    pub(crate) fn remove(&mut self, row: u32, m: &DriftMember) {
        self.by_severity[m.severity as usize] -= 1;
        self.buckets[bucket(m.drift_score)] -= 1;
        self.compliance_sum -= m.compliance_term();
        self.compliance_count -= u32::from(m.has_compliance);
        if m.drift_score > 0 {
            self.worst.withdraw(row);
        }
        if m.has_compliance {
            self.lowest.withdraw(row);
        }
        if m.stale_by > Span::ZERO {
            self.stalest.withdraw(row);
        }
    }

    /// Whether an extreme can no longer be told from the lists: members
    /// left them and others, outside, may now rank first.
    pub(crate) fn needs_refill(&self) -> bool {
        !(self.worst.knows(WORST) && self.lowest.knows(1) && self.stalest.knows(1))
    }

    /// Whether the lists have lost half their candidates: worth refilling
    /// while a pass over the members is being made anyway, so passes stay
    /// rare.
    pub(crate) fn runs_low(&self) -> bool {
        self.worst.low() || self.lowest.low() || self.stalest.low()
    }

    /// Empties the lists for a refill: every member must then be passed to
    /// [`refill`](Self::refill), once.
    pub(crate) fn begin_refill(&mut self) {
        self.worst = Top::default();
        self.lowest = Top::default();
        self.stalest = Top::default();
    }

    /// Offers a member to the lists being refilled.
    pub(crate) fn refill<'a>(&mut self, row: u32, m: &DriftMember, node: impl Fn(u32) -> &'a str) {
        self.offer(row, m, node);
    }

    fn offer<'a>(&mut self, row: u32, m: &DriftMember, node: impl Fn(u32) -> &'a str) {
        if m.drift_score > 0 {
            self.worst.offer((row, m.drift_score), |a, b| {
                a.1 > b.1 || (a.1 == b.1 && node(a.0) < node(b.0))
            });
        }
        if m.has_compliance {
            self.lowest.offer((row, m.compliance), |a, b| a.1 < b.1);
        }
        if m.stale_by > Span::ZERO {
            self.stalest.offer((row, m.stale_by), |a, b| a.1 > b.1);
        }
    }

    /// The group's aggregate; `node` names rows.
    pub(crate) fn finish<'a>(&self, group: &str, node: impl Fn(u32) -> &'a str) -> DriftAggregate {
        let count = self.compliance_count;
        DriftAggregate {
            group: group.to_owned(),
            nodes: self.nodes() as usize,
            by_severity: Severity::ALL
                .into_iter()
                .zip(self.by_severity.map(|n| n as usize))
                .collect(),
            score_distribution: BUCKETS
                .iter()
                .zip(self.buckets)
                .filter(|(_, n)| *n > 0)
                .map(|(b, n)| ((*b).to_owned(), n as usize))
                .collect(),
            worst_nodes: self
                .worst
                .as_slice()
                .iter()
                .take(WORST)
                .map(|(row, score)| (node(*row).to_owned(), *score))
                .collect(),
            compliance_mean: (count > 0)
                .then(|| self.compliance_sum as f64 / FIXED_POINT / f64::from(count)),
            compliance_min: (count > 0)
                .then(|| self.lowest.as_slice().first().map_or(0.0, |m| m.1)),
            stale_by_max: self.stalest.as_slice().first().map_or(Span::ZERO, |m| m.1),
        }
    }
}

/// Aggregates summaries of one group: counts by severity and score bucket,
/// the ten worst nodes (highest score, ties by node id), compliance mean
/// and minimum, the longest staleness.
pub fn aggregate<'a>(
    group: &str,
    members: impl IntoIterator<Item = (&'a str, &'a DriftSummary)>,
) -> DriftAggregate {
    let mut acc = GroupDrift::default();
    let mut names: Vec<&str> = Vec::new();
    for (node, s) in members {
        let row = names.len() as u32;
        names.push(node);
        acc.add(row, &DriftMember::of(s), |r| names[r as usize]);
    }
    acc.finish(group, |r| names[r as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn summary(score: u32, compliance: Option<u8>, stale: u64) -> DriftSummary {
        DriftSummary {
            severity: Severity::ALL[(score % 5) as usize],
            drift_score: score,
            compliance_score: compliance.map(|c| f64::from(c) / 100.0),
            stale_by: Span(stale),
        }
    }

    /// The aggregate of the members the plain way: sort everything.
    fn naive(group: &str, members: &[(String, DriftSummary)]) -> DriftAggregate {
        let mut worst: Vec<(String, u32)> = members
            .iter()
            .filter(|(_, s)| s.drift_score > 0)
            .map(|(n, s)| (n.clone(), s.drift_score))
            .collect();
        worst.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        worst.truncate(WORST);
        let scores: Vec<f64> = members
            .iter()
            .filter_map(|(_, s)| s.compliance_score)
            .collect();
        let mut by_severity: std::collections::BTreeMap<Severity, usize> =
            Severity::ALL.into_iter().map(|s| (s, 0)).collect();
        let mut distribution = std::collections::BTreeMap::new();
        for (_, s) in members {
            *by_severity.entry(s.severity).or_default() += 1;
            *distribution
                .entry(BUCKETS[bucket(s.drift_score)].to_owned())
                .or_default() += 1;
        }
        DriftAggregate {
            group: group.to_owned(),
            nodes: members.len(),
            by_severity,
            score_distribution: distribution,
            worst_nodes: worst,
            // Scores are hundredths: the fixed-point sum is exact enough
            // that the mean equals the float mean of these few values
            // computed exactly (compared with a tolerance below).
            compliance_mean: (!scores.is_empty())
                .then(|| scores.iter().sum::<f64>() / scores.len() as f64),
            compliance_min: scores.iter().copied().reduce(f64::min),
            stale_by_max: members
                .iter()
                .map(|(_, s)| s.stale_by)
                .max()
                .unwrap_or(Span::ZERO),
        }
    }

    fn same(a: &DriftAggregate, b: &DriftAggregate) -> Result<(), TestCaseError> {
        let mean = |x: &DriftAggregate| x.compliance_mean;
        prop_assert_eq!(mean(a).is_some(), mean(b).is_some());
        if let (Some(x), Some(y)) = (mean(a), mean(b)) {
            prop_assert!((x - y).abs() < 1e-9, "mean {x} vs {y}");
        }
        let strip = |x: &DriftAggregate| DriftAggregate {
            compliance_mean: None,
            ..x.clone()
        };
        prop_assert_eq!(strip(a), strip(b));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A group whose members come, change and go in any order (often
        /// enough to empty its candidate lists and force refills) gives the
        /// aggregate of its current members computed from scratch.
        #[test]
        fn kept_up_to_date_equals_from_scratch(
            steps in proptest::collection::vec(
                (0u32..120, 0u32..40, proptest::option::of(0u8..=100), 0u64..50),
                1..600,
            ),
        ) {
            let names: Vec<String> = (0..120).map(|i| format!("n-{:03}", (i * 37) % 120)).collect();
            let node = |r: u32| names[r as usize].as_str();
            let mut group = GroupDrift::default();
            let mut current: Vec<Option<DriftMember>> = vec![None; names.len()];
            for (i, (row, score, compliance, stale)) in steps.into_iter().enumerate() {
                // Every third step takes the member out instead.
                let next = (i % 3 != 2).then(|| DriftMember::of(&summary(score, compliance, stale)));
                if let Some(old) = current[row as usize].take() {
                    group.remove(row, &old);
                }
                if let Some(m) = next {
                    group.add(row, &m, node);
                    current[row as usize] = Some(m);
                }
                if group.needs_refill() {
                    group.begin_refill();
                    for (r, m) in current.iter().enumerate() {
                        if let Some(m) = m {
                            group.refill(r as u32, m, node);
                        }
                    }
                    prop_assert!(!group.needs_refill());
                }
                let members: Vec<(String, DriftSummary)> = current
                    .iter()
                    .enumerate()
                    .filter_map(|(r, m)| Some((names[r].clone(), m.as_ref()?.summary())))
                    .collect();
                if members.is_empty() {
                    prop_assert_eq!(group.nodes(), 0);
                    continue;
                }
                same(&group.finish("g", node), &naive("g", &members))?;
            }
        }
    }

    #[test]
    fn lists_run_short_and_are_refilled() {
        let names: Vec<String> = (0..100).map(|i| format!("n-{i:03}")).collect();
        let node = |r: u32| names[r as usize].as_str();
        let mut group = GroupDrift::default();
        let members: Vec<DriftMember> = (0..100)
            .map(|i| DriftMember::of(&summary(i + 1, Some(50), 0)))
            .collect();
        for (r, m) in members.iter().enumerate() {
            group.add(r as u32, m, node);
        }
        assert!(!group.needs_refill());
        // All but nine of the kept worst leave: members outside the list
        // remain, so the tenth worst is unknown.
        let left = 100 - (WORST_KEPT - (WORST - 1));
        for r in (left..100).rev() {
            group.remove(r as u32, &members[r]);
        }
        assert!(group.needs_refill());
        group.begin_refill();
        for (r, m) in members.iter().enumerate().take(left) {
            group.refill(r as u32, m, node);
        }
        assert!(!group.needs_refill() && !group.runs_low());
        let worst = group.finish("g", node).worst_nodes;
        let first = format!("n-{:03}", left - 1);
        assert_eq!(worst.first(), Some(&(first, left as u32)));
        assert_eq!(worst.len(), WORST);
    }

    #[test]
    fn nan_and_negative_zero_compliance_count_as_zero() {
        let s = |c: f64| DriftSummary {
            compliance_score: Some(c),
            ..Default::default()
        };
        let a = aggregate("g", [("a", &s(f64::NAN)), ("b", &s(-0.0)), ("c", &s(0.5))]);
        assert_eq!(a.compliance_min.map(f64::to_bits), Some(0.0f64.to_bits()));
        assert_eq!(a.compliance_mean, Some(0.5 / 3.0));
    }
}
