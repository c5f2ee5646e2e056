//! Step 2 of a request: choose the rotation group from the Host header and the path.
//!
//! Rules are grouped by `(vhost, prefix)`: every `-b` with the same prefix (and vhost) joins the same
//! group, and the members of a group take turns (see `pick/`). Lookup follows the original:
//! rules with a `-v VHOST` are tried first, then the rest; among those, the *longest* matching
//! prefix wins. Unlike the original, the vhost comparison ignores case (host names are
//! case-insensitive, RFC 9110 §4.2.3).

use crate::config::Rule;
use crate::pick::RoundRobin;

/// Backends that share one prefix (and vhost) and take turns serving it.
#[derive(Debug)]
pub struct Group {
    /// Lower-cased vhost, or `None` for rules without `-v`.
    pub vhost: Option<String>,
    pub prefix: String,
    pub members: Vec<Member>,
    /// How the next member is chosen; one counter per group.
    pub selection: RoundRobin,
}

/// One `-b` inside a group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Index into the balancer's list of distinct backends.
    pub backend: usize,
    pub replacement: String,
    pub redirect: bool,
}

/// All groups, searched by [`Router::route`].
#[derive(Debug)]
pub struct Router {
    groups: Vec<Group>,
}

impl Router {
    /// Build groups from rules. `backend_index` maps a rule's address to its slot in the backend list.
    pub fn new(rules: &[Rule], mut backend_index: impl FnMut(&str) -> usize) -> Self {
        let mut groups: Vec<Group> = Vec::new();
        for rule in rules {
            let vhost = rule.vhost.as_ref().map(|v| v.to_ascii_lowercase());
            let member = Member {
                backend: backend_index(&rule.backend),
                replacement: rule.replacement.clone(),
                redirect: rule.redirect,
            };
            match groups
                .iter_mut()
                .find(|g| g.vhost == vhost && g.prefix == rule.prefix)
            {
                Some(group) => group.members.push(member),
                None => groups.push(Group {
                    vhost,
                    prefix: rule.prefix.clone(),
                    members: vec![member],
                    selection: RoundRobin::default(),
                }),
            }
        }
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
        }
    }

    fn router(rules: &[Rule]) -> Router {
        let mut seen: Vec<String> = Vec::new();
        Router::new(rules, |b| match seen.iter().position(|s| s == b) {
            Some(i) => i,
            None => {
                seen.push(b.to_string());
                seen.len() - 1
            }
        })
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
