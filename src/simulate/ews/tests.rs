use super::*;

const ENVELOPE_START: &str = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header><t:RequestServerVersion Version="Exchange2013_SP1"/></s:Header><s:Body>"#;

fn request(body: &str) -> String {
    format!("{ENVELOPE_START}{body}</s:Body></s:Envelope>")
}

fn serve_as_alex(store: &Store, body: &str) -> Answer {
    let caller = Caller {
        logon: Some("CONTOSO\\alex.seller".into()),
        anchor: None,
    };
    serve(store, request(body).as_bytes(), &caller)
}

/// The id of the newest message in Alex's Inbox.
fn first_in_alex_inbox(store: &Store) -> String {
    let inner = store.lock();
    let m = inner.mailbox_index("alex.seller@contoso.example").unwrap();
    let mb = inner.mailbox(m);
    mb.items_in(mb.distinguished("inbox").unwrap().key)[0]
        .id
        .clone()
}

#[test]
fn unknown_operations_and_bad_envelopes_get_exchanges_faults() {
    let store = Store::embedded().unwrap();
    let answer = serve_as_alex(&store, "<m:FrobnicateItem/>");
    assert_eq!(answer.status, 500);
    assert!(answer.body.contains("ErrorInvalidRequest"));
    assert!(answer.body.contains("FrobnicateItem"));
    let answer = serve(&store, b"<s:Envelope", &Caller::default());
    assert_eq!(answer.status, 500);
    assert!(answer.body.contains("s:Client"));
    let bad_version = request("<m:GetFolder/>").replace("Exchange2013_SP1", "Exchange1999");
    let answer = serve(&store, bad_version.as_bytes(), &Caller::default());
    assert!(answer.body.contains("ErrorInvalidServerVersion"));
}

