//! Expectations about how a balancer spreads requests (`--expect round-robin|even|weights=...|
//! sticky=HEADER`) and the pure logic that judges them. Nothing here does I/O or knows about
//! HTTP: the workers feed in backend names, these functions answer with a [`Verdict`].
//!
//! Three kinds of check:
//! - [`PeriodicChecker`] watches the *order* of backends on one connection, online, in constant
//!   memory: it learns the first period and then only compares each new entry with the one the
//!   period predicts, keeping a small ring of recent entries to explain a failure.
//! - [`check_counts`] judges the *totals* (several connections interleave, so their order means
//!   nothing; only the counts do).
//! - [`check_sticky`] judges a [`KeySpread`], which backends served each value of a request
//!   header: a balancer that hashes on the header sends every value to one backend.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name under which responses without the backend header are counted. Such a response
/// always fails an expectation: the balancer (or a backend) did not say who answered.
pub const NO_BACKEND: &str = "(none)";

/// Entries kept before a violation, to show the sequence around it.
const CONTEXT_BEFORE: usize = 6;
/// Entries collected after a violation before the checker stops looking.
const CONTEXT_AFTER: usize = 3;

/// What the distribution over backends must look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Expectation {
    /// Strict alternation over the set of backends seen (one connection), or equal counts within
    /// the number of connections (several).
    RoundRobin,
    /// Every backend gets the same share, within the tolerance.
    Even,
    /// Shares proportional to these weights, within the tolerance.
    Weights(Vec<(String, u32)>),
    /// Every value of this request header (lower case) is always served by the same backend.
    Sticky(String),
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expectation::RoundRobin => f.write_str("round-robin"),
            Expectation::Even => f.write_str("even"),
            Expectation::Weights(w) => {
                f.write_str("weights=")?;
                for (i, (name, weight)) in w.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep}{name}:{weight}")?;
                }
                Ok(())
            }
            Expectation::Sticky(header) => write!(f, "sticky={header}"),
        }
    }
}

impl FromStr for Expectation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round-robin" | "roundrobin" | "rr" => return Ok(Expectation::RoundRobin),
            "even" => return Ok(Expectation::Even),
            _ => {}
        }
        let usage = "expected round-robin, even, weights=NAME:W,NAME:W... or sticky=HEADER";
        if let Some(header) = s.strip_prefix("sticky=") {
            let name = http::HeaderName::from_bytes(header.trim().as_bytes()).map_err(|_| {
                format!("`{header}` in `{s}` is not a header name; write it like sticky=X-User")
            })?;
            return Ok(Expectation::Sticky(name.as_str().to_owned()));
        }
        let list = s
            .strip_prefix("weights=")
            .ok_or_else(|| format!("unknown expectation `{s}`; {usage}"))?;
        let mut weights = Vec::new();
        for item in list.split(',') {
            let (name, w) = item
                .split_once(':')
                .ok_or_else(|| format!("`{item}` in `{s}` is not NAME:WEIGHT; {usage}"))?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("weight `{w}` of `{name}` is not a whole number"))?;
            weights.push((name.trim().to_owned(), w));
        }
        if weights.iter().all(|(_, w)| *w == 0) {
            return Err(format!("`{s}`: at least one weight must be above 0"));
        }
        Ok(Expectation::Weights(weights))
    }
}

impl From<Expectation> for String {
    fn from(e: Expectation) -> String {
        e.to_string()
    }
}

impl TryFrom<String> for Expectation {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The judgement on an expectation, as it appears in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub expectation: Expectation,
    pub passed: bool,
    /// One line saying why it passed or how it failed, e.g.
    /// `request #7 went to b, expected a; sequence around it: ... a b a b [b] a`.
    pub detail: String,
    /// The (1-based) request index where a strict round robin first broke.
    pub first_violation: Option<u64>,
}

/// Where a strictly periodic sequence first broke, with the entries around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation<T> {
    /// Request index (as given to [`PeriodicChecker::observe`]) of the offending entry.
    pub index: u64,
    /// Who served it (`None`: the response had no backend header).
    pub got: Option<T>,
    /// Who the period predicted (`None` when the response had no header at all and nothing can
    /// be predicted yet).
    pub expected: Option<T>,
    /// Up to `CONTEXT_BEFORE` (6) entries before it, oldest first; `truncated` if there were more.
    pub before: Vec<Option<T>>,
    pub truncated: bool,
    /// Up to `CONTEXT_AFTER` (3) entries after it.
    pub after: Vec<Option<T>>,
}

