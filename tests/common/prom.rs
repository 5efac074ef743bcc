//! A strict checker of the Prometheus text exposition format (version 0.0.4) for what sluice's
//! `/metrics` serves, and lookups into a checked scrape.
//!
//! [`parse`] refuses anything a Prometheus server would misread or that sluice's writer
//! (`src/metrics/text.rs`) never produces:
//! - every line ends with `\n` (no `\r`, no blank lines, no comments other than `# HELP`/`# TYPE`);
//! - every family has exactly one `# HELP` and one `# TYPE` (`counter`, `gauge` or `histogram`),
//!   both before its first sample, and all of a family's lines form one group;
//! - metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*` (not
//!   `__`-prefixed, not repeated in a series), label values are quoted with only `\\`, `\"` and
//!   `\n` escapes; `{}` and trailing commas are refused;
//! - a value is a float (`+Inf`, `-Inf`, `NaN` or a decimal), optionally followed by an integer
//!   timestamp, separated by single spaces;
//! - no series (name and label set) appears twice;
//! - a counter's samples are named like the family and end in `_total`, and are not negative; a
//!   gauge's are named like the family;
//! - a histogram's samples are `<family>_bucket` (with `le`), `_sum` and `_count` (without);
//!   for each label set, the buckets come in increasing `le` order with non-decreasing integer
//!   counts, the last is `le="+Inf"` and equals `_count`, and `_sum` is present.
//!
//! [`cross_check`] reads the same text with the `prometheus-parse` crate (an independent,
//! lenient parser) and compares what both saw.

use std::collections::{BTreeMap, HashMap, HashSet};

/// A family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its `# HELP` (unescaped) and `# TYPE`.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: String,
    pub kind: Kind,
    pub help: String,
}

