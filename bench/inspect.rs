//! Inspection hot paths: namespace-aware EWS parsing of GetItem, FindItem and SyncFolderItems
//! responses at 4 KiB, 64 KiB and 1 MiB; operation detection per envelope; Graph list/delta JSON;
//! and the load harness's own mix of recorded exchanges (small envelopes, where what each
//! exchange costs beyond its bytes — identity, headers, the trees' setup — shows).
//! Throughput is reported in bytes per second; allocations per parsed message are printed once
//! at start (counted by an instrumented allocator). Results: bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stats_alloc::{Region, StatsAlloc};
use trackgate::inspect::{self, InspectLimits, xml};

#[path = "mix.rs"]
mod mix;

/// The gateway's allocator (mimalloc, as `main.rs` installs it), counted: time figures are
/// what the gateway pays, and allocations are counted as before.
#[global_allocator]
static GLOBAL: StatsAlloc<mimalloc::MiMalloc> = StatsAlloc::new(mimalloc::MiMalloc);

const M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
const T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

fn message(i: usize) -> String {
    format!(
        "<t:Message><t:ItemId Id=\"AAMkADEzItem{i:08}AAA=\" ChangeKey=\"CQAAABYAAAA1\"/><t:ParentFolderId Id=\"AAMkADEzInboxFolderIdAAA=\"/><t:ItemClass>IPM.Note</t:ItemClass><t:Subject>Quote {i} for 40 seats &amp; support</t:Subject><t:DateTimeReceived>2026-11-02T08:14:03Z</t:DateTimeReceived><t:DateTimeSent>2026-11-02T09:13:58+01:00</t:DateTimeSent><t:ToRecipients><t:Mailbox><t:Name>Alex Seller</t:Name><t:EmailAddress>alex.seller@contoso.example</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType></t:Mailbox></t:ToRecipients><t:From><t:Mailbox><t:Name>Pat Buyer</t:Name><t:EmailAddress>pat.buyer@fabrikam.example</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType></t:Mailbox></t:From><t:InternetMessageId>&lt;CAF{i}.5678@mail.fabrikam.example&gt;</t:InternetMessageId><t:ConversationId Id=\"AAQkADEzConversationOne=\"/></t:Message>"
    )
}

/// An EWS response of about `size` bytes for `operation`, and its message count.
fn response(operation: &str, size: usize) -> (Bytes, usize) {
    let mut items = String::new();
    let mut n = 0;
    while items.len() + 900 < size || n == 0 {
        items.push_str(&message(n));
        n += 1;
    }
    let inner = match operation {
        "GetItem" => format!("<m:Items>{items}</m:Items>"),
        "FindItem" => format!(
            "<m:RootFolder TotalItemsInView=\"{n}\"><t:Items>{items}</t:Items></m:RootFolder>"
        ),
        _ => format!(
            "<m:SyncState>H4sIAAAA</m:SyncState><m:Changes><t:Create>{items}</t:Create></m:Changes>"
        ),
    };
    let body = format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><m:{operation}Response xmlns:m=\"{M}\" xmlns:t=\"{T}\"><m:ResponseMessages><m:{operation}ResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{operation}ResponseMessage></m:ResponseMessages></m:{operation}Response></s:Body></s:Envelope>"
    );
    (Bytes::from(body), n)
}

fn capture_for(operation: &str, body: Bytes) -> trackgate::proxy::capture::Capture {
    let request = format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><m:{operation} xmlns:m=\"{M}\" xmlns:t=\"{T}\"><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderIds><m:SyncFolderId><t:DistinguishedFolderId Id=\"inbox\"/></m:SyncFolderId></m:{operation}></s:Body></s:Envelope>"
    );
    inspect::capture_from_parts(
        "POST",
        "/EWS/Exchange.asmx",
        &[(
            "x-anchormailbox".into(),
            "alex.seller@contoso.example".into(),
        )],
        Bytes::from(request),
        200,
        &[],
        body,
    )
}

