//! The Dataverse simulator refuses over HTTP what Dataverse refuses: undeclared, read-only and
//! mistyped properties, binds through the wrong navigation property, writes to closed
//! activities, `POST` to an entity, unknown callers and expired tokens; and the gateway's own
//! writes pass it.

use std::time::Duration;

use serde_json::{Value, json};
use trackgate::directory::model::DirectoryDocument;
use trackgate::simulate::{DataverseOptions, DataverseSimulator};
use uuid::Uuid;

use crate::support;

const PAT_CONTACT: &str = "00000000-0000-4000-8000-0000000000c1";
const FABRIKAM: &str = "00000000-0000-4000-8000-0000000000c2";
/// Alex's Entra object id; Jo has none, so nothing can act as Jo.
const ALEX_OBJECT_ID: &str = "10000000-0000-4000-8000-0000000000a1";

fn contoso() -> DirectoryDocument {
    toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap()
}

async fn strict(token_lifetime: Duration) -> DataverseSimulator {
    DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        DataverseOptions {
            credentials: Some(("id".into(), "secret".into())),
            seed: Some(contoso()),
            token_lifetime,
            ..DataverseOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn token(dv: &DataverseSimulator) -> String {
    let answer = support::json_of(support::plain_client().post(dv.token_url()).form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "id"),
        ("client_secret", "secret"),
    ]))
    .await;
    answer["access_token"].as_str().unwrap().to_owned()
}

/// The API as one token holder sees it; answers are the status and the error code (or the
/// body).
struct Api<'a> {
    dv: &'a DataverseSimulator,
    token: String,
}

impl Api<'_> {
    async fn new(dv: &DataverseSimulator) -> Api<'_> {
        Api {
            dv,
            token: token(dv).await,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, String) {
        let mut request = support::plain_client()
            .request(method, format!("{}/api/data/v9.2{path}", self.dv.url()))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let code = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or(text);
        (status, code)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.call(reqwest::Method::GET, path, &[], None).await
    }

    /// A create-only upsert (`If-None-Match: *`), with more headers.
    async fn create(&self, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, String) {
        let headers = [&[("If-None-Match", "*")], headers].concat();
        self.call(reqwest::Method::PATCH, path, &headers, Some(body))
            .await
    }

    /// An update-only upsert (`If-Match: *`).
    async fn update(&self, path: &str, body: Value) -> (u16, String) {
        self.call(
            reqwest::Method::PATCH,
            path,
            &[("If-Match", "*")],
            Some(body),
        )
        .await
    }
}

fn new_email(extra: Value) -> Value {
    let mut body = json!({"subject": "Hello", "directioncode": false});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn writes_dataverse_refuses_are_refused_with_its_status_and_code() {
    let dv = strict(Duration::from_secs(3600)).await;
    let api = Api::new(&dv).await;
    let fabrikam = format!("/accounts({FABRIKAM})");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "an undeclared column",
            json!({"colour": "red"}),
            "0x80048d19",
        ),
        (
            "read-only conversationindex",
            json!({"conversationindex": "AQ=="}),
            "0x80040203",
        ),
        (
            "read-only inreplyto",
            json!({"inreplyto": "<a@b>"}),
            "0x80040203",
        ),
        (
            "read-only senton",
            json!({"senton": "2026-12-05T10:00:00Z"}),
            "0x80040203",
        ),
        ("statecode on create", json!({"statecode": 1}), "0x80040203"),
        (
            "a subject over 800 characters",
            json!({"subject": "x".repeat(801)}),
            "0x80044331",
        ),
        (
            "a string for a boolean",
            json!({"directioncode": "false"}),
            "0x80048d19",
        ),
        (
            "a lookup set by its column",
            json!({"regardingobjectid": FABRIKAM}),
            "0x80048d19",
        ),
        (
            "a bind through an undeclared navigation property",
            json!({"anything@odata.bind": fabrikam}),
            "0x80048d19",
        ),
        (
            "a bind through another target's navigation property",
            json!({"regardingobjectid_contact_email@odata.bind": fabrikam}),
            "0x80048d19",
        ),
        (
            "a status of another state",
            json!({"statuscode": 4}),
            "0x80040278",
        ),
        (
            "two senders",
            json!({"email_activity_parties": [
                {"participationtypemask": 1, "addressused": "a@x.example"},
                {"participationtypemask": 1, "addressused": "b@x.example"}]}),
            "0x80048d19",
        ),
        (
            "an organizer on an email",
            json!({"email_activity_parties": [
                {"participationtypemask": 7, "addressused": "a@x.example"}]}),
            "0x80048d19",
        ),
    ];
    let refused = cases.len() as u64;
    for (n, (what, extra, code)) in cases.into_iter().enumerate() {
        let path = format!("/emails({})", Uuid::from_u128(0xe000 + n as u128));
        let answer = api.create(&path, &[], new_email(extra)).await;
        assert_eq!(answer, (400, code.to_owned()), "{what}");
    }
    assert!(
        dv.records("emails")
            .iter()
            .all(|e| !e.contains_key("_sim_created_seq")),
        "nothing refused was stored"
    );

    let post = api
        .call(
            reqwest::Method::POST,
            "/emails(00000000-0000-0000-0000-0000000000e1)",
            &[],
            Some(new_email(json!({}))),
        )
        .await;
    assert_eq!(post.0, 405, "POST to an entity: {}", post.1);
    assert_eq!(api.get("/widgets").await, (404, "0x8006088a".into()));
    assert_eq!(
        api.get("/accounts?$select=Name").await,
        (400, "0x0".into()),
        "property names are case-sensitive"
    );
    assert_eq!(
        api.get("/accounts?$select=name,_ownerid_value").await.0,
        200
    );
    assert_eq!(
        dv.stats().refused,
        refused + 2,
        "405 and 400 counted, 404 not"
    );
}

