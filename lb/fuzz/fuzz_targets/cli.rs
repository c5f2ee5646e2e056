//! Fuzz the command line (`lb::cli::parse`) and the prefix rewrite (`lb::route::rewrite`): any
//! words must give a `Config` or an error, never a panic, and a rewritten target always starts
//! with `/`.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<String>, String, String, String)| {
    let (words, prefix, replacement, path) = input;

    // `-b PREFIX HOST:PORT` resolves HOST; a random host name would make every run a DNS
    // query. Keep inputs whose `host:port`-looking words are literal socket addresses.
    let resolves = |w: &String| {
        w.contains(':') && !w.starts_with(['-', '/']) && w.parse::<SocketAddr>().is_err()
    };
    if !words.iter().any(resolves) {
        let argv = std::iter::once("lb".to_string()).chain(words);
        if let Ok(config) = lb::cli::parse(argv) {
            assert!(!config.rules.is_empty(), "a Config always has a backend");
            for rule in &config.rules {
                assert!(rule.prefix.starts_with('/'), "prefix {:?}", rule.prefix);
            }
        }
    }

    let target = lb::route::rewrite(&prefix, &replacement, &path);
    assert!(target.starts_with('/'), "rewrite gave {target:?}");
});
