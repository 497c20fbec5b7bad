//! The dashboard at `GET /` (SPEC §5) in a real headless Chromium driven
//! over WebDriver (chromedriver): live devices and charts, resume across a
//! daemon restart without gaps or duplicates, a rejected token without a
//! reconnect loop, and no request to any other origin. The page exposes
//! its counts as `data-` attributes, so the assertions are on numbers.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test`
//! installs them). A missing browser fails these tests, it never skips them.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sensorgate::auth::{Authenticator, Role};
use sensorgate_test_kit::browser::{Browser, ONE_BROWSER};
use sensorgate_test_kit::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A device that publishes `batches` acked batches of one reading on
/// each of `sensors`, one batch every `every`, to the daemon at `base`
/// (`host:port`). It rides out daemon restarts as a real device does:
/// reconnect, then resume from the welcome's `last_seq`.
async fn feed(base: String, device: &str, sensors: &[&str], batches: u64, every: Duration) {
    let token = device_token(device);
    let mut next = 1u64;
    'connect: while next <= batches {
        let mut req = format!("ws://{base}/v1/ingest")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(welcome) = next_frame(&mut ws).await else {
            continue;
        };
        next = welcome["last_seq"].as_u64().unwrap() + 1;
        while next <= batches {
            let frame = mp(&reading_batch(next, sensors));
            if ws.send(Message::Binary(frame.into())).await.is_err() {
                continue 'connect;
            }
            match next_frame(&mut ws).await {
                Some(ack) if ack["type"] == "ack" => next += 1,
                Some(other) => panic!("device {device}: {other}"),
                None => continue 'connect,
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Batch `seq`: one reading per sensor, a wave over the seq, stamped now.
fn reading_batch(seq: u64, sensors: &[&str]) -> Value {
    let now = sensorgate::time::unix_ms() as i64;
    let readings: Vec<Value> = sensors
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let v = 20.0 + 5.0 * ((seq as f64) / 6.0 + k as f64).sin() + k as f64 * 10.0;
            json!({"sensor": s, "ts": now, "value": (v * 100.0).round() / 100.0, "unit": "C"})
        })
        .collect();
    json!({"seq": seq, "readings": readings})
}

/// The next server frame, or `None` when the connection is gone.
async fn next_frame(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return rmp_serde::from_slice(&b).ok(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// A test config on a port the daemon can be restarted on, with its
/// store dir.
fn restartable_config() -> (u16, tempfile::TempDir, sensorgate::config::Config) {
    let port = restartable_port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    (port, dir, config)
}

fn subscriber_token() -> String {
    Authenticator::new(SECRET).mint(Role::Subscriber, "dashboard", None, None)
}

/// A daemon with `auth.public_subscribers` and a browser showing its page,
/// connected; the browser is this test's until the guard drops.
async fn public_page() -> (tokio::sync::MutexGuard<'static, ()>, TestDaemon, Browser) {
    let one = ONE_BROWSER.lock().await;
    let d = TestDaemon::start_with(|c| c.auth.public_subscribers = true).await;
    let b = Browser::start().await;
    b.client.goto(&d.http("/")).await.unwrap();
    b.until_state(10, "connected").await;
    (one, d, b)
}

/// The page's own counts against what the daemon stored.
async fn assert_holds_exactly(b: &Browser, stored: &[Value]) {
    let ids = ids_of(stored);
    assert_eq!(b.num("#held", "data-count").await, ids.len() as u64);
    assert_eq!(b.num("#held", "data-duplicates").await, 0);
    assert_eq!(
        b.num("#held", "data-last-id").await,
        *ids.iter().max().unwrap()
    );
    assert_eq!(
        b.num("#held", "data-id-sum").await,
        ids.iter().sum::<u64>(),
        "the page holds other ids than the store"
    );
}

#[tokio::test]
async fn page_shows_live_devices_values_and_a_drawn_chart() {
    let _one = ONE_BROWSER.lock().await;
    let d = TestDaemon::start().await;
    let base = d.addr().to_string();
    // Readings stored before the page opens: the chart starts with them.
    feed(
        base.clone(),
        "boiler",
        &["temp", "pressure"],
        5,
        Duration::ZERO,
    )
    .await;

    let b = Browser::start().await;
    // A wall-screen link: the token travels in the fragment only.
    b.client
        .goto(&d.http(&format!("/#token={}", subscriber_token())))
        .await
        .unwrap();
    b.until(10, "history loaded", || async {
        b.num("#held", "data-count").await == 10
    })
    .await;
    let feeders = [
        ("boiler", vec!["temp", "pressure"]),
        ("greenhouse", vec!["temp", "humidity"]),
        ("freezer", vec!["temp"]),
    ];
    let tasks: Vec<_> = feeders
        .iter()
        .map(|(dev, sensors)| {
            let (base, dev) = (base.clone(), dev.to_string());
            let sensors: Vec<&'static str> = sensors.clone();
            tokio::spawn(async move {
                let n = if dev == "boiler" { 45 } else { 40 };
                feed(base, &dev, &sensors, n, Duration::from_millis(100)).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stored = d.stored("#").await;
    let last = stored
        .iter()
        .rev()
        .find(|r| r["device"] == "freezer" && r["sensor"] == "temp")
        .unwrap()["value"]
        .as_f64()
        .unwrap();
    b.until(10, "every stored reading on the page", || async {
        b.num("#held", "data-count").await == stored.len() as u64
    })
    .await;
    assert_holds_exactly(&b, &stored).await;
    b.until(10, "freezer connected with its latest value", || async {
        b.attr("tr[data-device=freezer]", "data-connected").await == Some("true".into())
            && b.attr("button[data-topic='freezer/temp']", "data-value")
                .await
                .and_then(|v| v.parse::<f64>().ok())
                == Some(last)
    })
    .await;
    assert_eq!(b.num("#device-count", "data-devices").await, 3);
    assert_eq!(b.attr("#status", "data-state").await.unwrap(), "connected");
    // The token left the address bar and lives in this tab's storage.
    let hash = b.eval("return location.hash").await;
    assert_eq!(hash, json!(""));

    // Charts: one per topic (automatic choice), each with its points and
    // with line-coloured pixels on its canvas (the series was drawn).
    let charts = b.num("#charts", "data-charts").await;
    assert_eq!(charts, 4, "automatic charts for the first four topics");
    let points = b
        .num("figure[data-topic='boiler/temp']", "data-points")
        .await;
    // 5 batches before the page opened, 40 more (seq 6..=45) live.
    assert_eq!(points, 45, "history plus live points of boiler/temp");
    let drawn = b.eval("const c = document.querySelector(\"figure[data-topic='boiler/temp'] canvas\");
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let n = 0;
             for (let i = 0; i < d.length; i += 4)
               if (d[i+3] > 200 && Math.abs(d[i]-22) < 40 && Math.abs(d[i+1]-104) < 40 && Math.abs(d[i+2]-196) < 40) n++;
             return n;").await;
    assert!(
        drawn.as_u64().unwrap() > 100,
        "the series line is drawn on the canvas ({drawn} line pixels)"
    );
    let shot = b.screenshot("dashboard.png").await;
    eprintln!("screenshot: {}", shot.display());
    // The same in the dark scheme and on a phone-sized window, to look at.
    b.color_scheme("dark").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.screenshot("dashboard-dark.png").await;
    b.client.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.screenshot("dashboard-phone.png").await;
    b.color_scheme("light").await;
    b.client.set_window_size(1280, 900).await.unwrap();

    // Clicking a sensor chip charts it (and it stays charted).
    b.click("button[data-topic='freezer/temp']").await;
    b.until(5, "freezer/temp charted", || async {
        b.num("figure[data-topic='freezer/temp']", "data-points")
            .await
            == 40
    })
    .await;
    b.close().await;
}

#[tokio::test]
async fn page_resumes_after_a_daemon_restart_with_every_reading_once() {
    let _one = ONE_BROWSER.lock().await;
    let (port, dir, mut config) = restartable_config();
    config.auth.public_subscribers = true;
    let mut d = TestDaemon::start_in(dir, config.clone()).await;
    let base = d.addr().to_string();

    let b = Browser::start().await;
    b.client.goto(&d.http("/")).await.unwrap();
    b.until_state(10, "connected").await;
    let feeder = tokio::spawn(feed(
        base.clone(),
        "d1",
        &["temp"],
        120,
        Duration::from_millis(50),
    ));
    b.until(10, "live readings", || async {
        b.num("#held", "data-count").await >= 20
    })
    .await;

    // Down for a while: the device keeps trying, the page backs off.
    d.stop().await;
    b.until(10, "the page notices", || async {
        b.attr("#status", "data-state").await != Some("connected".into())
    })
    .await;
    // The browser stays offline until the restarted daemon has stored
    // readings the page has not seen: its reconnect must replay them.
    b.offline(true).await;
    let d = TestDaemon::start_in(d.into_dir(), config).await;
    assert_eq!(d.addr().port(), port);
    let before = b.num("#held", "data-last-id").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids_of(&d.stored("#").await)
        .iter()
        .filter(|&&i| i > before)
        .count()
        < 20
    {
        assert!(
            Instant::now() < deadline,
            "the device resumed on the new daemon"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.num("#held", "data-last-id").await, before, "offline");
    b.offline(false).await;

    feeder.await.unwrap();
    let stored = d.stored("#").await;
    assert_eq!(stored.len(), 120, "the device stored every batch once");
    b.until(30, "every reading on the page", || async {
        b.num("#held", "data-count").await >= 120
    })
    .await;
    assert_holds_exactly(&b, &stored).await;
    assert!(
        b.num("#status", "data-connects").await >= 2,
        "the page reconnected by itself"
    );
    // It resumed where it stopped, and the replay was not empty.
    assert_eq!(b.num("#status", "data-resumed-from").await, before);
    assert!(b.num("#status", "data-live-from").await >= before + 20);
    assert_eq!(b.attr("#status", "data-state").await.unwrap(), "connected");
    b.close().await;
}

#[tokio::test]
async fn bad_token_shows_token_rejected_without_a_reconnect_loop() {
    let _one = ONE_BROWSER.lock().await;
    let (_, dir, mut config) = restartable_config();
    let mut d = TestDaemon::start_in(dir, config.clone()).await;
    let b = Browser::start().await;

    // A token that was never valid: rejected before any stream attempt.
    b.client.goto(&d.http("/#token=not.a.jwt")).await.unwrap();
    b.until_state(10, "auth").await;
    assert!(b.text("#status").await.contains("token rejected"));
    assert_eq!(b.num("#status", "data-connects").await, 0);
    b.screenshot("dashboard-token-rejected.png").await;

    // A good token on a fresh tab session, then the daemon comes back with
    // another secret: the stream's upgrade is refused (401), which the
    // page must report instead of retrying forever.
    b.eval("sessionStorage.clear()").await;
    b.client
        .goto(&d.http(&format!("/#token={}", subscriber_token())))
        .await
        .unwrap();
    b.until_state(10, "connected").await;
    d.stop().await;
    config.auth.jwt_secret = "rotated-secret".into();
    let _d = TestDaemon::start_in(d.into_dir(), config).await;
    b.until_state(20, "auth").await;
    let connects = b.num("#status", "data-connects").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        b.num("#status", "data-connects").await,
        connects,
        "no reconnect loop after a rejection"
    );
    assert!(b.text("#status").await.contains("token rejected"));
    // The form takes a token for the new secret, and the page streams again.
    let input = b
        .client
        .find(fantoccini::Locator::Css("#auth:not([hidden]) #token-input"))
        .await
        .expect("the token form is shown");
    let fresh =
        Authenticator::new("rotated-secret").mint(Role::Subscriber, "dashboard", None, None);
    input.send_keys(&fresh).await.unwrap();
    b.click("#token-form button[type=submit]").await;
    b.until_state(10, "connected").await;
    b.close().await;
}

#[tokio::test]
async fn a_token_limited_to_topics_starts_with_its_filter() {
    let _one = ONE_BROWSER.lock().await;
    let d = TestDaemon::start().await;
    let token = Authenticator::new(SECRET).mint(
        Role::Subscriber,
        "boiler-room",
        None,
        Some(vec!["boiler/#".into()]),
    );
    let b = Browser::start().await;
    b.client
        .goto(&d.http(&format!("/#token={token}")))
        .await
        .unwrap();
    b.until_state(10, "connected").await;
    let filter = b
        .eval("return document.getElementById('topic').value")
        .await;
    assert_eq!(filter, json!("boiler/#"));
    let base = d.addr().to_string();
    feed(base.clone(), "freezer", &["temp"], 3, Duration::ZERO).await;
    feed(base, "boiler", &["temp"], 4, Duration::ZERO).await;
    b.until(10, "the boiler's readings", || async {
        b.num("#held", "data-count").await == 4
    })
    .await;
    // Reopened: the device list polled at start and the history are
    // only what the token may see: no freezer row, no error notice.
    b.client.refresh().await.unwrap();
    b.until(10, "the boiler's history", || async {
        b.num("#held", "data-count").await == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.num("#device-count", "data-devices").await, 1);
    assert!(b
        .attr("tr[data-device=freezer]", "data-connected")
        .await
        .is_none());
    assert!(b.text("#notice").await.is_empty());
    b.close().await;
}

#[tokio::test]
async fn page_talks_to_its_own_origin_only() {
    let (_one, d, b) = public_page().await;
    feed(
        d.addr().to_string(),
        "d1",
        &["temp"],
        5,
        Duration::from_millis(20),
    )
    .await;
    b.until(10, "readings and a chart", || async {
        b.num("#charts", "data-charts").await == 1 && b.num("#held", "data-count").await == 5
    })
    .await;

    let own = [
        format!("http://{}/", d.addr()),
        format!("ws://{}/", d.addr()),
    ];
    let mut urls = Vec::new();
    for entry in b.log("performance").await {
        let msg: Value = serde_json::from_str(entry["message"].as_str().unwrap()).unwrap();
        let m = &msg["message"];
        let url = match m["method"].as_str() {
            Some("Network.requestWillBeSent") => m["params"]["request"]["url"].as_str(),
            Some("Network.webSocketCreated") => m["params"]["url"].as_str(),
            _ => None,
        };
        urls.extend(url.map(str::to_string));
    }
    // The log saw the page's own traffic (so it can see any other).
    for path in [
        "/ui/app.js",
        "/ui/vendor/uplot/uPlot.esm.js",
        "/v1/devices",
        "/v1/stream",
    ] {
        assert!(
            urls.iter().any(|u| u.contains(path)),
            "{path} missing from the network log: {urls:?}"
        );
    }
    // The browser's own pages (the new-tab page before `goto`) are not
    // network traffic; everything else must be the daemon's origin.
    let internal = ["chrome:", "chrome-untrusted:", "about:", "data:", "blob:"];
    let foreign: Vec<&String> = urls
        .iter()
        .filter(|u| !internal.iter().any(|i| u.starts_with(i)))
        .filter(|u| !own.iter().any(|o| u.starts_with(o.as_str())))
        .collect();
    assert!(foreign.is_empty(), "requests to other origins: {foreign:?}");
    // No CSP violation or script error in the console.
    let errors: Vec<Value> = b
        .log("browser")
        .await
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.close().await;
}

#[tokio::test]
async fn hundreds_of_devices_are_patched_in_place_not_re_rendered() {
    let (_one, d, b) = public_page().await;
    let base = d.addr().to_string();
    const DEVICES: usize = 300;
    let names: Vec<String> = (0..DEVICES).map(|i| format!("dev{i:03}")).collect();
    let publish_all = |batches: u64| {
        let tasks: Vec<_> = names
            .iter()
            .map(|n| {
                let (base, n) = (base.clone(), n.clone());
                tokio::spawn(async move {
                    feed(base, &n, &["temp", "hum"], batches, Duration::ZERO).await
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    publish_all(1).await;
    b.until(20, "every device listed", || async {
        b.num("#device-count", "data-devices").await == DEVICES as u64
            && b.num("#held", "data-count").await == 2 * DEVICES as u64
    })
    .await;

    // Once sorted (the table sorts once a second), rows may be patched
    // but never rebuilt or re-inserted: the order by id does not change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.eval("window.rowMutations = 0;
             new MutationObserver((l) => { for (const m of l) window.rowMutations += m.addedNodes.length + m.removedNodes.length; })
               .observe(document.querySelector('#devices tbody'), { childList: true });").await;
    let started = Instant::now();
    publish_all(6).await; // seq 2..=6: 5 more batches of 2 readings each
    let total = 12 * DEVICES as u64;
    b.until(30, "every reading on the page", || async {
        b.num("#held", "data-count").await == total
    })
    .await;
    eprintln!(
        "{} readings from {DEVICES} devices shown {:?} after the first was sent",
        10 * DEVICES,
        started.elapsed()
    );
    let mutations = b.eval("return window.rowMutations").await;
    assert_eq!(mutations, json!(0), "rows were re-inserted");
    assert_eq!(b.num("#held", "data-duplicates").await, 0);
    // The filter box hides rows without rebuilding them.
    let filter = b
        .client
        .find(fantoccini::Locator::Id("device-filter"))
        .await
        .unwrap();
    filter.send_keys("dev29").await.unwrap();
    let visible = b.eval("return [...document.querySelectorAll('#devices tbody tr')].filter((r) => !r.hidden).length").await;
    assert_eq!(visible, json!(10), "dev290..dev299");
    // Sorting: the device column again reverses the order.
    let first = "return document.querySelector('#devices tbody tr:not([hidden])').dataset.device";
    assert_eq!(b.eval(first).await, json!("dev290"));
    b.click("button[data-sort=device]").await;
    assert_eq!(b.eval(first).await, json!("dev299"));
    b.close().await;
}

#[tokio::test]
async fn lagged_readings_are_counted_on_the_page() {
    let _one = ONE_BROWSER.lock().await;
    let d = TestDaemon::start_with(|c| {
        c.auth.public_subscribers = true;
        c.fanout.subscriber_queue = 10;
    })
    .await;
    let b = Browser::start().await;
    b.client.goto(&d.http("/")).await.unwrap();
    b.until_state(10, "connected").await;
    // One batch of 200 into a queue of 10: the page gets the newest and a
    // `lagged` notice for the rest.
    let (mut ws, _) = d.device("d1").await;
    publish_acked(&mut ws, 1, 1, "temp", 200).await;
    b.until(10, "readings and lagged add up", || async {
        b.num("#held", "data-count").await + b.num("#lagged", "data-lagged").await == 200
    })
    .await;
    assert!(b.num("#lagged", "data-lagged").await > 0);
    assert!(b.text("#lagged").await.contains("missed"));
    assert_eq!(b.num("#held", "data-duplicates").await, 0);
    b.close().await;
}

#[tokio::test]
async fn pause_freezes_the_view_but_keeps_the_connection() {
    let (_one, d, b) = public_page().await;
    let base = d.addr().to_string();
    feed(base.clone(), "d1", &["temp"], 5, Duration::ZERO).await;
    b.until(10, "5 readings", || async {
        b.num("#held", "data-count").await == 5
    })
    .await;
    b.click("#pause").await;
    feed(base, "d1", &["temp"], 10, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.num("#held", "data-count").await, 5, "the view is frozen");
    b.click("#pause").await;
    b.until(10, "the readings that came during the pause", || async {
        b.num("#held", "data-count").await == 10
    })
    .await;
    assert_eq!(b.num("#held", "data-duplicates").await, 0);
    assert_eq!(
        b.num("#status", "data-connects").await,
        1,
        "never reconnected"
    );
    b.close().await;
}

#[tokio::test]
async fn page_streams_over_https_and_wss_from_an_allowed_origin_only() {
    let _one = ONE_BROWSER.lock().await;
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (port, dir, mut config) = restartable_config();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    config.server.tls_cert = Some(cert_path);
    config.server.tls_key = Some(key_path);
    config.server.allowed_origins = vec![format!("https://localhost:{port}")];
    let _d = TestDaemon::start_in(dir, config).await;
    // The test's own self-signed certificate.
    let b = Browser::start_with(&["--ignore-certificate-errors"]).await;

    let token = subscriber_token();
    b.client
        .goto(&format!("https://localhost:{port}/#token={token}"))
        .await
        .unwrap();
    b.until_state(15, "connected").await;

    // Same daemon, another origin (not in server.allowed_origins): the
    // stream is refused, so the page never gets to "connected".
    b.client
        .goto(&format!("https://127.0.0.1:{port}/#token={token}"))
        .await
        .unwrap();
    b.until(15, "a refused stream is retried", || async {
        b.num("#status", "data-connects").await >= 2
    })
    .await;
    assert_ne!(b.attr("#status", "data-state").await.unwrap(), "connected");
    assert!(
        b.text("#status").await.contains("allowed_origins"),
        "the status names the likely cause: {}",
        b.text("#status").await
    );
    b.close().await;
}

#[tokio::test]
async fn assets_are_compressed_cached_and_locked_down() {
    let d = TestDaemon::start().await;
    let client = reqwest::Client::new();
    let page = client.get(d.http("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"));
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    let etag = h["etag"].clone();
    let body = page.text().await.unwrap();
    assert!(body.contains("<script type=\"module\" src=\"/ui/app.js\">"));
    assert!(!body.contains("http://") && !body.contains("https://"));

    // Revalidation: same ETag, no body.
    let again = client
        .get(d.http("/"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());

    // gzip when accepted, smaller than the original, and it decodes to it.
    let url = d.http("/ui/vendor/uplot/uPlot.esm.js");
    let plain = client.get(&url).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    let zipped = client
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["vary"], "Accept-Encoding");
    let zipped = zipped.bytes().await.unwrap();
    assert!(
        zipped.len() * 3 < plain.len(),
        "{} vs {}",
        zipped.len(),
        plain.len()
    );
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&zipped[..]),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(unzipped, plain);

    let missing = client.get(d.http("/ui/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}
