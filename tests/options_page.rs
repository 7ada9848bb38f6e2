use std::time::Duration;

use fantoccini::Locator;
use std::sync::Arc;
use trackgate::rules::Reason;

use trackgate::simulate::mailbox::Store;
use trackgate::simulate::{ExchangeSimulator, FixtureSet, SimulatorOptions};

use crate::support::{self, TestGateway, browser::Browser};

const ALEX_MAILBOX: &str = "00000000-0000-4000-8000-0000000000f1";
const ALEX: &str = "00000000-0000-4000-8000-0000000000a1";

/// A gateway whose catch-up sweep reads the simulator's mailboxes (so their mail reaches the
/// preview's history), with the options page on its development sign-in, Kim as admin, and a
/// directory file that allows two folder rules per mailbox.
async fn gateway(sim: &ExchangeSimulator) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let directory = dir.path().join("directory.toml");
    std::fs::write(
        &directory,
        trackgate::directory::file::EMBEDDED_EXAMPLE.replace(
            "maxfolderbasedtrackingmappings = 25",
            "maxfolderbasedtrackingmappings = 2",
        ),
    )
    .unwrap();
    let extra = format!(
        "{}[directory]\nfile = \"{}\"\n",
        extra(sim, true),
        directory.display()
    );
    let gw = support::gateway(&sim.url(), &extra).await;
    swept(&gw.gateway).await;
    (gw, dir)
}

/// The sweep reads the simulator's mailboxes (so their mail reaches the preview's history,
/// when `catchup`), and the options page runs on its development sign-in with Kim as admin.
fn extra(sim: &ExchangeSimulator, catchup: bool) -> String {
    format!(
        concat!(
            "[listener]\nplaintext = true\n",
            "[exchange]\news_url = \"{url}/EWS/Exchange.asmx\"\nauth = \"basic\"\n",
            "username = 'CONTOSO\\svc-trackgate'\npassword = \"Example-Pa55-svc\"\n",
            "[catchup]\ninterval = \"1s\"\nenabled = {catchup}\n",
            "[options]\nsign_in = \"development\"\nadmins = [\"kim.manager@contoso.example\"]\n"
        ),
        url = sim.url(),
        catchup = catchup
    )
}

/// Waits until every mailbox has been swept once.
async fn swept(gateway: &trackgate::app::Gateway) {
    let sweeper = gateway.catchup().expect("catch-up is on").clone();
    support::wait_for(Duration::from_secs(20), "a first sweep", async || {
        let status = sweeper.status();
        (!status.is_empty() && status.iter().all(|s| s.last_sweep_seconds_ago.is_some()))
            .then_some(())
    })
    .await;
}

/// The stateful simulator: mail can be delivered to it and folders listed.
async fn store_simulator() -> ExchangeSimulator {
    let store = Arc::new(Store::embedded().unwrap());
    support::simulator_with(
        SimulatorOptions::new("store", FixtureSet::embedded().unwrap()).with_store(store),
    )
    .await
}