/// Online check that a sequence of backends is strictly periodic over the set seen:
///
/// ```text
///   a b a b a b      period [a b]     passes
///   a b c a b c a    period [a b c]   passes
///   a a b a a b      period [a], then b where a was due at #3: fails
///   a b b a          b repeats before the period closed at #3: fails
/// ```
///
/// The period is learned from the first entries: it grows with each new name and closes when the
/// first name comes back. After that each entry must be the one the period predicts. Memory is
/// the period plus a ring of `CONTEXT_BEFORE` recent entries, however long the run.
#[derive(Debug, Clone)]
pub struct PeriodicChecker<T> {
    period: Vec<T>,
    /// `true` once the first name came back, i.e. the period is known.
    closed: bool,
    /// Position in `period` of the next expected entry (when closed).
    next: usize,
    observed: u64,
    recent: VecDeque<Option<T>>,
    violation: Option<Violation<T>>,
}

impl<T: Clone + PartialEq> Default for PeriodicChecker<T> {
    fn default() -> Self {
        PeriodicChecker {
            period: Vec::new(),
            closed: false,
            next: 0,
            observed: 0,
            recent: VecDeque::with_capacity(CONTEXT_BEFORE),
            violation: None,
        }
    }
}

impl<T: Clone + PartialEq> PeriodicChecker<T> {
    /// Feeds the backend that served request `index` (`None`: no backend header).
    pub fn observe(&mut self, index: u64, backend: Option<&T>) {
        if let Some(v) = &mut self.violation {
            if v.after.len() < CONTEXT_AFTER {
                v.after.push(backend.cloned());
            }
            return;
        }
        self.observed += 1;
        let expected = self.expected();
        let ok = match backend {
            None => false,
            Some(b) if self.closed => Some(b) == expected.as_ref(),
            Some(b) => {
                if self.period.first() == Some(b) {
                    // The first backend came back: the period is complete.
                    self.closed = true;
                    self.next = 1 % self.period.len();
                    true
                } else if self.period.contains(b) {
                    false
                } else {
                    self.period.push(b.clone());
                    true
                }
            }
        };
        if ok {
            if self.recent.len() == CONTEXT_BEFORE {
                self.recent.pop_front();
            }
            self.recent.push_back(backend.cloned());
            return;
        }
        self.violation = Some(Violation {
            index,
            got: backend.cloned(),
            expected,
            truncated: self.observed > self.recent.len() as u64 + 1,
            before: self.recent.iter().cloned().collect(),
            after: Vec::new(),
        });
    }

    /// The backend the period predicts next: the next slot of a closed period, or (while still
    /// learning) the first backend, since a repeat of anything else breaks the period.
    fn expected(&mut self) -> Option<T> {
        if self.closed {
            let e = self.period.get(self.next).cloned();
            self.next = (self.next + 1) % self.period.len().max(1);
            e
        } else {
            self.period.first().cloned()
        }
    }

    /// The period learned so far.
    pub fn period(&self) -> &[T] {
        &self.period
    }

    pub fn violation(&self) -> Option<&Violation<T>> {
        self.violation.as_ref()
    }
}

/// Turns the state of a finished [`PeriodicChecker`] into a verdict. `name` says how to print an
/// entry (workers feed small ids, not strings, to keep the hot path free of allocations).
pub fn periodic_verdict<T: Clone + PartialEq>(
    checker: &PeriodicChecker<T>,
    header: &str,
    name: impl Fn(&T) -> String,
) -> Verdict {
    let backend = name;
    let name = |b: &Option<T>| b.as_ref().map_or_else(|| NO_BACKEND.to_owned(), &backend);
    let expectation = Expectation::RoundRobin;
    match checker.violation() {
        None if checker.period().is_empty() => Verdict {
            expectation,
            passed: false,
            detail: "no responses to judge".to_owned(),
            first_violation: None,
        },
        None => Verdict {
            expectation,
            passed: true,
            detail: format!(
                "strictly periodic over {} responses: {} (period {})",
                checker.observed,
                checker
                    .period()
                    .iter()
                    .map(&backend)
                    .collect::<Vec<_>>()
                    .join(" "),
                checker.period().len()
            ),
            first_violation: None,
        },
        Some(v) => {
            let what = match (&v.got, &v.expected) {
                (None, _) => format!("request #{} had no {header} header", v.index),
                (Some(_), Some(e)) => format!(
                    "request #{} went to {}, expected {}",
                    v.index,
                    name(&v.got),
                    name(&Some(e.clone()))
                ),
                (Some(_), None) => format!("request #{} went to {}", v.index, name(&v.got)),
            };
            let mut seq = Vec::new();
            if v.truncated {
                seq.push("...".to_owned());
            }
            seq.extend(v.before.iter().map(name));
            seq.push(format!("[{}]", name(&v.got)));
            seq.extend(v.after.iter().map(name));
            Verdict {
                expectation,
                passed: false,
                detail: format!("{what}; sequence around it: {}", seq.join(" ")),
                first_violation: Some(v.index),
            }
        }
    }
}

