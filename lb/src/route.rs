//! Step 3 of a request: choose the group of backends from the Host header and the path.
//!
//! Rules are grouped by `(vhost, prefix)`: every `-b` with the same prefix (and vhost) joins the same
//! group, and the group's strategy (`--balance`, see `pick/`) chooses among its members. Lookup follows the original:
//! rules with a `-v VHOST` are tried first, then the rest; among those, the *longest* matching
//! prefix wins. Unlike the original, the vhost comparison ignores case (host names are
//! case-insensitive, RFC 9110 §4.2.3).

use crate::config::Rule;
use crate::pick::{self, Balance, MemberSpec, Selection, Settings};

/// Backends that share one prefix (and vhost), and the strategy that chooses among them.
#[derive(Debug)]
pub struct Group {
    /// Lower-cased vhost, or `None` for rules without `-v`.
    pub vhost: Option<String>,
    pub prefix: String,
    pub members: Vec<Member>,
    /// How the member to try first is chosen (`--balance`); one object per group, whatever the
    /// strategy: a new one needs no change outside `pick/`.
    pub selection: Box<dyn Selection>,
}

/// One `-b` inside a group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Index into the balancer's list of distinct backends.
    pub backend: usize,
    /// The backend's address as written (`127.0.0.1:8910`): what the hash strategy places.
    pub name: String,
    pub replacement: String,
    pub redirect: bool,
    /// `-w N` (1 when not given).
    pub weight: u32,
}

/// All groups, searched by [`Router::route`].
#[derive(Debug)]
pub struct Router {
    groups: Vec<Group>,
}

impl Router {
    /// Build groups from rules, each with a `balance` strategy over its members.
    /// `backend_index` maps a rule's address to its slot in the backend list.
    pub fn new(
        rules: &[Rule],
        mut backend_index: impl FnMut(&str) -> usize,
        balance: &Balance,
        settings: &Settings,
    ) -> Self {
        let mut grouped: Vec<(Option<String>, String, Vec<Member>)> = Vec::new();
        for rule in rules {
            let vhost = rule.vhost.as_ref().map(|v| v.to_ascii_lowercase());
            let member = Member {
                backend: backend_index(&rule.backend),
                name: rule.backend.clone(),
                replacement: rule.replacement.clone(),
                redirect: rule.redirect,
                weight: rule.weight.unwrap_or(1),
            };
            match grouped
                .iter_mut()
                .find(|(v, prefix, _)| *v == vhost && *prefix == rule.prefix)
            {
                Some((_, _, members)) => members.push(member),
                None => grouped.push((vhost, rule.prefix.clone(), vec![member])),
            }
        }
        let groups = grouped
            .into_iter()
            .map(|(vhost, prefix, members)| {
                let specs: Vec<MemberSpec<'_>> = members
                    .iter()
                    .map(|m| MemberSpec {
                        id: &m.name,
                        weight: m.weight,
                    })
                    .collect();
                let selection = pick::build(balance, &specs, settings);
                Group {
                    vhost,
                    prefix,
                    members,
                    selection,
                }
            })
            .collect();
        Router { groups }
    }

    /// The group serving `path` on `host` (the Host header, possibly with a port), if any.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Group> {
        let host = host.map(strip_port);
        let longest = |vhosted: bool| {
            self.groups
                .iter()
                .filter(|g| match (&g.vhost, host) {
                    (Some(v), Some(h)) if vhosted => v.eq_ignore_ascii_case(h),
                    (None, _) => !vhosted,
                    _ => false,
                })
                .filter(|g| path.starts_with(&g.prefix))
                .max_by_key(|g| g.prefix.len())
        };
        longest(true).or_else(|| longest(false))
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }
}

/// `example.com:8000` -> `example.com`; `[::1]:8000` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

/// Apply a rule's `PREFIX=REPLACEMENT` to a request target, keeping the query string.
///
/// `/api/x?q=1` with `/api/=/v1/` becomes `/v1/x?q=1`. The result always starts with `/`.
pub fn rewrite(prefix: &str, replacement: &str, path_and_query: &str) -> String {
    let rest = path_and_query
        .strip_prefix(prefix)
        .unwrap_or(path_and_query);
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement);
    out.push_str(rest);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(vhost: Option<&str>, prefix: &str, backend: &str) -> Rule {
        Rule {
            prefix: prefix.into(),
            replacement: prefix.into(),
            vhost: vhost.map(Into::into),
            redirect: false,
            backend: backend.into(),
            weight: None,
        }
    }

    fn router(rules: &[Rule]) -> Router {
        let mut seen: Vec<String> = Vec::new();
        Router::new(
            rules,
            |b| match seen.iter().position(|s| s == b) {
                Some(i) => i,
                None => {
                    seen.push(b.to_string());
                    seen.len() - 1
                }
            },
            &Balance::RoundRobin,
            &Settings::default(),
        )
    }

    #[test]
    fn same_prefix_forms_one_group() {
        let r = router(&[
            rule(None, "/", "a:1"),
            rule(None, "/", "b:1"),
            rule(None, "/api/", "c:1"),
        ]);
        assert_eq!(r.groups().len(), 2);
        assert_eq!(r.groups()[0].members.len(), 2);
    }

    #[test]
    fn longest_prefix_wins_and_vhosts_come_first() {
        let r = router(&[
            rule(None, "/", "a:1"),
            rule(None, "/api/", "b:1"),
            rule(Some("Example.COM"), "/", "c:1"),
        ]);
        assert_eq!(r.route(None, "/api/x").unwrap().prefix, "/api/");
        assert_eq!(
            r.route(Some("other"), "/index.html").unwrap().members[0].backend,
            0
        );
        // The vhost matches case-insensitively, with or without a port, and beats a longer default prefix.
        let g = r.route(Some("example.com:8000"), "/api/x").unwrap();
        assert_eq!(g.vhost.as_deref(), Some("example.com"));
    }

    #[test]
    fn no_match_is_none() {
        let r = router(&[rule(None, "/api/", "a:1")]);
        assert!(r.route(None, "/").is_none());
    }

    #[test]
    fn rewrite_keeps_the_query() {
        assert_eq!(rewrite("/api/", "/v1/", "/api/x?q=1"), "/v1/x?q=1");
        assert_eq!(
            rewrite("/stuff/", "/", "/stuff/index.html?q=1"),
            "/index.html?q=1"
        );
        assert_eq!(rewrite("/", "/", "/"), "/");
        assert_eq!(rewrite("/a", "", "/a?x"), "/?x");
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("h"), "h");
    }
}