#[test]
fn the_answer_names_the_requested_version_and_keeps_per_item_errors_in_order() {
    let store = Store::embedded().unwrap();
    let known = first_in_alex_inbox(&store);
    let answer = serve_as_alex(
        &store,
        &format!(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="message:InternetMessageId"/></t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id="DUMMY"/><t:ItemId Id="{known}"/><t:ItemId Id="AAAAAFRHAgAAAAAAAAD/////"/></m:ItemIds></m:GetItem>"#
        ),
    );
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains(r#"Version="Exchange2013_SP1""#));
    let codes: Vec<&str> = answer
        .body
        .split("<m:ResponseCode>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["ErrorInvalidIdMalformed", "NoError", "ErrorItemNotFound"]
    );
    assert!(answer.body.contains("<t:InternetMessageId>&lt;"));
}

#[test]
fn save_only_returns_an_id_and_send_only_returns_none() {
    let store = Store::embedded().unwrap();
    let item = r#"<t:Message><t:Subject>Hi</t:Subject><t:ToRecipients><t:Mailbox><t:EmailAddress>jo.support@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message>"#;
    let saved = serve_as_alex(
        &store,
        &format!(
            r#"<m:CreateItem MessageDisposition="SaveOnly"><m:Items>{item}</m:Items></m:CreateItem>"#
        ),
    );
    assert!(saved.body.contains("<t:ItemId Id="));
    let sent = serve_as_alex(
        &store,
        &format!(
            r#"<m:CreateItem MessageDisposition="SendOnly"><m:Items>{item}</m:Items></m:CreateItem>"#
        ),
    );
    assert!(sent.body.contains("<m:Items/>"), "{}", sent.body);
    let missing = serve_as_alex(
        &store,
        &format!("<m:CreateItem><m:Items>{item}</m:Items></m:CreateItem>"),
    );
    assert!(missing.body.contains("ErrorMessageDispositionRequired"));
    let inner = store.lock();
    let jo = inner.mailbox(inner.mailbox_index("jo.support@contoso.example").unwrap());
    let inbox = jo.distinguished("inbox").unwrap().key;
    assert!(jo.items_in(inbox).iter().any(|i| i.subject == "Hi"));
}

#[test]
fn find_item_pages_restricts_and_sorts() {
    let store = Store::embedded().unwrap();
    let find = |view: &str, restriction: &str| {
        serve_as_alex(
            &store,
            &format!(
                r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/></t:AdditionalProperties></m:ItemShape>{view}{restriction}<m:SortOrder><t:FieldOrder Order="Ascending"><t:FieldURI FieldURI="item:DateTimeReceived"/></t:FieldOrder></m:SortOrder><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderIds></m:FindItem>"#
            ),
        )
        .body
    };
    let page = find(
        r#"<m:IndexedPageItemView MaxEntriesReturned="2" Offset="0" BasePoint="Beginning"/>"#,
        "",
    );
    assert!(
        page.contains(r#"TotalItemsInView="3" IncludesLastItemInRange="false""#),
        "{page}"
    );
    let first = page.find("Re: Pricing").unwrap();
    let second = page.find("Quote for 40 seats").unwrap();
    assert!(first < second, "ascending by received time");
    let only = find(
        "",
        r#"<m:Restriction><t:Contains ContainmentMode="Substring" ContainmentComparison="IgnoreCase"><t:FieldURI FieldURI="item:Subject"/><t:Constant Value="pricing"/></t:Contains></m:Restriction>"#,
    );
    assert!(
        only.contains(r#"TotalItemsInView="1""#) && only.contains("Re: Pricing"),
        "{only}"
    );
}

#[test]
fn extended_properties_and_categories_are_set_appended_and_deleted() {
    let store = Store::embedded().unwrap();
    let id = first_in_alex_inbox(&store);
    let link = r#"<t:ExtendedFieldURI PropertySetId="{00020329-0000-0000-C000-000000000046}" PropertyName="crmlinkstate" PropertyType="Double"/>"#;
    let update = |updates: &str| {
        serve_as_alex(
            &store,
            &format!(
                r#"<m:UpdateItem ConflictResolution="AutoResolve" MessageDisposition="SaveOnly"><m:ItemChanges><t:ItemChange><t:ItemId Id="{id}"/><t:Updates>{updates}</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#
            ),
        )
    };
    let set = update(&format!(
        r#"<t:SetItemField>{link}<t:Message><t:ExtendedProperty>{link}<t:Value>2</t:Value></t:ExtendedProperty></t:Message></t:SetItemField><t:SetItemField><t:FieldURI FieldURI="item:Categories"/><t:Message><t:Categories><t:String>A</t:String></t:Categories></t:Message></t:SetItemField><t:AppendToItemField><t:FieldURI FieldURI="item:Categories"/><t:Message><t:Categories><t:String>B</t:String></t:Categories></t:Message></t:AppendToItemField>"#
    ));
    assert!(
        set.body
            .contains("<m:ResponseCode>NoError</m:ResponseCode>"),
        "{}",
        set.body
    );
    // Asked for by its set id in another case, the property comes back; unasked, it does not.
    let get = |extra: &str| {
        serve_as_alex(
            &store,
            &format!(
                r#"<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape><t:AdditionalProperties>{extra}</t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#
            ),
        )
        .body
    };
    let asked = get(&link.replace("C000", "c000"));
    assert!(asked.contains("<t:Value>2</t:Value>"), "{asked}");
    assert!(
        asked.contains("<t:String>A</t:String><t:String>B</t:String>"),
        "{asked}"
    );
    assert!(!get("").contains("<t:ExtendedProperty>"));
    let deleted = update(&format!(
        r#"<t:DeleteItemField>{link}</t:DeleteItemField><t:DeleteItemField><t:FieldURI FieldURI="item:Categories"/></t:DeleteItemField>"#
    ));
    assert!(deleted.body.contains("NoError"));
    let after = get(link);
    assert!(
        !after.contains("<t:ExtendedProperty>") && !after.contains("<t:Categories>"),
        "{after}"
    );
}

#[test]
fn convert_id_round_trips_hex_entry_ids() {
    let store = Store::embedded().unwrap();
    let id = {
        let inner = store.lock();
        let m = inner.mailbox_index("alex.seller@contoso.example").unwrap();
        inner.mailbox(m).distinguished("inbox").unwrap().id.clone()
    };
    let convert = |id: &str, from: &str, to: &str| {
        let body = serve_as_alex(
            &store,
            &format!(
                r#"<m:ConvertId DestinationFormat="{to}"><m:SourceIds><t:AlternateId Format="{from}" Id="{id}" Mailbox="alex.seller@contoso.example"/></m:SourceIds></m:ConvertId>"#
            ),
        )
        .body;
        body.split(" Id=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(str::to_owned)
            .unwrap_or(body)
    };
    let hex = convert(&id, "EwsId", "HexEntryId");
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{hex}");
    assert_eq!(convert(&hex, "HexEntryId", "EwsId"), id);
    let dummy = serve_as_alex(
        &store,
        r#"<m:ConvertId DestinationFormat="EntryId"><m:SourceIds><t:AlternateId Format="EwsId" Id="DUMMY" Mailbox="DUMMY"/></m:SourceIds></m:ConvertId>"#,
    );
    assert!(dummy.body.contains("ErrorInvalidIdMalformed"));
    assert!(
        dummy.body.contains("<h:ServerVersionInfo"),
        "exchangelib reads the version from it"
    );
}
