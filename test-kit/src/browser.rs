//! A real headless Chromium for the dashboard tests: chromedriver on a
//! free loopback port, one WebDriver session (fantoccini) with a fresh
//! profile and no background traffic, helpers to read the page's `data-`
//! attributes, the browser's network and console logs, DevTools commands
//! (offline, colour scheme) and screenshots into `target/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

use crate::{free_port, target_dir};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser at a time: Chromium is heavy on a small CI machine, and
/// the tests' timing (reconnect backoff) should not compete for CPU.
pub static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// chromedriver on a free loopback port with one headless Chromium session
/// (fresh profile, no background traffic to Google). Killed on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        Self::start_with(&[]).await
    }

    /// A browser with `extra` command-line switches.
    pub async fn start_with(extra: &[&str]) -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver \
                 (scripts/test does: apt-get install chromium chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        // Every request the page makes, for the same-origin check.
        caps.insert(
            "goog:loggingPrefs".into(),
            json!({"performance": "ALL", "browser": "ALL"}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session within 30 s: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let script = "const e = document.querySelector(arguments[0]); \
                      return e ? e.getAttribute(arguments[1]) : null;";
        match self
            .client
            .execute(script, vec![json!(css), json!(name)])
            .await
        {
            Ok(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    pub async fn num(&self, css: &str, name: &str) -> u64 {
        self.attr(css, name)
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub async fn text(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); \
                      return e ? e.textContent : '';";
        match self.client.execute(script, vec![json!(css)]).await {
            Ok(Value::String(s)) => s,
            _ => String::new(),
        }
    }

    /// Polls `check` every 100 ms until it holds; fails after `secs`
    /// with `what` and the page's status line.
    pub async fn until<F, Fut>(&self, secs: u64, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check().await {
            if Instant::now() > deadline {
                let status = self.text("#status").await;
                let held = self.text("#held").await;
                let logs = self.log("browser").await;
                panic!(
                    "{what}: not within {secs} s (status {status:?}, {held:?}, console {logs:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` in the page; returns what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Clicks the element that `css` selects.
    pub async fn click(&self, css: &str) {
        self.client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Waits for the status line's `data-state` to become `state`.
    pub async fn until_state(&self, secs: u64, state: &str) {
        self.until(secs, &format!("status {state}"), || async {
            self.attr("#status", "data-state").await.as_deref() == Some(state)
        })
        .await
    }

    /// The browser's log of `kind` ("performance": the network; "browser":
    /// the console), entries since the last call.
    pub async fn log(&self, kind: &str) -> Vec<Value> {
        let v = self
            .client
            .issue_cmd(Post {
                path: "se/log",
                body: json!({"type": kind}),
            })
            .await
            .expect("chromedriver returns its log");
        v.as_array().cloned().unwrap_or_default()
    }

    /// Cuts the browser off the network (or reconnects it).
    pub async fn offline(&self, offline: bool) {
        self.cdp(
            "Network.emulateNetworkConditions",
            json!({"offline": offline, "latency": 0, "downloadThroughput": -1,
                   "uploadThroughput": -1}),
        )
        .await;
    }

    pub async fn cdp(&self, cmd: &str, params: Value) {
        self.client
            .issue_cmd(Post {
                path: "goog/cdp/execute",
                body: json!({"cmd": cmd, "params": params}),
            })
            .await
            .expect("DevTools command");
    }

    /// Emulates the OS colour scheme (`"light"` or `"dark"`).
    pub async fn color_scheme(&self, scheme: &str) {
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await;
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = target_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A chromedriver extension command: `POST /session/{id}/{path}` with a
/// JSON body (`se/log` for the logs, `goog/cdp/execute` for DevTools).
#[derive(Debug)]
struct Post {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for Post {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/{}", session.unwrap_or(""), self.path))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (hyper::Method::POST, Some(self.body.to_string()))
    }
}