fn graph_list(size: usize) -> (Bytes, usize) {
    let mut values = Vec::new();
    let mut len = 0;
    while len < size || values.is_empty() {
        let v = format!(
            r#"{{"@odata.etag":"W/\"CQAAABYAAAA1\"","id":"AAMkADEzItem{n:08}AAA=","receivedDateTime":"2026-11-02T08:14:03Z","sentDateTime":"2026-11-02T08:13:58Z","internetMessageId":"<CAF{n}.5678@mail.fabrikam.example>","subject":"Quote {n} for 40 seats","conversationId":"AAQkADEzConversationOne=","isDraft":false,"categories":[],"parentFolderId":"AAMkADEzInboxFolderIdAAA=","bodyPreview":"Hello, please find attached the quote we discussed on Tuesday.","from":{{"emailAddress":{{"name":"Pat Buyer","address":"pat.buyer@fabrikam.example"}}}},"toRecipients":[{{"emailAddress":{{"name":"Alex Seller","address":"alex.seller@contoso.example"}}}}]}}"#,
            n = values.len()
        );
        len += v.len() + 1;
        values.push(v);
    }
    let n = values.len();
    (
        Bytes::from(format!(
            r#"{{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#users('alex')/mailFolders('inbox')/messages","value":[{}],"@odata.deltaLink":"https://graph.microsoft.com/v1.0/me/mailFolders('inbox')/messages/delta?$deltatoken=abc"}}"#,
            values.join(",")
        )),
        n,
    )
}

fn allocations_per_message() {
    for operation in ["GetItem", "FindItem", "SyncFolderItems"] {
        let (body, n) = response(operation, 64 << 10);
        let capture = capture_for(operation, body);
        let region = Region::new(&GLOBAL);
        let found = inspect::inspect(&capture, InspectLimits::default()).unwrap();
        let stats = region.change();
        assert_eq!(found.observations.len(), n);
        eprintln!(
            "allocations per message, EWS {operation} 64 KiB: {:.1} ({} messages)",
            stats.allocations as f64 / n as f64,
            n
        );
    }
    let (body, n) = graph_list(64 << 10);
    let capture = inspect::capture_from_parts(
        "GET",
        "/v1.0/me/mailFolders/inbox/messages/delta",
        &[],
        Bytes::new(),
        200,
        &[],
        body,
    );
    let region = Region::new(&GLOBAL);
    let found = inspect::inspect(&capture, InspectLimits::default()).unwrap();
    let stats = region.change();
    assert_eq!(found.observations.len(), n);
    eprintln!(
        "allocations per message, Graph delta 64 KiB: {:.1} ({n} messages)",
        stats.allocations as f64 / n as f64
    );
}