/// Judges the totals per backend. `counts` holds every backend seen, including [`NO_BACKEND`] if
/// some responses lacked the header. `connections` is the slack a round robin gets when several
/// connections interleave: each may have one request in flight that the others have not matched.
pub fn check_counts(
    expectation: &Expectation,
    counts: &[(String, u64)],
    tolerance: f64,
    connections: usize,
) -> Verdict {
    let total: u64 = counts.iter().map(|(_, c)| c).sum();
    let fail = |detail: String| Verdict {
        expectation: expectation.clone(),
        passed: false,
        detail,
        first_violation: None,
    };
    if total == 0 {
        return fail("no responses to judge".to_owned());
    }
    if let Some((_, c)) = counts.iter().find(|(n, c)| n == NO_BACKEND && *c > 0) {
        return fail(format!(
            "{c} responses did not say which backend served them"
        ));
    }
    let share = |c: u64| c as f64 / total as f64;
    let mut problems = Vec::new();
    let detail_ok = match expectation {
        Expectation::RoundRobin => {
            let (min, max) = counts
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), (_, c)| (lo.min(*c), hi.max(*c)));
            if max - min > connections as u64 {
                problems.push(format!(
                    "counts differ by {} (from {min} to {max}), more than the {connections} \
                     that {connections} connection(s) can explain",
                    max - min
                ));
            }
            format!(
                "counts within {} of each other: {}",
                connections,
                list(counts)
            )
        }
        Expectation::Even => {
            let target = 1.0 / counts.len() as f64;
            for (n, c) in counts {
                within(n, share(*c), target, tolerance, &mut problems);
            }
            format!(
                "shares within {:.0}% of even: {}",
                tolerance * 100.0,
                list(counts)
            )
        }
        // Judged per key by `check_sticky`; the totals say nothing about it.
        Expectation::Sticky(_) => format!("counts: {}", list(counts)),
        Expectation::Weights(weights) => {
            let sum: u32 = weights.iter().map(|(_, w)| w).sum();
            for (n, w) in weights {
                let c = counts.iter().find(|(m, _)| m == n).map_or(0, |(_, c)| *c);
                within(
                    n,
                    share(c),
                    f64::from(*w) / f64::from(sum),
                    tolerance,
                    &mut problems,
                );
            }
            for (n, c) in counts {
                if !weights.iter().any(|(m, _)| m == n) {
                    problems.push(format!("{n} served {c} responses but has no weight"));
                }
            }
            format!(
                "shares within {:.0}% of the weights: {}",
                tolerance * 100.0,
                list(counts)
            )
        }
    };
    if problems.is_empty() {
        Verdict {
            expectation: expectation.clone(),
            passed: true,
            detail: detail_ok,
            first_violation: None,
        }
    } else {
        fail(problems.join("; "))
    }
}

/// Which backends served each value of a request header (`--expect sticky=HEADER`): value ->
/// backend name -> responses. Memory is one entry per key and backend, bounded by `--keys`. It
/// travels in the JSON report whole, so that `loadgen merge` judges stickiness across machines
/// exactly: a key that one machine saw on `a` and another on `b` moved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySpread {
    /// The request header (lower case).
    pub header: String,
    pub keys: BTreeMap<String, BTreeMap<String, u64>>,
}

impl KeySpread {
    pub fn new(header: &str) -> KeySpread {
        KeySpread {
            header: header.to_owned(),
            keys: BTreeMap::new(),
        }
    }

    /// Counts `responses` for `key` served by `backend`.
    pub fn count(&mut self, key: &str, backend: &str, responses: u64) {
        let backends = match self.keys.get_mut(key) {
            Some(b) => b,
            None => self.keys.entry(key.to_owned()).or_default(),
        };
        *backends.entry(backend.to_owned()).or_default() += responses;
    }

    /// Adds every count of `other` (a run on another machine).
    pub fn add(&mut self, other: &KeySpread) {
        for (key, backends) in &other.keys {
            for (backend, n) in backends {
                self.count(key, backend, *n);
            }
        }
    }

