//! The live status page of `lb --admin` (`GET /`), in a real browser: headless Chromium, driven
//! over the DevTools protocol by `headless_chrome`, watches lb balance two backends, one of them
//! die, then lb itself stop and come back, and the test reads the page as a person would.
//!
//! It needs a Chromium or Chrome: Debian's `chromium` package (`.ci/run` installs it), or the
//! binary named by `$CHROME`. Without one the test says so and passes, except under `CI=true`,
//! where it fails: CI must not silently stop testing the page.
//!
//! `LB_ADMIN_SCREENSHOT=docs/admin-page.png cargo test -p tests --test e2e admin_page` also lets
//! the traffic run for 40 s so that the sparklines fill, and saves a 1200x800 screenshot of the
//! page to that path (relative to the workspace root): the picture in docs/ comes from here.
//!
//! Clients: the browser, and reqwest for the background traffic (one new connection per request).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Emulation;
use headless_chrome::protocol::cdp::Log::LogEntryLevel;
use headless_chrome::protocol::cdp::Network;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::protocol::cdp::Runtime::{ConsoleAPICalledEventTypeOption, RemoteObject};
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;
use tests::http::{client, url};
use tests::{cluster, project_root, LbBuilder, LbProcess};

#[test]
fn the_live_page_follows_traffic_a_dying_backend_and_a_restarted_lb() {
    // A refused connection takes a backend out for --fail-timeout: longer than the test, so its
    // badge cannot turn back to "up" while we look. The cluster comes first: the first one of a
    // run builds the binaries, which can take minutes on a cold target, and a browser left idle
    // that long closes itself.
    let cluster = cluster(2, &["--admin", "127.0.0.1:0", "--fail-timeout", "60s"]);
    let Some(browser) = start_browser() else {
        return;
    };
    let (mut lb, mut backends) = (cluster.lb, cluster.backends);
    let addr = lb.addr;
    let admin = admin_origin(&mut lb);
    let traffic = Traffic::start(addr);

    let tab = browser.new_tab().unwrap();
    laptop_viewport(&tab);
    let seen = Seen::record(&tab);
    tab.navigate_to(&format!("{admin}/"))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    // A mark on the window: a reload would wipe it, so while it is there, every change we see
    // was made by the page's own script.
    tab.evaluate("window.loadedOnce = true", false).unwrap();

    // 1. Both backends appear, each with its share of the requests, on the live stream.
    let page = wait_for(
        &tab,
        Duration::from_secs(8),
        "both backends with a share",
        |page| page.backends.len() == 2 && page.backends.iter().all(|b| b.share_percent() > 0),
    );
    for backend in &backends {
        let card = page.backend(&backend.addr.to_string());
        assert!(
            (20..=80).contains(&card.share_percent()),
            "two equal backends under round robin should share about evenly: {page:#?}"
        );
        assert_eq!(card.badge, "up", "{page:#?}");
    }
    assert_eq!(
        page.connection, "live",
        "the page should be on the stream: {page:#?}"
    );

    // 2. The numbers move while nobody reloads.
    let before = page.requests.clone();
    let page = wait_for(
        &tab,
        Duration::from_secs(3),
        "the request count to move",
        |page| page.requests != before,
    );
    assert!(page.loaded_once, "the page was reloaded: {page:#?}");

    if let Some(path) = std::env::var_os("LB_ADMIN_SCREENSHOT") {
        screenshot(&tab, &project_root().join(path));
    }

    // 3. Kill one backend (dropping its `Proc` kills the process). lb notices at the next request
    //    that cannot connect, and the page at the next status, a second later at most.
    let dead = backends.remove(1);
    let dead_addr = dead.addr.to_string();
    drop(dead);
    let killed = Instant::now();
    let page = wait_for(&tab, Duration::from_secs(2), "the badge to turn", |page| {
        let badge = &page.backend(&dead_addr).badge;
        badge.starts_with("cooling down") || badge.starts_with("down")
    });
    eprintln!(
        "the killed backend's badge read {:?} after {:?}",
        page.backend(&dead_addr).badge,
        killed.elapsed()
    );
    let survivor = backends[0].addr;
    assert_eq!(page.backend(&survivor.to_string()).badge, "up", "{page:#?}");
    traffic.stop();

    // Nothing went wrong in the page so far. (From here on lb goes away, and the browser logs
    // every request that cannot connect as an error of its own.)
    let errors = seen.errors();
    assert!(errors.is_empty(), "the console logged errors: {errors:#?}");

    // 4. Stop lb: the page says that it lost it, at once.
    drop(lb);
    let page = wait_for(
        &tab,
        Duration::from_secs(3),
        "the page to say lb is lost",
        |page| page.connection == "connection lost" && page.banner.contains("lost"),
    );
    assert!(page.loaded_once, "the page was reloaded: {page:#?}");

    // 5. Start lb again on the same admin port, now with the survivor only: the page, polling
    //    /status meanwhile, finds it again and shows the new configuration, without a reload.
    let admin_addr = admin.trim_start_matches("http://");
    let _lb = LbBuilder::new()
        .flags(&["--admin", admin_addr])
        .backends(&[survivor])
        .start();
    let page = wait_for(
        &tab,
        Duration::from_secs(3),
        "the page to find lb again",
        |page| {
            page.connection.starts_with("live")
                && page.banner.is_empty()
                && page.backends.len() == 1
        },
    );
    assert!(page.loaded_once, "the page was reloaded: {page:#?}");

    // Everything the page asked for, from start to end, went to the admin listener.
    let requests = seen.requests();
    assert!(
        requests.iter().any(|url| url.ends_with("/events"))
            && requests.iter().any(|url| url.ends_with("/status")),
        "the page should have used the stream, then polled: {requests:#?}"
    );
    let elsewhere: Vec<&String> = requests
        .iter()
        .filter(|url| !url.starts_with(&format!("{admin}/")))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the page asked for something outside {admin}: {elsewhere:#?}"
    );
}