fn ews(c: &mut Criterion) {
    allocations_per_message();
    let mut group = c.benchmark_group("ews_inspect");
    for operation in ["GetItem", "FindItem", "SyncFolderItems"] {
        for (label, size) in [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
            let (body, n) = response(operation, size);
            group.throughput(Throughput::Bytes(body.len() as u64));
            let capture = capture_for(operation, body);
            group.bench_with_input(
                BenchmarkId::new(operation, label),
                &capture,
                |b, capture| {
                    b.iter(|| {
                        let found = inspect::inspect(capture, InspectLimits::default()).unwrap();
                        assert_eq!(found.observations.len(), n);
                    })
                },
            );
        }
    }
    group.finish();

    // The floor: quick-xml's namespace-resolving pull parser alone over the same document.
    let mut group = c.benchmark_group("ews_baseline");
    let (body, _) = response("GetItem", 64 << 10);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("nsreader_events_64KiB", |b| {
        b.iter(|| {
            let mut reader = quick_xml::reader::NsReader::from_reader(&body[..]);
            let mut n = 0usize;
            loop {
                match reader.read_resolved_event() {
                    Ok((_, quick_xml::events::Event::Eof)) => break,
                    Ok(_) => n += 1,
                    Err(_) => break,
                }
            }
            n
        })
    });
    // The tree the inspection used before (quick-xml), and the scanner that replaced it.
    group.bench_function("reference_tree_64KiB", |b| {
        b.iter(|| {
            xml::reference::Tree::parse(&body, xml::XmlLimits::default())
                .unwrap()
                .root()
                .name()
                .len()
        })
    });
    group.bench_function("scanner_tree_64KiB", |b| {
        b.iter(|| {
            xml::Tree::parse(&body, xml::XmlLimits::default())
                .unwrap()
                .root()
                .name()
                .len()
        })
    });
    group.finish();

    // An operation nothing is read from (a 1 MiB attachment fetched by GetAttachment): what
    // its exchange costs inspection. Before the operation was checked first, the whole
    // response was parsed to yield nothing.
    let mut group = c.benchmark_group("ews_unread");
    let attachment = format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><m:GetAttachmentResponse xmlns:m=\"{M}\" xmlns:t=\"{T}\"><m:ResponseMessages><m:GetAttachmentResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode><m:Attachments><t:FileAttachment><t:AttachmentId Id=\"AAMkAttachment=\"/><t:Name>quote.pdf</t:Name><t:ContentType>application/pdf</t:ContentType><t:Content>{}</t:Content></t:FileAttachment></m:Attachments></m:GetAttachmentResponseMessage></m:ResponseMessages></m:GetAttachmentResponse></s:Body></s:Envelope>",
        "JVBERi0xLjcKJcfsj6IK".repeat((1 << 20) / 20)
    );
    group.throughput(Throughput::Bytes(attachment.len() as u64));
    let capture = capture_for("GetAttachment", Bytes::from(attachment));
    group.bench_function("GetAttachment_1MiB", |b| {
        b.iter(|| {
            let found = inspect::inspect(&capture, InspectLimits::default()).unwrap();
            assert!(found.observations.is_empty());
        })
    });
    group.finish();

    let mut group = c.benchmark_group("ews_operation");
    let (body, _) = response("GetItem", 4 << 10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("reference_detect_4KiB_envelope", |b| {
        b.iter(|| xml::reference::reference_operation(&body).unwrap())
    });
    group.bench_function("detect_4KiB_envelope", |b| {
        b.iter(|| xml::operation(&body).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("graph_inspect");
    for (label, size) in [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let (body, n) = graph_list(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        let capture = inspect::capture_from_parts(
            "GET",
            "/v1.0/me/mailFolders/inbox/messages/delta",
            &[],
            Bytes::new(),
            200,
            &[],
            body,
        );
        group.bench_with_input(BenchmarkId::new("delta", label), &capture, |b, capture| {
            b.iter(|| {
                let found = inspect::inspect(capture, InspectLimits::default()).unwrap();
                assert_eq!(found.observations.len(), n);
            })
        });
    }
    group.finish();
}

/// The exchanges `bench/load.rs` replays (its `MIX`), as the proxy hands them over: one
/// iteration inspects all ten, so the figure is exchanges per second over the mix.
fn harness_mix(c: &mut Criterion) {
    let fixtures = trackgate::simulate::FixtureSet::embedded().unwrap();
    let captures: Vec<_> = mix::MIX
        .iter()
        .map(|name| {
            let fixture = fixtures.iter().find(|f| f.name == *name).unwrap();
            fixture.to_capture(&[])
        })
        .collect();
    let mut group = c.benchmark_group("harness_mix");
    group.throughput(Throughput::Elements(captures.len() as u64));
    group.bench_function("ten_exchanges", |b| {
        b.iter(|| {
            captures
                .iter()
                .map(|capture| {
                    inspect::inspect(capture, InspectLimits::default())
                        .unwrap()
                        .observations
                        .len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = ews, harness_mix
}
criterion_main!(benches);