/// One sample line.
#[derive(Clone, Debug)]
pub struct Sample {
    /// As written: for a histogram, `<family>_bucket`, `_sum` or `_count`.
    pub name: String,
    /// Unescaped label values, in the order written.
    pub labels: Labels,
    pub value: f64,
    /// Index into [`Scrape::families`].
    pub family: usize,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(name, value)` in `want` is among this sample's labels.
    fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Label names and values, in the order written.
pub type Labels = Vec<(String, String)>;

/// A checked scrape.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub families: Vec<Family>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The samples named `name` (a histogram's are `<family>_bucket`, `_sum`, `_count`).
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the one series named `name` whose label set is exactly `labels` (in any
    /// order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| s.labels.len() == labels.len() && s.has_labels(labels))
            .map(|s| s.value)
    }

    /// The sum over every series named `name` whose labels include `labels`; `None` when no
    /// series matches (so a misspelt name or label fails the test instead of reading 0).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matched = self
            .series(name)
            .filter(|s| s.has_labels(labels))
            .peekable();
        matched.peek()?;
        Some(matched.map(|s| s.value).sum())
    }
}

/// What is known about a family while the text is read.
struct Seen {
    help: bool,
    kind: Option<Kind>,
    samples: usize,
}

/// Checks `text` (see the module doc) and returns its families and samples, or the first
/// problem as `line N: what (the line)`.
pub fn parse(text: &str) -> Result<Scrape, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut families: Vec<Family> = Vec::new();
    let mut seen: Vec<Seen> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut current: Option<usize> = None;
    let mut samples: Vec<Sample> = Vec::new();
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    for (n, line) in text.split_terminator('\n').enumerate() {
        let at = |what: String| format!("line {}: {what} ({line:?})", n + 1);
        if line.is_empty() {
            return Err(at("blank line".into()));
        }
        if line.contains('\r') {
            return Err(at("carriage return".into()));
        }
        if let Some(rest) = line.strip_prefix('#') {
            let (keyword, name, rest) = comment(rest).map_err(at)?;
            let i = match index.get(name) {
                Some(&i) => {
                    if current != Some(i) {
                        return Err(at(format!("family {name} is split into two groups")));
                    }
                    i
                }
                None => {
                    families.push(Family {
                        name: name.to_string(),
                        kind: Kind::Gauge,
                        help: String::new(),
                    });
                    seen.push(Seen {
                        help: false,
                        kind: None,
                        samples: 0,
                    });
                    index.insert(name.to_string(), families.len() - 1);
                    families.len() - 1
                }
            };
            current = Some(i);
            if seen[i].samples > 0 {
                return Err(at(format!("# {keyword} for {name} after its samples")));
            }
            if keyword == "HELP" {
                if seen[i].help {
                    return Err(at(format!("second # HELP for {name}")));
                }
                seen[i].help = true;
                families[i].help = unescape_help(rest).map_err(at)?;
            } else {
                if seen[i].kind.is_some() {
                    return Err(at(format!("second # TYPE for {name}")));
                }
                let kind = match rest {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "histogram" => Kind::Histogram,
                    other => return Err(at(format!("unknown type {other:?}"))),
                };
                seen[i].kind = Some(kind);
                families[i].kind = kind;
            }
            continue;
        }
        let sample = sample_line(line).map_err(at)?;
        let name = sample.name.as_str();
        let family = family_of(name, &index, &seen).ok_or_else(|| {
            at(match index.get(name) {
                Some(_) => format!("histogram sample {name} must be _bucket, _sum or _count"),
                None => format!("sample {name} has no # HELP and # TYPE before it"),
            })
        })?;
        if current != Some(family) {
            return Err(at(format!("sample {name} is outside its family's group")));
        }
        let fam = &families[family];
        if !seen[family].help || seen[family].kind.is_none() {
            return Err(at(format!(
                "family {} needs both # HELP and # TYPE before its samples",
                fam.name
            )));
        }
        match fam.kind {
            Kind::Counter => {
                if !name.ends_with("_total") {
                    return Err(at(format!("counter sample {name} does not end in _total")));
                }
                if sample.value.is_nan() || sample.value < 0.0 {
                    return Err(at(format!("counter {name} is negative or NaN")));
                }
            }
            Kind::Gauge => {}
            Kind::Histogram => {
                let is_bucket = name.ends_with("_bucket");
                let le = sample.labels.iter().any(|(k, _)| k == "le");
                if is_bucket != le {
                    return Err(at(if is_bucket {
                        "a histogram bucket needs an le label".into()
                    } else {
                        format!("{name} must not have an le label")
                    }));
                }
            }
        }
        let key = (
            sample.name.clone(),
            sample.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        );
        if !series.insert(key) {
            return Err(at("duplicate series".into()));
        }
        seen[family].samples += 1;
        samples.push(Sample { family, ..sample });
    }
    for (i, f) in families.iter().enumerate() {
        if !seen[i].help || seen[i].kind.is_none() {
            return Err(format!("family {} needs both # HELP and # TYPE", f.name));
        }
        if f.kind == Kind::Histogram {
            check_histogram(f, i, &samples)?;
        }
    }
    Ok(Scrape { families, samples })
}

/// Splits `# HELP name text` or `# TYPE name type` (after the `#`) into keyword, name and rest.
fn comment(rest: &str) -> Result<(&'static str, &str, &str), String> {
    let (keyword, rest) = if let Some(r) = rest.strip_prefix(" HELP ") {
        ("HELP", r)
    } else if let Some(r) = rest.strip_prefix(" TYPE ") {
        ("TYPE", r)
    } else {
        return Err("a comment other than # HELP or # TYPE".into());
    };
    let (name, rest) = rest
        .split_once(' ')
        .ok_or_else(|| format!("# {keyword} needs a name, a space and a text"))?;
    if !is_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    Ok((keyword, name, rest))
}

/// The family a sample belongs to: the family of its own name (counter, gauge), or the
/// histogram it is the `_bucket`, `_sum` or `_count` of.
fn family_of(name: &str, index: &HashMap<String, usize>, seen: &[Seen]) -> Option<usize> {
    if let Some(&i) = index.get(name) {
        if seen[i].kind != Some(Kind::Histogram) {
            return Some(i);
        }
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        let &i = index.get(base)?;
        (seen[i].kind == Some(Kind::Histogram)).then_some(i)
    })
}

