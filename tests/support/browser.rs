//! A real browser for page tests: Debian's headless Chromium driven through its ChromeDriver
//! (WebDriver) by fantoccini. Each browser gets a fresh profile; screenshots go to the test's
//! output folder (`target/test-output/<test>/`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    out: PathBuf,
}

impl Browser {
    /// Starts ChromeDriver on a free port and a headless Chromium through it.
    pub async fn start(test: &str) -> Browser {
        let port = super::closed_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER} starts (scripts/test.sh installs it): {e}"));
        let url = format!("http://127.0.0.1:{port}");
        super::wait_for(
            Duration::from_secs(20),
            "ChromeDriver to listen",
            async || {
                reqwest::get(format!("{url}/status"))
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        )
        .await;
        let profile = tempfile::tempdir().expect("profile folder");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1200,1600",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::rustls()
            .expect("WebDriver client")
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a headless Chromium session");
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-output")
            .join(test);
        std::fs::create_dir_all(&out).expect("test output folder");
        Browser {
            client,
            driver,
            _profile: profile,
            out,
        }
    }

    /// Saves a screenshot of the page as `<name>.png` in the test's output folder.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = self.out.join(format!("{name}.png"));
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(&path, png);
        }
        path
    }

    /// The text of the element `css`, once it exists (waited for with a deadline).
    pub async fn text(&self, css: &str) -> Result<String, String> {
        let element = self.find(css).await?;
        element.text().await.map_err(|e| format!("{css}: {e}"))
    }

    pub async fn find(&self, css: &str) -> Result<fantoccini::elements::Element, String> {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => Ok(element),
            Err(e) => Err(format!("no {css} on {}: {e}", self.url().await)),
        }
    }

    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.client
            .goto(url)
            .await
            .map_err(|e| format!("{url}: {e}"))
    }

    /// Picks the option with this value in the `<select>` at `css`.
    pub async fn select(&self, css: &str, value: &str) -> Result<(), String> {
        let element = self.find(css).await?;
        element
            .select_by_value(value)
            .await
            .map_err(|e| format!("{css} = {value}: {e}"))
    }

    pub async fn click(&self, css: &str) -> Result<(), String> {
        let element = self.find(css).await?;
        element
            .click()
            .await
            .map_err(|e| format!("click {css}: {e}"))
    }

    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Waits until `check` of the page's text holds.
    pub async fn until(&self, what: &str, check: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.text("body").await.unwrap_or_default();
            if check(&text) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{what}: not seen on {}; the page says:\n{text}",
                    self.url().await
                ));
            }
            tokio::task::yield_now().await;
            // WebDriver round trips pace this loop; each reads the page afresh.
        }
    }

    /// Ends the browser and its driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
