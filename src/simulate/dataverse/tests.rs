use super::*;

fn patch(store: &mut Store, path: &str, header: Option<(&str, &str)>, body: Value) -> u16 {
    let h = move |n: &str| {
        header
            .filter(|(name, _)| name.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.to_owned())
    };
    execute(
        store,
        "/api/data/v9.2",
        &Method::PATCH,
        path,
        "",
        &h,
        &body.to_string(),
        &HashMap::new(),
        &mut Vec::new(),
    )
    .1
    .0
}

#[test]
fn conditional_upserts_answer_like_dataverse() {
    let mut s = Store::default();
    let id = Uuid::from_u128(1);
    let path = format!("/emails({id})");
    assert_eq!(
        patch(&mut s, &path, Some(("If-Match", "*")), json!({})),
        404
    );
    assert_eq!(
        patch(
            &mut s,
            &path,
            Some(("If-None-Match", "*")),
            json!({"subject": "a"})
        ),
        204
    );
    assert_eq!(
        patch(
            &mut s,
            &path,
            Some(("If-None-Match", "*")),
            json!({"subject": "b"})
        ),
        412
    );
    assert_eq!(s.stats.already_there.get("emails"), Some(&1));
    assert_eq!(
        patch(
            &mut s,
            &path,
            Some(("If-Match", "*")),
            json!({"statecode": 1, "statuscode": 4})
        ),
        204
    );
    assert_eq!(
        patch(
            &mut s,
            &path,
            None,
            json!({"statecode": 1, "statuscode": 5})
        ),
        400
    );
    assert_eq!(s.stats.created["emails"], 1);
    assert_eq!(s.tables["emails"][&id]["subject"], "a");
}

#[test]
fn binds_must_resolve() {
    let mut s = Store::default();
    let contact = Uuid::from_u128(2);
    let body = json!({"email_activity_parties": [
        {"partyid_contact@odata.bind": format!("/contacts({contact})"), "participationtypemask": 1}]});
    assert_eq!(
        patch(
            &mut s,
            "/emails(00000000-0000-0000-0000-000000000001)",
            None,
            body.clone()
        ),
        400
    );
    insert_seed(&mut s, "contacts", contact, Map::new());
    assert_eq!(
        patch(
            &mut s,
            "/emails(00000000-0000-0000-0000-000000000001)",
            None,
            body
        ),
        204
    );
    let bad = json!({"email_activity_parties": [{"participationtypemask": 1}]});
    assert_eq!(
        patch(
            &mut s,
            "/emails(00000000-0000-0000-0000-000000000003)",
            None,
            bad
        ),
        400
    );
}

#[test]
fn change_sets_are_atomic_and_resolve_content_ids() {
    let mut s = Store::default();
    let part = |url: &str, id: &str, body: Value, cond: Option<&str>| HttpPart {
        start: format!("PATCH /api/data/v9.2{url} HTTP/1.1"),
        headers: cond
            .map(|c| vec![(c.to_owned(), "*".to_owned())])
            .unwrap_or_default(),
        body: body.to_string(),
        content_id: Some(id.to_owned()),
    };
    let ok = BatchItem::ChangeSet(vec![
        part(
            "/contacts(00000000-0000-0000-0000-000000000009)",
            "1",
            json!({"lastname": "A"}),
            None,
        ),
        part(
            "/emails(00000000-0000-0000-0000-000000000001)",
            "2",
            json!({"regardingobjectid_contact_email@odata.bind": "$1"}),
            None,
        ),
    ]);
    let failing = BatchItem::ChangeSet(vec![
        part(
            "/emails(00000000-0000-0000-0000-000000000002)",
            "1",
            json!({"subject": "x"}),
            None,
        ),
        part(
            "/emails(00000000-0000-0000-0000-000000000001)",
            "2",
            json!({}),
            Some("If-None-Match"),
        ),
    ]);
    let body = multipart::write_batch("b", &[ok, failing]);
    let (status, headers, text) = batch(
        &mut s,
        "/api/data/v9.2",
        "multipart/mixed; boundary=b",
        "odata.continue-on-error",
        &body,
    );
    assert_eq!(status, 200);
    let answers =
        multipart::read_batch(multipart::boundary(&headers[0].1).unwrap(), &text).unwrap();
    assert!(matches!(&answers[0], BatchItem::ChangeSet(p) if p.len() == 2));
    assert!(matches!(&answers[1], BatchItem::Single(p) if p.status() == Some(412)));
    assert!(s.tables["emails"].contains_key(&Uuid::from_u128(1)));
    assert!(
        !s.tables["emails"].contains_key(&Uuid::from_u128(2)),
        "rolled back"
    );
    assert_eq!(
        s.tables["emails"][&Uuid::from_u128(1)]["_regardingobjectid_contact_email_value"]["id"],
        Uuid::from_u128(9).to_string()
    );
}