/// Unescapes a `# HELP` text: only `\\` and `\n` are escapes.
fn unescape_help(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => return Err(format!("invalid escape \\{other:?} in # HELP")),
        }
    }
    Ok(out)
}

/// Parses `name{labels} value [timestamp]` (family left 0).
fn sample_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(after)?;
        labels = parsed;
        rest = after;
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected one space before the value")?;
    let (value, timestamp) = match rest.split_once(' ') {
        Some((v, t)) => (v, Some(t)),
        None => (rest, None),
    };
    let value = parse_value(value)?;
    if let Some(t) = timestamp {
        let digits = t.strip_prefix('-').unwrap_or(t);
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || t.parse::<i64>().is_err()
        {
            return Err(format!("invalid timestamp {t:?}"));
        }
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        family: 0,
    })
}

/// Parses `a="x",b="y"}` (after the `{`); returns the labels and what follows the `}`.
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    if s.starts_with('}') {
        return Err("empty label set {}".into());
    }
    loop {
        let eq = s.find('=').ok_or("a label without =")?;
        let name = &s[..eq];
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        if name.starts_with("__") {
            return Err(format!("label name {name:?} is reserved (__ prefix)"));
        }
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label {name} given twice"));
        }
        let quoted = s[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}'s value is not quoted"))?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name}'s value is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!(
                            "invalid escape {:?} in label {name}",
                            other.map(|(_, c)| c)
                        ))
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        let after = &quoted[end + 1..];
        if let Some(next) = after.strip_prefix(',') {
            if next.starts_with('}') {
                return Err("trailing comma in the label set".into());
            }
            s = next;
        } else if let Some(rest) = after.strip_prefix('}') {
            return Ok((labels, rest));
        } else {
            return Err(format!("expected , or }} after label {name}"));
        }
    }
}

/// A sample value: `+Inf`, `-Inf`, `NaN`, or a decimal (`[+-]digits[.digits][e[+-]digits]`).
fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    let unsigned = v.strip_prefix(['+', '-']).unwrap_or(v);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || !exponent_ok {
        return Err(format!("invalid value {v:?}"));
    }
    v.parse::<f64>().map_err(|_| format!("invalid value {v:?}"))
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The histogram rules for family `f` (index `i`): per label set (without `le`), buckets in
/// increasing `le` order with non-decreasing integer counts, ending at `+Inf` == `_count`, and
/// a `_sum`.
fn check_histogram(f: &Family, i: usize, samples: &[Sample]) -> Result<(), String> {
    let without_le = |s: &Sample| -> BTreeMap<String, String> {
        s.labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect()
    };
    let bucket = format!("{}_bucket", f.name);
    let sum = format!("{}_sum", f.name);
    let count = format!("{}_count", f.name);
    let mut sets: Vec<BTreeMap<String, String>> = Vec::new();
    for s in samples.iter().filter(|s| s.family == i) {
        let set = without_le(s);
        if !sets.contains(&set) {
            sets.push(set);
        }
    }
    for set in sets {
        let of_set = |name: &str| {
            samples
                .iter()
                .filter(|s| s.family == i && s.name == name && without_le(s) == set)
                .collect::<Vec<_>>()
        };
        let buckets = of_set(&bucket);
        let (mut last_le, mut last_count) = (f64::NEG_INFINITY, 0.0f64);
        for b in &buckets {
            let le_text = b.label("le").unwrap_or_default();
            let le = parse_value(le_text)
                .map_err(|_| format!("{}: le {le_text:?} is not a number", f.name))?;
            if le.is_nan() || le <= last_le {
                return Err(format!(
                    "{} {set:?}: le {le_text} is not above the previous bucket's",
                    f.name
                ));
            }
            if b.value < last_count || b.value.fract() != 0.0 {
                return Err(format!(
                    "{} {set:?}: bucket le={le_text} count {} is not a whole number at least the previous bucket's ({last_count})",
                    f.name, b.value
                ));
            }
            last_le = le;
            last_count = b.value;
        }
        if last_le != f64::INFINITY {
            return Err(format!("{} {set:?}: no le=\"+Inf\" bucket last", f.name));
        }
        match of_set(&count).as_slice() {
            [c] if c.value == last_count => {}
            [c] => {
                return Err(format!(
                    "{} {set:?}: _count {} differs from the +Inf bucket {last_count}",
                    f.name, c.value
                ))
            }
            _ => return Err(format!("{} {set:?}: no _count", f.name)),
        }
        if of_set(&sum).len() != 1 {
            return Err(format!("{} {set:?}: no _sum", f.name));
        }
    }
    Ok(())
}

