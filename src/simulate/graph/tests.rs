use serde_json::json;

use super::*;

fn request<'a>(
    caller: &'a Caller,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> GraphRequest<'a> {
    let (segments, query) = split_target(path);
    GraphRequest {
        method,
        segments,
        query,
        body: body.map(camel_keys),
        page_size: None,
        base: "http://gateway.example/v1.0",
        caller,
    }
}

fn alex() -> Caller {
    Caller {
        logon: Some("alex.seller@contoso.example".into()),
        anchor: None,
    }
}

#[test]
fn events_contacts_and_todo_tasks_are_created_read_changed_and_deleted() {
    let store = Store::embedded().unwrap();
    let caller = alex();
    let run = |method: Method, path: &str, body: Option<Value>| {
        routes::route(&store, &request(&caller, method, path, body))
    };
    for (collection, create, change, field, changed) in [
        (
            "/me/events",
            json!({"subject": "Kick-off", "start": {"dateTime": "2026-12-11T10:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2026-12-11T11:00:00", "timeZone": "UTC"}, "attendees": [{"emailAddress": {"address": "pat.buyer@fabrikam.example"}}]}),
            json!({"Location": {"displayName": "Room 4"}}),
            "location",
            json!({"displayName": "Room 4"}),
        ),
        (
            "/me/contacts",
            json!({"givenName": "Nia", "surname": "Prospect", "emailAddresses": [{"address": "nia@tailspin.example"}]}),
            json!({"companyName": "Tailspin"}),
            "companyName",
            json!("Tailspin"),
        ),
        (
            "/me/todo/lists/tasks/tasks",
            json!({"title": "Call Nia", "dueDateTime": {"dateTime": "2026-12-12T09:00:00", "timeZone": "UTC"}}),
            json!({"status": "completed"}),
            "status",
            json!("completed"),
        ),
    ] {
        let created = run(Method::POST, collection, Some(create));
        assert_eq!(created.status, 201, "{collection}: {:?}", created.body);
        let id = created.body.unwrap()["id"].as_str().unwrap().to_owned();
        let item = format!(
            "{collection}/{}",
            crate::common::text::percent_encode(&id, b"")
        );
        let patched = run(Method::PATCH, &item, Some(change));
        assert_eq!(patched.body.unwrap()[field], changed, "{collection}");
        let listed = run(Method::GET, collection, None).body.unwrap();
        assert!(
            listed["value"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["id"] == id.as_str()),
            "{collection}: {listed}"
        );
        assert_eq!(run(Method::DELETE, &item, None).status, 204);
        assert_eq!(run(Method::GET, &item, None).status, 404, "{collection}");
    }
}

#[test]
fn a_batch_runs_in_order_and_a_failed_dependency_fails_what_depends_on_it() {
    let store = Store::embedded().unwrap();
    let caller = alex();
    let outer = request(
        &caller,
        Method::POST,
        "/$batch",
        Some(json!({"requests": [
            {"id": "1", "method": "GET", "url": "/me/messages/AAAAAFRHAgAAAAAAAAD_____"},
            {"id": "2", "method": "PATCH", "url": "https://graph.microsoft.com/v1.0/me/messages/x", "dependsOn": ["1"], "body": {"isRead": true}},
            {"id": "3", "method": "GET", "url": "me/mailFolders/inbox/messages?$top=1&$select=subject"},
            // msgraph-sdk-python's spelling of the same list.
            {"id": "4", "method": "PATCH", "url": "/me/messages/y", "depends_on": ["1"], "body": {"isRead": true}},
        ]})),
    );
    let reply = batch(&store, &outer);
    let responses = reply.body.unwrap()["responses"].clone();
    let statuses: Vec<(String, u64)> = responses
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("1".into(), 404),
            ("2".into(), 424),
            ("3".into(), 200),
            ("4".into(), 424)
        ]
    );
    let row = &responses[2]["body"]["value"][0];
    assert!(
        row.get("subject").is_some() && row.get("body").is_none(),
        "{row}"
    );
}

#[test]
fn a_delta_round_pages_then_reports_only_what_changed() {
    let store = Store::embedded().unwrap();
    let caller = alex();
    let run = |path: &str| {
        let mut r = request(&caller, Method::GET, path, None);
        r.page_size = Some(2);
        routes::route(&store, &r).body.unwrap()
    };
    let first = run("/me/mailFolders/inbox/messages/delta()");
    assert_eq!(first["value"].as_array().unwrap().len(), 2);
    let next = first["@odata.nextLink"].as_str().unwrap();
    let rest = run(next.trim_start_matches("http://gateway.example/v1.0"));
    assert_eq!(rest["value"].as_array().unwrap().len(), 1);
    let delta = rest["@odata.deltaLink"].as_str().unwrap().to_owned();
    let quiet = run(delta.trim_start_matches("http://gateway.example/v1.0"));
    assert!(quiet["value"].as_array().unwrap().is_empty(), "{quiet}");
    // Graph tracks changes per folder only.
    assert_eq!(
        run("/me/messages/delta")["error"]["code"],
        "ErrorInvalidRequest"
    );
}