#[test]
fn change_tracking_returns_changed_new_and_deleted_rows_since_a_delta_token() {
    let mut s = Store::default();
    let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    insert_seed(&mut s, "contacts", a, Map::new());
    insert_seed(&mut s, "contacts", b, Map::new());
    insert_seed(&mut s, "accounts", Uuid::from_u128(9), Map::new());
    let track = |n: &str| (n == "prefer").then(|| "odata.track-changes".to_owned());
    let (status, headers, text) = query_set(
        &s,
        "/api",
        "contacts",
        "$select=contactid,emailaddress1",
        &track,
    );
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "Preference-Applied" && v == "odata.track-changes")
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    let link = v["@odata.deltaLink"].as_str().unwrap().to_owned();
    let token_query = link.split_once('?').unwrap().1.to_owned();
    // An address moves, a contact is deleted, one is created; an account changes too.
    assert_eq!(
        patch(
            &mut s,
            &format!("/contacts({a})"),
            None,
            json!({"emailaddress1": "new@x"})
        ),
        204
    );
    let mut undo = Vec::new();
    let no_header = |_: &str| None;
    execute(
        &mut s,
        "/api",
        &Method::DELETE,
        &format!("/contacts({b})"),
        "",
        &no_header,
        "",
        &HashMap::new(),
        &mut undo,
    );
    assert_eq!(
        patch(
            &mut s,
            &format!("/contacts({c})"),
            None,
            json!({"lastname": "C"})
        ),
        204
    );
    assert_eq!(
        patch(
            &mut s,
            "/accounts(00000000-0000-0000-0000-000000000009)",
            None,
            json!({"name": "N"})
        ),
        204
    );
    let (status, _, text) = query_set(&s, "/api", "contacts", &token_query, &no_header);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    let rows = v["value"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v:#}");
    assert_eq!(rows[0]["emailaddress1"], "new@x");
    assert!(rows[0].get("lastname").is_none(), "$select kept");
    assert_eq!(rows[1]["reason"], "deleted");
    assert_eq!(rows[1]["id"], b.to_string());
    assert_eq!(rows[2]["contactid"], c.to_string());
    // Nothing changed since the new link; a token from the future or garbage is refused.
    let next = v["@odata.deltaLink"]
        .as_str()
        .unwrap()
        .split_once('?')
        .unwrap()
        .1
        .to_owned();
    let (_, _, text) = query_set(&s, "/api", "contacts", &next, &no_header);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["value"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        query_set(&s, "/api", "contacts", "$deltatoken=999999", &no_header).0,
        410
    );
    assert_eq!(
        query_set(&s, "/api", "contacts", "$deltatoken=x", &no_header).0,
        400
    );
}

#[test]
fn queries_filter_select_and_page() {
    let mut s = Store::default();
    for n in 0..5u128 {
        insert_seed(&mut s, "contacts", Uuid::from_u128(n), {
            let mut m = Map::new();
            m.insert("emailaddress1".into(), format!("c{}@x", n % 2).into());
            m
        });
    }
    let prefer = |n: &str| (n == "prefer").then(|| "odata.maxpagesize=2".to_owned());
    let (status, _, text) = query_set(
        &s,
        "/api",
        "contacts",
        "$filter=emailaddress1%20eq%20'c0@x'&$select=contactid",
        &prefer,
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    assert!(v["value"][0].get("emailaddress1").is_none());
    assert!(
        v["@odata.nextLink"]
            .as_str()
            .unwrap()
            .contains("$skiptoken=2")
    );
    assert_eq!(pk("opportunities"), "opportunityid");
    assert_eq!(
        decode_form("a%20b+c%aé%"),
        "a b c%aé%",
        "bad escapes stay as they are"
    );
    let huge = query_set(
        &s,
        "/api",
        "contacts",
        "$skiptoken=18446744073709551615",
        &|_| None,
    );
    assert_eq!(huge.0, 200);
    assert_eq!(pk("emails"), "activityid");
}