/// A laptop's viewport, 1200x800 (the screenshot's size), whatever the browser's window.
fn laptop_viewport(tab: &Tab) {
    tab.call_method(Emulation::SetDeviceMetricsOverride {
        width: 1200,
        height: 800,
        device_scale_factor: 1.0,
        mobile: false,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })
    .unwrap();
}

/// Start headless Chromium, or say why not: `None` (the test is skipped) unless under CI.
fn start_browser() -> Option<Browser> {
    match launch_browser() {
        Ok(browser) => Some(browser),
        Err(e) if under_ci() => panic!(
            "under CI the browser test must run, but no headless browser could be started: \
             {e:#}\nInstall Debian's chromium (apt-get install chromium; .ci/run does) or set \
             CHROME to a Chrome or Chromium binary."
        ),
        Err(e) => {
            eprintln!(
                "SKIPPED the live page test: no headless browser could be started ({e:#}). \
                 Install Debian's chromium (apt-get install chromium) or set CHROME to a Chrome \
                 or Chromium binary; under CI=true this fails instead."
            );
            None
        }
    }
}

/// `CI` is set, as CI services do (`CI=true`), and not to "", "0" or "false".
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// `$CHROME`, or the first of google-chrome, chromium, ... on `PATH`, in headless mode.
fn launch_browser() -> anyhow::Result<Browser> {
    let path = headless_chrome::browser::default_executable()
        .map_err(|e| anyhow!("no Chromium or Chrome found: {e}"))?;
    // A browser that cannot even print its version (a missing library, a broken install) would
    // otherwise be started and waited for again and again, for minutes, before the launch fails.
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", path.display()))?;
    ensure!(
        version.status.success(),
        "{} --version failed ({}): {}",
        path.display(),
        version.status,
        String::from_utf8_lossy(&version.stderr).trim()
    );
    Browser::new(LaunchOptions {
        path: Some(path),
        headless: true,
        // Chromium refuses to run as root inside its sandbox (containers, CI runners).
        sandbox: false,
        // Without news from us for this long the browser is closed: long enough for the
        // screenshot run's wait.
        idle_browser_timeout: Duration::from_secs(120),
        ..LaunchOptions::default()
    })
}

/// `http://127.0.0.1:PORT`, from the line lb prints once the admin listener is bound
/// (`Admin on http://127.0.0.1:PORT/`): with `--admin 127.0.0.1:0` the kernel chose the port.
fn admin_origin(lb: &mut LbProcess) -> String {
    format!("http://{}", lb.admin_addr())
}