    /// The keys served by more than one backend, in key order.
    pub fn moved(&self) -> impl Iterator<Item = (&String, &BTreeMap<String, u64>)> {
        self.keys.iter().filter(|(_, backends)| backends.len() > 1)
    }
}

/// Examples of moved keys a failed sticky verdict names.
const MOVED_EXAMPLES: usize = 3;

/// Judges `--expect sticky=HEADER`: passes when every key was served by one backend only.
///
/// ```text
///   key   backends seen        verdict
///   7     a a a a              stays
///   12    b b b                stays
///   3     a b a                moved: fails, naming key 3 and a (2), b (1)
/// ```
pub fn check_sticky(spread: &KeySpread) -> Verdict {
    let expectation = Expectation::Sticky(spread.header.clone());
    let header = &spread.header;
    let keys = spread.keys.len();
    let fail = |detail: String| Verdict {
        expectation: expectation.clone(),
        passed: false,
        detail,
        first_violation: None,
    };
    if keys == 0 {
        return fail("no responses to judge".to_owned());
    }
    let unnamed: u64 = spread.keys.values().filter_map(|b| b.get(NO_BACKEND)).sum();
    if unnamed > 0 {
        return fail(format!(
            "{unnamed} responses did not say which backend served them"
        ));
    }
    let moved: Vec<_> = spread.moved().collect();
    if moved.is_empty() {
        let mut per_backend: BTreeMap<&str, u64> = BTreeMap::new();
        for backends in spread.keys.values() {
            for b in backends.keys() {
                *per_backend.entry(b).or_default() += 1;
            }
        }
        let spread_list = per_backend
            .iter()
            .map(|(b, n)| format!("{b}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Verdict {
            expectation,
            passed: true,
            detail: format!(
                "{keys} keys ({header} values), 0 moved: each always on the same backend; \
                 keys per backend: {spread_list}"
            ),
            first_violation: None,
        };
    }
    let examples = moved
        .iter()
        .take(MOVED_EXAMPLES)
        .map(|(key, backends)| {
            let seen = backends
                .iter()
                .map(|(b, n)| format!("{b} ({n})"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{header}: {key} was served by {seen}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    let more = match moved.len().saturating_sub(MOVED_EXAMPLES) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    fail(format!(
        "{} of {keys} keys ({header} values) moved between backends: {examples}{more}",
        moved.len()
    ))
}

fn within(name: &str, share: f64, target: f64, tolerance: f64, problems: &mut Vec<String>) {
    let slack = target * tolerance;
    // A tiny epsilon so that 1/3 against 1/3 never fails on rounding.
    if (share - target).abs() > slack + 1e-9 {
        problems.push(format!(
            "{name} got {:.1}% of responses, expected {:.1}% ± {:.1}%",
            share * 100.0,
            target * 100.0,
            slack * 100.0
        ));
    }
}

fn list(counts: &[(String, u64)]) -> String {
    counts
        .iter()
        .map(|(n, c)| format!("{n}={c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: &str) -> Verdict {
        let mut c = PeriodicChecker::<String>::default();
        for (i, b) in seq.split_whitespace().enumerate() {
            let b = (b != "-").then(|| b.to_owned());
            c.observe(i as u64 + 1, b.as_ref());
        }
        periodic_verdict(&c, "X-Served-By", String::clone)
    }

    #[test]
    fn alternation_passes() {
        //   #1 #2 #3 #4 #5 #6
        //    a  b  a  b  a  b     period [a b]
        let v = run("a b a b a b");
        assert!(v.passed, "{}", v.detail);
        assert!(v.detail.contains("a b (period 2)"));
        //   a b c a b c a         period [a b c]
        assert!(run("a b c a b c a").passed);
        //   a a a                 one backend is trivially periodic
        assert!(run("a a a").passed);
    }

    #[test]
    fn two_to_one_fails_at_the_first_extra() {
        //   #1 #2 #3
        //    a  a  b              period [a] closed at #2; #3 should be a
        let v = run("a a b a a b");
        assert!(!v.passed);
        assert_eq!(v.first_violation, Some(3));
        assert_eq!(
            v.detail,
            "request #3 went to b, expected a; sequence around it: a a [b] a a b"
        );
    }

    #[test]
    fn repeat_before_the_period_closes_fails() {
        //   a b b                 b comes back before a closed the period
        let v = run("a b b a");
        assert_eq!(v.first_violation, Some(3));
        assert!(v.detail.starts_with("request #3 went to b, expected a"));
    }

    #[test]
    fn late_break_shows_bounded_context() {
        //   #1..#8 alternate, #9 repeats b
        let v = run("a b a b a b a b b a b a b");
        assert_eq!(v.first_violation, Some(9));
        assert_eq!(
            v.detail,
            "request #9 went to b, expected a; sequence around it: ... a b a b a b [b] a b a"
        );
        //   a new backend joining later is a break too
        assert_eq!(run("a b a b c").first_violation, Some(5));
    }

    #[test]
    fn missing_header_fails() {
        let v = run("a b - a");
        assert_eq!(v.first_violation, Some(3));
        assert!(v.detail.starts_with("request #3 had no X-Served-By header"));
        assert!(!run("").passed);
    }

    fn counts(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn round_robin_counts_allow_one_per_connection() {
        let rr = Expectation::RoundRobin;
        assert!(check_counts(&rr, &counts(&[("a", 52), ("b", 48)]), 0.1, 4).passed);
        assert!(!check_counts(&rr, &counts(&[("a", 55), ("b", 45)]), 0.1, 4).passed);
    }

    #[test]
    fn even_and_weights() {
        let even = Expectation::Even;
        assert!(check_counts(&even, &counts(&[("a", 105), ("b", 95)]), 0.1, 1).passed);
        let v = check_counts(&even, &counts(&[("a", 133), ("b", 67)]), 0.1, 1);
        assert!(!v.passed);
        assert!(v
            .detail
            .contains("a got 66.5% of responses, expected 50.0% ± 5.0%"));
        assert!(!check_counts(&even, &counts(&[("a", 100), (NO_BACKEND, 1)]), 0.1, 1).passed);

        let w: Expectation = "weights=a:1,b:2".parse().unwrap();
        assert_eq!(w.to_string(), "weights=a:1,b:2");
        assert!(check_counts(&w, &counts(&[("a", 100), ("b", 200)]), 0.1, 1).passed);
        assert!(!check_counts(&w, &counts(&[("a", 150), ("b", 150)]), 0.1, 1).passed);
        // A backend without a weight, or a weighted one that never answered, fails.
        assert!(!check_counts(&w, &counts(&[("a", 1), ("b", 2), ("c", 1)]), 0.5, 1).passed);
        assert!(!check_counts(&w, &counts(&[("b", 300)]), 0.1, 1).passed);
    }

    #[test]
    fn parse_expectations() {
        assert_eq!("round-robin".parse(), Ok(Expectation::RoundRobin));
        assert_eq!("even".parse(), Ok(Expectation::Even));
        assert!("weights=a".parse::<Expectation>().is_err());
        assert!("weights=a:0".parse::<Expectation>().is_err());
        assert!("random".parse::<Expectation>().is_err());
        assert_eq!(
            "sticky=X-User".parse(),
            Ok(Expectation::Sticky("x-user".into()))
        );
        assert_eq!(
            Expectation::Sticky("x-user".into()).to_string(),
            "sticky=x-user"
        );
        assert!("sticky=".parse::<Expectation>().is_err());
        assert!("sticky=a b".parse::<Expectation>().is_err());
    }

    #[test]
    fn sticky_fails_naming_a_key_that_moved() {
        let mut spread = KeySpread::new("x-user");
        //   key   served by
        //   1     a a a
        //   2     b b
        for (key, backend) in [("1", "a"), ("1", "a"), ("2", "b"), ("1", "a"), ("2", "b")] {
            spread.count(key, backend, 1);
        }
        let v = check_sticky(&spread);
        assert!(v.passed, "{}", v.detail);
        assert_eq!(
            v.detail,
            "2 keys (x-user values), 0 moved: each always on the same backend; \
             keys per backend: a=1 b=1"
        );

        //   3     a b a   moved
        let mut other = KeySpread::new("x-user");
        other.count("3", "a", 2);
        other.count("3", "b", 1);
        spread.add(&other);
        let v = check_sticky(&spread);
        assert!(!v.passed);
        assert_eq!(
            v.detail,
            "1 of 3 keys (x-user values) moved between backends: \
             x-user: 3 was served by a (2), b (1)"
        );

        // Two machines that each saw key 1 on one backend, but not the same one.
        let mut elsewhere = KeySpread::new("x-user");
        elsewhere.count("1", "c", 1);
        spread.add(&elsewhere);
        assert!(check_sticky(&spread).detail.starts_with("2 of 3 keys"));

        assert!(!check_sticky(&KeySpread::new("x-user")).passed);
        let mut unnamed = KeySpread::new("x-user");
        unnamed.count("1", NO_BACKEND, 2);
        assert!(!check_sticky(&unnamed).passed);
    }
}