#[tokio::test]
async fn a_closed_email_is_read_only_but_its_state_so_a_relink_reopens_it_first() {
    let dv = strict(Duration::from_secs(3600)).await;
    let api = Api::new(&dv).await;
    let id = Uuid::from_u128(0xc105ed);
    let path = format!("/emails({id})");
    let body = new_email(json!({
        "email_activity_parties": [
            {"participationtypemask": 1, "partyid_contact@odata.bind": format!("/contacts({PAT_CONTACT})")},
            {"participationtypemask": 2, "addressused": "alex.seller@contoso.example"}],
    }));
    assert_eq!(api.create(&path, &[], body).await.0, 204);
    let received = json!({"statecode": 1, "statuscode": 4});
    assert_eq!(api.update(&path, received).await.0, 204);

    let (status, _) = api.update(&path, json!({"subject": "Changed"})).await;
    assert_eq!(status, 400, "a received email's subject is read-only");
    let regarding =
        json!({"regardingobjectid_account_email@odata.bind": format!("/accounts({FABRIKAM})")});
    let (status, _) = api.update(&path, regarding.clone()).await;
    assert_eq!(status, 400, "a closed email's regarding is read-only too");
    let reopened = json!({"statecode": 0, "statuscode": 1});
    assert_eq!(api.update(&path, reopened).await.0, 204, "reopened");
    let (status, code) = api.update(&path, regarding).await;
    assert_eq!(status, 204, "re-linked while open: {code}");
    let received = json!({"statecode": 1, "statuscode": 4});
    assert_eq!(api.update(&path, received).await.0, 204, "closed again");
    let stored = dv
        .records("emails")
        .into_iter()
        .find(|e| e["activityid"] == id.to_string())
        .unwrap();
    assert_eq!(stored["subject"], "Hello");
    assert_eq!(stored["statuscode"], 4);
    assert_eq!(
        stored["_regardingobjectid_account_email_value"]["id"],
        FABRIKAM
    );
    let parties = json!({"email_activity_parties": [
        {"participationtypemask": 3, "addressused": "x@y.example"}]});
    assert_eq!(
        api.update(&path, parties).await.0,
        400,
        "no deep update of parties"
    );
}

#[tokio::test]
async fn caller_object_id_must_name_an_enabled_user() {
    let dv = strict(Duration::from_secs(3600)).await;
    let api = Api::new(&dv).await;
    let email = |n: u128| format!("/emails({})", Uuid::from_u128(n));
    let as_caller = |caller: &'static str| [("CallerObjectId", caller)];
    let nobody = as_caller("20000000-0000-4000-8000-0000000000ff");
    let (status, _) = api.create(&email(1), &nobody, new_email(json!({}))).await;
    assert_eq!(status, 403, "an object id no user has");
    let (status, _) = api
        .create(&email(2), &as_caller(ALEX_OBJECT_ID), new_email(json!({})))
        .await;
    assert_eq!(status, 204, "Alex");
    let alex = dv
        .records("emails")
        .into_iter()
        .find(|e| e["activityid"] == Uuid::from_u128(2).to_string())
        .unwrap();
    assert_eq!(alex["_sim_callerobjectid"], ALEX_OBJECT_ID);

    // Alex leaves: the account is disabled.
    let mut row = dv
        .records("systemusers")
        .into_iter()
        .find(|u| u["azureactivedirectoryobjectid"] == ALEX_OBJECT_ID)
        .unwrap();
    row.insert("isdisabled".into(), true.into());
    let alex_id = Uuid::parse_str(row["systemuserid"].as_str().unwrap()).unwrap();
    dv.seed_record("systemusers", alex_id, row);
    let (status, _) = api
        .create(&email(3), &as_caller(ALEX_OBJECT_ID), new_email(json!({})))
        .await;
    assert_eq!(status, 403, "a disabled user");
}

#[tokio::test]
async fn tokens_expire_after_their_lifetime() {
    let dv = strict(Duration::from_secs(1)).await;
    let api = Api::new(&dv).await;
    let query = "/accounts?$select=name";
    assert_eq!(api.get(query).await.0, 200);
    support::wait_for(Duration::from_secs(10), "the token to expire", async || {
        (api.get(query).await.0 == 401).then_some(())
    })
    .await;
    assert_eq!(
        Api::new(&dv).await.get(query).await.0,
        200,
        "a new token works"
    );
}