/// Reads `text` with the `prometheus-parse` crate and checks that it saw the same samples
/// (names, kinds, label sets, values; histograms as their buckets) and a `# HELP` for every
/// family as `scrape` (from [`parse`] of the same text). That crate splits label sets on `,`
/// and `=` and does not unescape, so label values with `,`, `=`, `}`, `"` or `\` are refused
/// here rather than compared wrongly.
pub fn cross_check(text: &str, scrape: &Scrape) -> Result<(), String> {
    use prometheus_parse::Value;
    let canonical = |name: &str, labels: &BTreeMap<String, String>, kind: &str, value: String| {
        format!("{name}{labels:?} {kind} {value}")
    };
    let mut ours = Vec::new();
    let mut histograms: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for s in &scrape.samples {
        if let Some((k, v)) = s
            .labels
            .iter()
            .find(|(_, v)| v.contains([',', '=', '}', '"', '\\']))
        {
            return Err(format!(
                "label {k}={v:?} of {} is beyond what prometheus-parse reads",
                s.name
            ));
        }
        let family = &scrape.families[s.family];
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .filter(|(k, _)| !(family.kind == Kind::Histogram && k == "le"))
            .cloned()
            .collect();
        match family.kind {
            Kind::Counter => ours.push(canonical(
                &s.name,
                &labels,
                "counter",
                format!("{:?}", s.value),
            )),
            Kind::Gauge => ours.push(canonical(
                &s.name,
                &labels,
                "gauge",
                format!("{:?}", s.value),
            )),
            Kind::Histogram if s.name.ends_with("_bucket") => {
                let le = parse_value(s.label("le").unwrap_or_default())?;
                histograms
                    .entry((family.name.clone(), format!("{labels:?}")))
                    .or_default()
                    .push(format!("{le:?}:{:?}", s.value));
            }
            Kind::Histogram => ours.push(canonical(
                &s.name,
                &labels,
                "untyped",
                format!("{:?}", s.value),
            )),
        }
    }
    for ((name, labels), buckets) in histograms {
        ours.push(format!("{name}{labels} histogram {}", buckets.join(" ")));
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let theirs_scrape =
        prometheus_parse::Scrape::parse(lines).map_err(|e| format!("prometheus-parse: {e}"))?;
    let mut theirs = Vec::new();
    for s in &theirs_scrape.samples {
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let line = match &s.value {
            Value::Counter(v) => canonical(&s.metric, &labels, "counter", format!("{v:?}")),
            Value::Gauge(v) => canonical(&s.metric, &labels, "gauge", format!("{v:?}")),
            Value::Untyped(v) => canonical(&s.metric, &labels, "untyped", format!("{v:?}")),
            Value::Histogram(buckets) => format!(
                "{}{labels:?} histogram {}",
                s.metric,
                buckets
                    .iter()
                    .map(|b| format!("{:?}:{:?}", b.less_than, b.count))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Value::Summary(_) => {
                return Err(format!("prometheus-parse saw a summary: {}", s.metric))
            }
        };
        theirs.push(line);
    }
    ours.sort();
    theirs.sort();
    if ours != theirs {
        return Err(format!(
            "prometheus-parse read other samples:\n ours:   {ours:#?}\n theirs: {theirs:#?}"
        ));
    }
    for f in &scrape.families {
        if !theirs_scrape.docs.contains_key(&f.name) {
            return Err(format!("prometheus-parse saw no # HELP for {}", f.name));
        }
    }
    Ok(())
}
