//! Per-request keys: `-H 'X-User: {n}'` sends every request with `{n}` replaced by a key, one of
//! `--keys N` (`0..N`), so that a balancer hashing on that header sees N different users.
//!
//! **How a key is drawn.** Request number `i` (1-based, the number the run gives every request:
//! its ticket in the closed loop, its slot in the open loop) carries key `mix(i) mod N`, where
//! `mix` is SplitMix64's finalizer, a bijection on 64-bit integers that scatters consecutive
//! numbers. So the keys are uniformly spread and look random, yet a run is reproducible (request
//! #7 always carries the same key) and no random state is shared between threads.
//!
//! Why not simply `i mod N`: a round-robin balancer sends request `i` to backend `i mod B`, so
//! with `i mod N` keys every key would land on the same backend whenever B divides N, and
//! `--expect sticky` would pass a balancer that does not look at the header at all. Drawn keys
//! have no such pattern: under round robin each key's requests spread over every backend.

use http::header::{HeaderName, HeaderValue};

/// What `{n}` is replaced with in a `-H` value.
pub const PLACEHOLDER: &str = "{n}";

/// How many keys `{n}` takes when `--keys` is not given.
pub const DEFAULT_KEYS: u64 = 100;

/// A header value holding `{n}` at least once, split around each occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The literal text between placeholders: `user-{n}` is `["user-", ""]`.
    parts: Vec<String>,
}

impl Template {
    /// The template in `value`, or `None` if it holds no `{n}` (a plain header).
    pub fn parse(value: &str) -> Option<Template> {
        value.contains(PLACEHOLDER).then(|| Template {
            parts: value.split(PLACEHOLDER).map(str::to_owned).collect(),
        })
    }

    /// The value with every `{n}` replaced by `key`.
    pub fn render(&self, key: u64) -> String {
        let key = key.to_string();
        self.parts.join(&key)
    }
}

/// The request header `--expect sticky=HEADER` follows, as the plan sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedHeader {
    /// Sent with `{n}`: one value per key.
    Drawn(Template),
    /// Sent with the same value on every request: one key.
    Fixed(String),
}

impl KeyedHeader {
    /// How the plan's `headers` send `name`, or `None` if they do not send it (the last `-H`
    /// of a name wins, as in the request).
    pub fn find(headers: &[(HeaderName, HeaderValue)], name: &str) -> Option<KeyedHeader> {
        let (_, value) = headers.iter().rev().find(|(n, _)| n.as_str() == name)?;
        let value = String::from_utf8_lossy(value.as_bytes());
        Some(match Template::parse(&value) {
            Some(t) => KeyedHeader::Drawn(t),
            None => KeyedHeader::Fixed(value.into_owned()),
        })
    }

    /// The key of request number `index` (always 0 for a fixed value).
    pub fn key(&self, index: u64, keys: u64) -> u64 {
        match self {
            KeyedHeader::Drawn(_) => key_of(index, keys),
            KeyedHeader::Fixed(_) => 0,
        }
    }

    /// The header's value for `key`.
    pub fn value(&self, key: u64) -> String {
        match self {
            KeyedHeader::Drawn(t) => t.render(key),
            KeyedHeader::Fixed(v) => v.clone(),
        }
    }
}

/// The key request number `index` carries, among `keys` (see the module doc).
pub fn key_of(index: u64, keys: u64) -> u64 {
    mix(index) % keys.max(1)
}

/// SplitMix64's output function (Steele, Lea and Flood, 2014): every input bit affects every
/// output bit, and distinct inputs give distinct outputs.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_replace_every_placeholder() {
        assert_eq!(Template::parse("alice"), None);
        let t = Template::parse("user-{n}").unwrap();
        assert_eq!(t.render(17), "user-17");
        assert_eq!(Template::parse("{n}").unwrap().render(0), "0");
        assert_eq!(Template::parse("{n}/{n}").unwrap().render(3), "3/3");

        let headers = [
            (
                HeaderName::from_static("x-user"),
                HeaderValue::from_static("u{n}"),
            ),
            (
                HeaderName::from_static("x-team"),
                HeaderValue::from_static("red"),
            ),
        ];
        let user = KeyedHeader::find(&headers, "x-user").unwrap();
        assert_eq!(user.value(user.key(5, 10)), format!("u{}", key_of(5, 10)));
        let team = KeyedHeader::find(&headers, "x-team").unwrap();
        assert_eq!((team.key(5, 10), team.value(0).as_str()), (0, "red"));
        assert_eq!(KeyedHeader::find(&headers, "x-other"), None);
    }

    /// Keys are spread evenly over `0..N`, and consecutive requests do not follow the pattern a
    /// round robin would (see the module doc): among the requests that a two-backend round robin
    /// sends to the first backend, every key still appears.
    #[test]
    fn keys_are_uniform_and_do_not_alias_with_round_robin() {
        let n = 10;
        let mut counts = [0u64; 10];
        let mut on_even_turns = [false; 10];
        for i in 1..=10_000 {
            let k = key_of(i, n) as usize;
            counts[k] += 1;
            if i % 2 == 0 {
                on_even_turns[k] = true;
            }
        }
        assert!(
            counts.iter().all(|c| (900..=1100).contains(c)),
            "{counts:?}"
        );
        assert!(on_even_turns.iter().all(|seen| *seen));
        assert_eq!(key_of(7, 10), key_of(7, 10));
        assert_eq!(key_of(7, 0), 0);
    }
}