/// Requests through lb from a background thread until stopped, each on a new connection: 50 to
/// 150 a second, rising and falling over 20 s so that the sparklines have a shape, and never
/// pausing long, so that lb meets a dead backend within milliseconds of its death.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                // Failures do not matter here: what the page shows of them is what is tested.
                let _ = client()
                    .get(url(addr, "/api/v1/whoami"))
                    .send()
                    .and_then(|response| response.bytes());
                let wave = (started.elapsed().as_secs_f64() * std::f64::consts::TAU / 20.0).sin();
                let per_second = 100.0 + 50.0 * wave;
                std::thread::sleep(Duration::from_secs_f64(1.0 / per_second));
            }
        });
        Traffic { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// What the browser reported while the page ran: the URL of every request the page made, and
/// every console error or uncaught exception.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    /// Subscribe to the tab's network and console events (before the page loads, so that its
    /// very first request is seen too).
    fn record(tab: &Arc<Tab>) -> Seen {
        let seen = Seen::default();
        tab.call_method(Network::Enable {
            max_total_buffer_size: None,
            max_resource_buffer_size: None,
            max_post_data_size: None,
            report_direct_socket_traffic: None,
            enable_durable_messages: None,
        })
        .unwrap();
        tab.enable_runtime().unwrap();
        tab.enable_log().unwrap();
        let sink = seen.clone();
        tab.add_event_listener(Arc::new(move |event: &Event| match event {
            Event::NetworkRequestWillBeSent(e) => {
                sink.push_request(e.params.request.url.clone());
            }
            // console.error(...) and console.assert(...) in the page's script.
            Event::RuntimeConsoleAPICalled(e)
                if matches!(
                    e.params.Type,
                    ConsoleAPICalledEventTypeOption::Error
                        | ConsoleAPICalledEventTypeOption::Assert
                ) =>
            {
                let words: Vec<String> = e.params.args.iter().map(describe).collect();
                sink.push_error(format!("console: {}", words.join(" ")));
            }
            // An exception nothing caught.
            Event::RuntimeExceptionThrown(e) => {
                let details = &e.params.exception_details;
                let what = details
                    .exception
                    .as_ref()
                    .map_or_else(|| details.text.clone(), describe);
                sink.push_error(format!("uncaught: {what}"));
            }
            // The browser's own complaints: a failed load, a request the page's
            // Content-Security-Policy blocked (such a request never leaves, so it is caught here
            // rather than among the requests), ...
            Event::LogEntryAdded(e) if e.params.entry.level == LogEntryLevel::Error => {
                sink.push_error(format!("browser: {}", e.params.entry.text));
            }
            _ => {}
        }))
        .unwrap();
        seen
    }

    fn push_request(&self, url: String) {
        self.requests.lock().unwrap().push(url);
    }

    fn push_error(&self, error: String) {
        self.errors.lock().unwrap().push(error);
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

/// A JavaScript value as the console would print it.
fn describe(value: &RemoteObject) -> String {
    match (&value.value, &value.description) {
        (Some(Value::String(text)), _) => text.clone(),
        (Some(other), _) => other.to_string(),
        (None, Some(description)) => description.clone(),
        (None, None) => format!("{:?}", value.Type),
    }
}

/// The page as a reader sees it: the texts shown, read from the DOM.
#[derive(Debug)]
struct Page {
    /// The connection indicator: "live", "live (polling)", "connection lost".
    connection: String,
    /// The banner shown while lb is lost ("" when hidden).
    banner: String,
    /// The "requests" tile (total requests since lb started).
    requests: String,
    /// One card per backend, in page order.
    backends: Vec<Card>,
    /// Whether the mark set after loading is still there (no reload since).
    loaded_once: bool,
}

#[derive(Debug)]
struct Card {
    name: String,
    /// "up", "cooling down · 0 s", ...
    badge: String,
    /// "48%"
    share: String,
}

impl Card {
    fn share_percent(&self) -> u32 {
        self.share.trim_end_matches('%').parse().unwrap_or(0)
    }
}

impl Page {
    /// Read the page's texts with one script in the page.
    fn read(tab: &Tab) -> Page {
        const SCRIPT: &str = r#"JSON.stringify({
            connection: document.getElementById("connection").textContent,
            banner: document.getElementById("lost").hidden ? "" : document.getElementById("lost").textContent,
            requests: document.getElementById("requests").textContent,
            loadedOnce: window.loadedOnce === true,
            backends: Array.from(document.querySelectorAll("[data-backend]"), (card) => ({
                name: card.dataset.backend,
                badge: card.querySelector('[data-field="state"]').textContent,
                share: card.querySelector('[data-field="share"]').textContent,
            })),
        })"#;
        let result = tab.evaluate(SCRIPT, false).unwrap();
        let json: Value = result
            .value
            .and_then(|v| v.as_str().and_then(|s| serde_json::from_str(s).ok()))
            .unwrap_or_default();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Page {
            connection: text(&json["connection"]),
            banner: text(&json["banner"]),
            requests: text(&json["requests"]),
            loaded_once: json["loadedOnce"].as_bool().unwrap_or(false),
            backends: json["backends"]
                .as_array()
                .map(|cards| {
                    cards
                        .iter()
                        .map(|card| Card {
                            name: text(&card["name"]),
                            badge: text(&card["badge"]),
                            share: text(&card["share"]),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn backend(&self, name: &str) -> &Card {
        self.backends
            .iter()
            .find(|card| card.name == name)
            .unwrap_or_else(|| panic!("no card for backend {name} on the page: {self:#?}"))
    }
}

/// Read the page every 50 ms until `done` holds; fail with the last reading after `timeout`.
fn wait_for(tab: &Tab, timeout: Duration, what: &str, done: impl Fn(&Page) -> bool) -> Page {
    let deadline = Instant::now() + timeout;
    loop {
        let page = Page::read(tab);
        if done(&page) {
            return page;
        }
        if Instant::now() >= deadline {
            panic!("waited {timeout:?} for {what}; the page shows: {page:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Let the sparklines fill for 40 s, then save the page as a PNG.
fn screenshot(tab: &Tab, path: &std::path::Path) {
    std::thread::sleep(Duration::from_secs(40));
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    std::fs::write(path, png).unwrap();
    eprintln!("saved a screenshot of the page to {}", path.display());
}
