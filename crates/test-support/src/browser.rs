//! A real browser for the console's tests: Debian's `chromium` driven by its
//! `chromedriver` (package `chromium-driver`) through WebDriver (fantoccini). Each
//! test starts its own chromedriver on a free port, headless, at 1280×800, and saves
//! its screenshots under `target/console-screenshots/<test name>/NN-page.png`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// The chromedriver to start: `$CHROMEDRIVER`, else Debian's.
fn chromedriver() -> PathBuf {
    std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

/// The browser binary: `$CHROMIUM`, else Debian's.
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// `target/console-screenshots`: next to the test executable's profile directory.
pub fn screenshot_root() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> → target
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("console-screenshots")
}

/// A headless chromium session; chromedriver is killed when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    dir: PathBuf,
    shots: AtomicU32,
    /// The app's base URL, e.g. `http://127.0.0.1:1234`.
    pub base: String,
}

impl Browser {
    /// Starts chromedriver and a browser for test `name` against the app at `base`.
    pub async fn start(name: &str, base: &str) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed (apt-get install chromium chromium-driver; scripts/test.sh does it)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800",
                         "--hide-scrollbars", "--lang=en-US"],
            }),
        );
        let mut client = None;
        for _ in 0..5 {
            match ClientBuilder::native()
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(e) => {
                    eprintln!("starting chromium: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let client = client.expect("chromium starts under chromedriver");
        client
            .set_window_size(1280, 800)
            .await
            .expect("set the window size");
        let dir = screenshot_root().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the screenshot folder");
        Browser {
            client,
            driver,
            dir,
            shots: AtomicU32::new(0),
            base: base.to_owned(),
        }
    }

    /// Opens `path` of the app.
    pub async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// Saves a screenshot of the page as `NN-<page>.png`; returns its path.
    pub async fn screenshot(&self, page: &str) -> PathBuf {
        let n = self.shots.fetch_add(1, Ordering::SeqCst) + 1;
        let png = self.client.screenshot().await.expect("take a screenshot");
        let path = self.dir.join(format!("{n:02}-{page}.png"));
        std::fs::write(&path, png).expect("save the screenshot");
        path
    }

    /// Signs in on the console's form with `key`.
    pub async fn sign_in(&self, key: &str) {
        self.open("/ui/login").await;
        self.fill("#api_key", key).await;
        self.click("#sign-in").await;
        self.wait_for("nav[aria-label='Console']").await;
    }

    /// Types `text` into the field `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.ok();
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The element `css`, waited for up to 10 s.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let url = self.url().await;
                let source = self.source().await;
                panic!("no element {css} on {url}: {e}\n{source}")
            }
        }
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map(|all| all.len())
            .unwrap_or(0)
    }

    /// Waits for an element `css`.
    pub async fn wait_for(&self, css: &str) {
        self.find(css).await;
    }

    /// The text of the element `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// The page's whole HTML source as the browser has it.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Accepts the `confirm()` dialog the last click opened (waits up to 5 s).
    pub async fn accept_dialog(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.client.accept_alert().await {
                Ok(()) => return,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no dialog to accept: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Whether an alert is open (a script ran `alert()`: it never may).
    pub async fn alert_open(&self) -> bool {
        self.client.get_alert_text().await.is_ok()
    }

    /// Ends the browser session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
