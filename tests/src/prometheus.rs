//! A strict reader of the Prometheus text exposition format (0.0.4), for
//! tests of `/metrics`: it refuses what a Prometheus server would refuse
//! (bad names, bad label syntax or escapes, unparsable values, a sample
//! before its family's `# TYPE`, a family declared twice or split, a series
//! twice, negative or NaN counters, no final newline) and answers the value
//! of a series.

use anyhow::{Result, bail, ensure};
use std::collections::{BTreeMap, HashSet};

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → (type, help).
    pub families: BTreeMap<String, (String, String)>,
    pub samples: Vec<Sample>,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

fn metric_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn label_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<f64> {
    Ok(match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        t => t
            .parse::<f64>()
            .map_err(|e| anyhow::anyhow!("bad value {t:?}: {e}"))?,
    })
}

/// The family a sample name belongs to: itself, or for histograms and
/// summaries the name without `_bucket`, `_sum`, `_count`.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, (String, String)>) -> &'a str {
    if families.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|(t, _)| t == "histogram" || t == "summary")
        {
            return base;
        }
    }
    name
}

/// Parses `{a="x",b="y"}` at the start of `text`; returns the labels and
/// the rest.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').unwrap_or(text);
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest
            .split_once("=\"")
            .ok_or_else(|| anyhow::anyhow!("bad label in {text:?}"))?;
        ensure!(label_name_ok(name), "bad label name {name:?}");
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => bail!("bad escape {other:?} in {text:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => bail!("newline in a label value"),
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value in {text:?}"),
            }
        };
        ensure!(
            labels.insert(name.to_owned(), value).is_none(),
            "label {name:?} twice in {text:?}"
        );
        rest = &r[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            ensure!(rest.starts_with('}'), "expected , or }} in {text:?}");
        }
    }
}

/// Parses an exposition strictly.
pub fn parse(text: &str) -> Result<Exposition> {
    ensure!(
        text.is_empty() || text.ends_with('\n'),
        "the exposition does not end with a newline"
    );
    let mut out = Exposition::default();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    let mut enter = |family: &str, current: &mut Option<String>| -> Result<()> {
        if current.as_deref() != Some(family) {
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            ensure!(
                !finished.contains(family),
                "family {family} is split in two"
            );
            *current = Some(family.to_owned());
        }
        Ok(())
    };
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            ensure!(metric_name_ok(name), "bad name, {}", at());
            ensure!(helps.insert(name.to_owned()), "HELP twice, {}", at());
            enter(name, &mut current)?;
            out.families.entry(name.to_owned()).or_default().1 = help.to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| anyhow::anyhow!("TYPE without a type, {}", at()))?;
            ensure!(metric_name_ok(name), "bad name, {}", at());
            ensure!(TYPES.contains(&kind), "unknown type, {}", at());
            ensure!(
                out.families.get(name).is_none_or(|(t, _)| t.is_empty()),
                "TYPE twice, {}",
                at()
            );
            ensure!(
                !out.samples.iter().any(|s| s.name == name),
                "TYPE after samples, {}",
                at()
            );
            enter(name, &mut current)?;
            out.families.entry(name.to_owned()).or_default().0 = kind.to_owned();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| anyhow::anyhow!("no value, {}", at()))?;
        let name = &line[..name_end];
        ensure!(metric_name_ok(name), "bad name, {}", at());
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| anyhow::anyhow!("no space before the value, {}", at()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default())?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| anyhow::anyhow!("bad timestamp ({e}), {}", at()))?;
        }
        ensure!(fields.next().is_none(), "trailing fields, {}", at());
        let family = family_of(name, &out.families).to_owned();
        let Some((kind, _)) = out.families.get(&family) else {
            bail!("sample without a TYPE, {}", at());
        };
        ensure!(!kind.is_empty(), "sample without a TYPE, {}", at());
        if kind == "counter" {
            ensure!(value >= 0.0, "a counter below 0 or NaN, {}", at());
        }
        enter(&family, &mut current)?;
        ensure!(
            series.insert((name.to_owned(), labels.clone())),
            "series twice, {}",
            at()
        );
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

impl Exposition {
    /// The value of the series `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// [`value`](Self::value), or an error naming the missing series.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.value(name, labels)
            .ok_or_else(|| anyhow::anyhow!("no series {name}{labels:?} in the exposition"))
    }

    /// Every series of `name`: (labels, value).
    pub fn series(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (&s.labels, s.value))
            .collect()
    }

    /// The type of the family `name`.
    pub fn kind(&self, name: &str) -> Option<&str> {
        self.families.get(name).map(|(t, _)| t.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_exposition_parses_and_bad_ones_do_not() {
        let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
                    # HELP g A gauge.\n# TYPE g gauge\ng{zone=\"z\\\"1\"} 1.5\ng{zone=\"z2\"} -2\n";
        let e = parse(good).expect("parses");
        assert_eq!(e.get("a_total", &[]).expect("a"), 3.0);
        assert_eq!(e.get("g", &[("zone", "z\"1")]).expect("g"), 1.5);
        assert_eq!(e.kind("g"), Some("gauge"));
        for bad in [
            "# TYPE a counter\na 1",                 // no final newline
            "a 1\n",                                 // no TYPE
            "# TYPE a counter\na -1\n",              // negative counter
            "# TYPE a gauge\na{1x=\"v\"} 1\n",       // bad label name
            "# TYPE a gauge\na{x=\"v} 1\n",          // unterminated
            "# TYPE a gauge\na{x=\"\\t\"} 1\n",      // bad escape
            "# TYPE a gauge\na one\n",               // bad value
            "# TYPE a gauge\na 1\na 2\n",            // series twice
            "# TYPE a gauge\n# TYPE a gauge\na 1\n", // TYPE twice
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 1\n", // split
            "# TYPE a-b gauge\n",                    // bad name
            "# TYPE a gauge\na 1 2 3\n",             // trailing field
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