async fn deliver(sim: &ExchangeSimulator, from: &str, subject: &str, id: &str) {
    let r = support::plain_client()
        .post(format!("{}/_sim/deliver", sim.url()))
        .json(&serde_json::json!({
            "from": from, "to": ["alex.seller@contoso.example"],
            "subject": subject, "message_id": format!("<{id}>"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The gateway's decision about a message, once the sweep has made it.
async fn decision(gw: &TestGateway, id: &str) -> trackgate::rules::Decision {
    support::wait_for(
        Duration::from_secs(15),
        "the sweep's decision",
        async || {
            gw.gateway
                .recent_decisions()
                .into_iter()
                .find(|d| d.internet_message_id.as_deref() == Some(id))
        },
    )
    .await
}

async fn sign_in(browser: &Browser, admin_url: &str, user: &str) -> Result<(), String> {
    browser.goto(admin_url).await?;
    browser.select("#user", user).await?;
    browser.click("#signin").await?;
    browser
        .until("the options page", |t| t.contains("Personal Options"))
        .await
}

/// The browser's part: every step returns why it failed, so a failure leaves a screenshot.
async fn browse(
    browser: &Browser,
    gw: &TestGateway,
    sim: &ExchangeSimulator,
) -> Result<(), String> {
    let c = &browser.client;
    sign_in(
        browser,
        &gw.admin("/options"),
        "alex.seller@contoso.example",
    )
    .await?;
    if !browser.url().await.ends_with(ALEX_MAILBOX) {
        return Err(format!("signed in to {}", browser.url().await));
    }
    // Alex tracks mail from leads, contacts and accounts: the stranger's is not tracked now.
    // Choosing "All email messages" previews it tracked, before anything is saved.
    browser.select("#incoming", "0").await?;
    browser
        .until("the preview of the change", |t| {
            t.contains("Quote for the new printers") && t.contains("filter_all")
        })
        .await?;
    let now = browser.text("#tracked-now").await?;
    let then = browser.text("#tracked-then").await?;
    if now.parse::<u32>().ok() >= then.parse::<u32>().ok() {
        return Err(format!(
            "the preview tracks {then} with the change, {now} now"
        ));
    }
    let changed = browser.text("tr.changed").await?;
    if !(changed.contains("not tracked") && changed.contains("tracked filter_all")) {
        return Err(format!("the changed row reads {changed:?}"));
    }
    browser.screenshot("options-page").await;
    // Every control has a label a screen reader announces.
    let unlabelled = c
        .execute(
            "return [...document.querySelectorAll('select, input:not([type=hidden]), textarea')]\
               .filter(e => !(e.labels && e.labels.length)).map(e => e.name || e.id);",
            Vec::new(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if unlabelled != serde_json::json!([]) {
        return Err(format!("controls without a label: {unlabelled}"));
    }
    // A second folder rule, up to the organization's limit of two.
    browser
        .find("#rule_folder_1")
        .await?
        .select_by_label("Newsletters")
        .await
        .map_err(|e| e.to_string())?;
    // And Alex's Outlook filter off.
    browser.click("#syncfilter_0").await?;
    browser.click("#save").await?;
    browser.until("the save", |t| t.contains("Saved.")).await?;
    let limit = browser.text("#rule-limit").await?;
    if !limit.contains("the most your organization allows (2)") {
        return Err(format!("the limit note reads {limit:?}"));
    }
    if c.find(Locator::Css("#rule_folder_2")).await.is_ok() {
        return Err("a third rule row is offered at the limit".into());
    }
    let selected = c
        .execute(
            "return document.getElementById('incoming').value;",
            Vec::new(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if selected != serde_json::json!("0") {
        return Err(format!("after saving, the filter shows {selected}"));
    }
    // The next decision follows the saved option.
    deliver(
        sim,
        "Someone New <someone.new@elsewhere.example>",
        "After the change",
        "after@elsewhere.example",
    )
    .await;
    let d = decision(gw, "after@elsewhere.example").await;
    if d.reason != Reason::FilterAll {
        return Err(format!("the next decision is {:?}", d.reason));
    }
    // Jo signs in and cannot open Alex's page.
    browser.click("header button").await?;
    browser
        .until("the sign-out", |t| t.contains("Signed out"))
        .await?;
    sign_in(browser, &gw.admin("/options"), "jo.support@contoso.example").await?;
    browser
        .goto(&gw.admin(&format!("/options/{ALEX_MAILBOX}")))
        .await?;
    browser
        .until("the refusal", |t| {
            t.contains("You can open only your own options.")
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_user_previews_a_change_saves_it_and_the_next_decision_follows() {
    let sim = store_simulator().await;
    let (gw, dir) = gateway(&sim).await;
    deliver(
        &sim,
        "Stranger <stranger@elsewhere.example>",
        "Quote for the new printers",
        "quote@elsewhere.example",
    )
    .await;
    let before = decision(&gw, "quote@elsewhere.example").await;
    assert!(!before.is_track(), "{before:#?}");

    let browser = Browser::start("options_page").await;
    let result = browse(&browser, &gw, &sim).await;
    if let Err(why) = result {
        let shot = browser.screenshot("failure").await;
        browser.close().await;
        panic!("{why}\nscreenshot: {}", shot.display());
    }
    browser.close().await;
    // The file holds the change, and the audit trail says who made it without mail addresses.
    let saved = std::fs::read_to_string(dir.path().join("directory.toml")).unwrap();
    assert!(
        saved.contains("incomingemailfilteringmethod = 0"),
        "{saved}"
    );
    assert!(saved.contains("enabled = false"), "{saved}");
    assert!(
        saved.contains("# --- personal options"),
        "the file keeps its comments"
    );
    gw.gateway.shutdown().await;
    sim.stop().await;
}

/// A client of the page with its own cookies.
struct Visitor {
    http: reqwest::Client,
    cookies: Vec<String>,
}

impl Visitor {
    fn new() -> Visitor {
        Visitor {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for set in r.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            self.cookies.push(pair);
        }
    }

    async fn get(&mut self, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let r = self
            .http
            .get(url)
            .header("cookie", self.cookies.join("; "))
            .send()
            .await
            .unwrap();
        self.keep(&r);
        (
            r.status().as_u16(),
            r.headers().clone(),
            r.text().await.unwrap(),
        )
    }

    async fn post(&mut self, url: &str, form: &str, origin: Option<&str>) -> (u16, String) {
        let mut request = self
            .http
            .post(url)
            .header("cookie", self.cookies.join("; "))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let r = request.send().await.unwrap();
        self.keep(&r);
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn sign_in(&mut self, gw: &TestGateway, user: &str) -> String {
        self.sign_in_at(&gw.admin(""), user).await
    }

    /// Signs in on the admin listener at `admin`; returns the session's form token.
    async fn sign_in_at(&mut self, admin: &str, user: &str) -> String {
        let (_, _, page) = self.get(&format!("{admin}/options/signin")).await;
        let token = csrf_of(&page);
        let form = format!("csrf={token}&user={user}");
        let (status, _) = self
            .post(&format!("{admin}/options/signin"), &form, None)
            .await;
        assert_eq!(status, 303, "signed in as {user}");
        let (_, _, page) = self.get(&format!("{admin}/options/{ALEX_MAILBOX}")).await;
        csrf_of(&page)
    }
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .map(|i| i + 19)
        .unwrap_or(0);
    page[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_their_token_or_from_another_site_are_refused_and_admins_see_the_audit() {
    let sim = store_simulator().await;
    let (gw, _dir) = gateway(&sim).await;
    let page = gw.admin(&format!("/options/{ALEX_MAILBOX}"));

    // A sign-in without the form's cookie is refused; so is the page without a session.
    let mut stranger = Visitor::new();
    let (status, _) = stranger
        .post(
            &gw.admin("/options/signin"),
            "csrf=00&user=alex.seller@contoso.example",
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = stranger.get(&page).await;
    assert_eq!(status, 303, "to the sign-in page");

    let mut alex = Visitor::new();
    let token = alex.sign_in(&gw, "alex.seller@contoso.example").await;
    assert_eq!(token.len(), 64);
    let (status, headers, body) = alex.get(&page).await;
    assert_eq!(status, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        !body.contains("<script>") && !body.contains("style="),
        "nothing inline"
    );
    let form = "incoming=0&autocreate=1&exclusions=family.example&action=save";
    assert_eq!(alex.post(&page, form, None).await.0, 403, "no token");
    let with_token = format!("csrf={token}&{form}");
    assert_eq!(
        alex.post(&page, &with_token, Some("http://evil.example"))
            .await
            .0,
        403,
        "another site's form"
    );
    // A bad value is refused naming its field, and nothing changes.
    let (status, body) = alex
        .post(
            &page,
            &format!("csrf={token}&incoming=9&autocreate=1&action=save"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("incoming:"), "{body}");
    let (status, _) = alex.post(&page, &with_token, None).await;
    assert_eq!(status, 303, "saved");
    let privacy = alex.get(&format!("{page}/privacy")).await.2;
    assert!(privacy.contains("family.example") && privacy.contains("Attachments: never."));
    assert_eq!(
        alex.get(&gw.admin("/options/audit")).await.0,
        403,
        "admins only"
    );

    // Jo cannot open Alex's page; Kim, an admin, can, and reads the audit trail.
    let mut jo = Visitor::new();
    jo.sign_in(&gw, "jo.support@contoso.example").await;
    assert_eq!(jo.get(&page).await.0, 403);
    let mut kim = Visitor::new();
    kim.sign_in(&gw, "kim.manager@contoso.example").await;
    assert_eq!(kim.get(&page).await.0, 200);
    let (status, _, audit) = kim.get(&gw.admin("/options/audit")).await;
    assert_eq!(status, 200);
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit[0]["by"], ALEX);
    assert_eq!(audit[0]["user"], ALEX);
    let text = audit.to_string();
    assert!(
        text.contains("incomingemailfilteringmethod") && text.contains("1 entries"),
        "{text}"
    );
    // The same preview as an API: POST /explain with options overrides.
    let seen = trackgate::inspect::Observation::MessageSeen {
        origin: trackgate::inspect::Origin {
            mailbox: Some("alex.seller@contoso.example".into()),
            source: trackgate::inspect::Source::Ews,
            operation: "GetItem".into(),
        },
        message: trackgate::inspect::Message {
            item_id: Some("AAMkPreview=".into()),
            folder: Some("inbox".into()),
            internet_message_id: Some("preview@elsewhere.example".into()),
            subject: Some("Preview me".into()),
            from: Some(trackgate::inspect::Address {
                name: None,
                address: Some("someone@elsewhere.example".into()),
                routing_type: Some("SMTP".into()),
            }),
            to: vec![trackgate::inspect::Address {
                name: None,
                address: Some("alex.seller@contoso.example".into()),
                routing_type: Some("SMTP".into()),
            }],
            received_at: Some("2026-12-04T10:00:00Z".into()),
            item_class: Some("IPM.Note".into()),
            ..Default::default()
        }
        .into(),
        initial_sync: false,
    };
    let answer = support::json_of(support::plain_client().post(gw.admin("/explain")).json(
        &serde_json::json!({
            "mailbox": "alex.seller@contoso.example",
            "options": {"trackingexclusions": ["elsewhere.example"]},
            "observations": [seen],
        }),
    ))
    .await;
    assert_eq!(answer["now"][0]["reason"], "filter_all", "{answer:#}");
    assert_eq!(
        answer["proposed"][0]["reason"], "excluded_by_user",
        "{answer:#}"
    );
    assert!(
        !text.contains("family.example") && !text.contains('@'),
        "no addresses: {text}"
    );
    gw.gateway.shutdown().await;
    sim.stop().await;
}

/// The value of the `<option>` labelled `label`.
fn option_value(page: &str, label: &str) -> String {
    let end = page
        .find(&format!(">{label}</option>"))
        .expect("the option is offered");
    let start = page[..end]
        .rfind("value=\"")
        .expect("the option has a value")
        + 7;
    page[start..end].split('"').next().unwrap().to_owned()
}

/// The demo kept running (its directory is the Dataverse simulator), Alex signed in to his
/// page: the demo, his client, the form token and the page's URL.
async fn demo_as_alex() -> (trackgate::demo::Running, Visitor, String, String) {
    let (_, running) = trackgate::demo::run(true, |_| {})
        .await
        .expect("the demo runs");
    let running = running.expect("kept running");
    let admin = running.gateway.admin_url();
    let mut alex = Visitor::new();
    let token = alex.sign_in_at(&admin, "alex.seller@contoso.example").await;
    let page = format!("{admin}/options/{ALEX_MAILBOX}");
    (running, alex, token, page)
}

/// A value as a form sends it.
fn encoded(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_through_dataverse_the_options_land_in_its_rows_and_the_rules_follow_at_once() {
    let (running, mut alex, token, page) = demo_as_alex().await;
    let html = alex.get(&page).await.2;
    let fabrikam_row = |dv: &trackgate::simulate::DataverseSimulator| {
        dv.records("mailboxtrackingfolders")
            .into_iter()
            .find(|r| r["exchangefolderid"] == "AAMkADEzTrackedFolderAAA=")
            .map(|r| r["mailboxtrackingfolderid"].clone())
    };
    let row_before = fabrikam_row(&running.dataverse);
    assert!(row_before.is_some());
    let newsletters = option_value(&html, "Newsletters");
    let fabrikam = "account%3A00000000-0000-4000-8000-0000000000c2";
    let form = format!(
        "csrf={token}&incoming=0&autocreate=1&exclusions=family.example\
         &rule_folder=AAMkADEzTrackedFolderAAA%3D&rule_regarding={fabrikam}\
         &rule_folder={}&rule_regarding=\
         &syncfilter_shown=00000000-0000-4000-8000-0000000000d9&action=save",
        encoded(&newsletters)
    );
    let (status, body) = alex.post(&page, &form, None).await;
    assert_eq!(status, 303, "{body}");
    // In Dataverse: the usersettings column and one new folder row, the old one kept as it was.
    let settings = running.dataverse.records("usersettingscollection");
    let row = settings
        .iter()
        .find(|r| r["systemuserid"] == ALEX)
        .expect("Alex's usersettings");
    assert_eq!(row["incomingemailfilteringmethod"], 0, "{row:?}");
    let folders: Vec<_> = running
        .dataverse
        .records("mailboxtrackingfolders")
        .into_iter()
        .filter(|r| r["_mailboxid_value"]["id"] == ALEX_MAILBOX)
        .collect();
    let ids: Vec<_> = folders
        .iter()
        .map(|r| r["exchangefolderid"].clone())
        .collect();
    assert_eq!(folders.len(), 2, "{folders:#?}");
    assert!(ids.contains(&serde_json::json!(newsletters)), "{ids:?}");
    assert_eq!(
        fabrikam_row(&running.dataverse),
        row_before,
        "the unchanged rule's row is kept"
    );
    // The sync filter left unticked is a deactivated saved view.
    let filter = running
        .dataverse
        .records("userqueries")
        .into_iter()
        .find(|r| r["userqueryid"] == "00000000-0000-4000-8000-0000000000d9")
        .expect("Alex's Outlook filter");
    assert_eq!(
        (filter["statecode"].clone(), filter["statuscode"].clone()),
        (1.into(), 2.into())
    );
    // The organization's default Outlook filter template came through Dataverse too.
    let replicated = running
        .gateway
        .dataverse_source()
        .expect("the demo's directory is Dataverse")
        .document()
        .await;
    let templates = &replicated.organization.outlookfiltertemplates;
    assert_eq!(templates.len(), 1, "{templates:?}");
    assert_eq!(templates[0].name.as_deref(), Some("My Outlook Contacts"));
    // The rules read it now, and the gateway's own column survives a refresh from Dataverse.
    for _ in 0..2 {
        let dir = running.gateway.engine().directory().load();
        let entry = dir.mailbox("alex.seller@contoso.example").unwrap();
        let trackgate::directory::Owner::User(u) = entry.owner else {
            panic!("Alex owns his mailbox")
        };
        assert_eq!(dir.user(u).settings.incomingemailfilteringmethod, 0);
        assert_eq!(
            dir.user(u).settings.trackingexclusions,
            vec!["family.example"]
        );
        assert_eq!(entry.rule_count(), 2);
        let filters = &dir.user(u).settings.syncfilters;
        assert_eq!(
            filters.len(),
            3,
            "Alex's Outlook filters (contacts, appointments, tasks), read from userqueries"
        );
        let contacts = filters
            .iter()
            .find(|f| f.entity == "contact")
            .expect("the contact filter");
        assert!(!contacts.enabled, "switched off on the page");
        assert!(
            filters
                .iter()
                .filter(|f| f.entity != "contact")
                .all(|f| f.enabled),
            "the filters not on the form are kept as they were"
        );
        running.gateway.refresh_directory().await.unwrap();
    }
    running.stop().await;
}

/// Signs in through the identity provider's page in the browser.
async fn oidc_sign_in(browser: &Browser, gw: &TestGateway, account: &str) -> Result<(), String> {
    browser.goto(&gw.admin("/options")).await?;
    browser
        .until("the provider's page", |t| {
            t.contains("Sign in to the simulated tenant")
        })
        .await?;
    browser.select("#login", account).await?;
    browser.click("#next").await?;
    browser
        .until("the options page", |t| t.contains("Personal Options"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_openid_connect_a_user_signs_in_at_the_provider_and_a_group_makes_an_admin() {
    let doc: trackgate::directory::DirectoryDocument =
        toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap();
    let dv = trackgate::simulate::DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        trackgate::simulate::DataverseOptions {
            seed: Some(doc),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    dv.set_groups(
        "kim.manager@contoso.example",
        &["5e1f0000-0000-4000-8000-00000000ad01"],
    );
    let sim = support::simulator("sim").await;
    let port = support::closed_port();
    let extra = format!(
        concat!(
            "[options]\nsign_in = \"oidc\"\noidc_issuer = \"{issuer}\"\n",
            "oidc_client_id = \"trackgate-options\"\npublic_url = \"http://127.0.0.1:{port}\"\n",
            "admin_group = \"5e1f0000-0000-4000-8000-00000000ad01\"\n"
        ),
        issuer = dv.issuer(),
        port = port
    );
    trackgate::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), &sim.url(), &extra);
    config.admin.address = format!("127.0.0.1:{port}").parse().unwrap();
    let gw = TestGateway {
        gateway: trackgate::app::start(config).await.unwrap(),
        dir,
    };

    // A callback this browser did not start is refused.
    let forged = support::plain_client()
        .get(gw.admin("/options/callback?code=stolen&state=guessed"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("not started here"));

    let browser = Browser::start("options_page_oidc").await;
    let steps = async {
        oidc_sign_in(&browser, &gw, "jo.support@contoso.example").await?;
        if browser.client.find(Locator::Css("nav")).await.is_ok() {
            return Err("Jo is no admin but sees other users".to_owned());
        }
        // Signed out once the page says so (the click returns before the navigation).
        browser.click("header button").await?;
        browser
            .until("the sign-out", |t| t.contains("Signed out"))
            .await?;
        oidc_sign_in(&browser, &gw, "kim.manager@contoso.example").await?;
        let others = browser.text("nav").await?;
        if !others.contains("alex.seller@contoso.example") {
            return Err(format!("Kim, in the admin group, sees {others:?}"));
        }
        browser
            .goto(&gw.admin(&format!("/options/{ALEX_MAILBOX}")))
            .await?;
        browser
            .until("Alex's page", |t| {
                t.contains("for alex.seller@contoso.example")
            })
            .await
    };
    if let Err(why) = steps.await {
        let shot = browser.screenshot("failure").await;
        browser.close().await;
        panic!("{why}\nscreenshot: {}", shot.display());
    }
    browser.close().await;
    gw.gateway.shutdown().await;
    sim.stop().await;
    dv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_history_is_saved_at_shutdown_and_replayed_after_a_restart() {
    let sim = store_simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let start = async |catchup: bool| {
        trackgate::tls::install_crypto_provider();
        // A restart in the same process: the previous gateway's threads close its files just
        // after its shutdown returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let config = support::config(dir.path(), &sim.url(), &extra(&sim, catchup));
            match trackgate::app::start(config).await {
                Err(
                    trackgate::app::AppError::Outbox(trackgate::outbox::OutboxError::InUse {
                        ..
                    })
                    | trackgate::app::AppError::Options(_),
                ) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                started => return started.expect("gateway starts"),
            }
        }
    };
    let gateway = start(true).await;
    swept(&gateway).await;
    deliver(
        &sim,
        "Stranger <stranger@elsewhere.example>",
        "Before the restart",
        "kept@elsewhere.example",
    )
    .await;
    support::wait_for(
        Duration::from_secs(15),
        "the sweep's decision",
        async || {
            gateway
                .recent_decisions()
                .into_iter()
                .find(|d| d.internet_message_id.as_deref() == Some("kept@elsewhere.example"))
        },
    )
    .await;
    gateway.shutdown().await;

    // No sweep this time: only the saved history can bring the message back.
    let gateway = start(false).await;
    let answer = support::json_of(
        support::plain_client()
            .post(format!("{}/explain", gateway.admin_url()))
            .json(&serde_json::json!({
                "mailbox": "alex.seller@contoso.example",
                "options": {"incomingemailfilteringmethod": 0},
            })),
    )
    .await;
    let proposed = answer["proposed"].as_array().unwrap();
    let kept = proposed
        .iter()
        .find(|d| d["internet_message_id"] == "kept@elsewhere.example")
        .unwrap_or_else(|| panic!("the message is replayed: {answer:#}"));
    assert_eq!(kept["reason"], "filter_all");
    gateway.shutdown().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataverse_save_refused_part_way_shows_what_dataverse_holds_and_a_retry_completes_it() {
    use trackgate::simulate::dataverse::{DataverseFaults, Fail, RequestKind};
    let (running, mut alex, token, page) = demo_as_alex().await;
    let newsletters = option_value(&alex.get(&page).await.2, "Newsletters");
    // The Fabrikam rule replaced by one on Newsletters: the delete goes through, the create
    // is refused.
    let form = format!(
        "csrf={token}&incoming=2&autocreate=1&rule_folder={}&rule_regarding=&action=save",
        encoded(&newsletters)
    );
    running.dataverse.set_faults(DataverseFaults {
        fail: Some(Fail {
            count: 1000,
            status: 400,
            only: Some(RequestKind::Create),
        }),
        ..Default::default()
    });
    let (status, body) = alex.post(&page, &form, None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("Not all saved"), "{body}");
    let rules = |running: &trackgate::demo::Running| {
        let dir = running.gateway.engine().directory().load();
        dir.mailbox("alex.seller@contoso.example")
            .map(|m| m.rule_count())
    };
    assert_eq!(
        rules(&running),
        Some(0),
        "the rules read what Dataverse holds: none"
    );
    // Saved again once Dataverse takes it: the rule is there, once.
    running.dataverse.set_faults(DataverseFaults::default());
    let (status, body) = alex.post(&page, &form, None).await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(rules(&running), Some(1));
    let rows = running
        .dataverse
        .records("mailboxtrackingfolders")
        .into_iter()
        .filter(|r| r["_mailboxid_value"]["id"] == ALEX_MAILBOX)
        .count();
    assert_eq!(rows, 1);
    running.stop().await;
}
