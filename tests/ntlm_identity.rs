//! A Windows-auth principal finds its user's mailbox: an EWS request authenticated with NTLM as
//! `DOMAIN\user` and no `X-AnchorMailbox` (as ews-javascript-api sends it), for users whose
//! sign-in name the directory stores as a UPN (the embedded example's `user@contoso.example`).

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use trackgate::directory::model::Lookup;
use trackgate::rules::{Decision, Reason};
use trackgate::simulate::{AuthMode, FixtureSet, SimulatorOptions, ntlm};
use uuid::Uuid;

use crate::support::{self, TestGateway};

/// The users' ids in the embedded example directory.
const ALEX: u128 = 0x0000_0000_0000_4000_8000_0000_0000_00a1;
const JO: u128 = 0x0000_0000_0000_4000_8000_0000_0000_00a2;

/// One client connection doing the NTLM handshake on EWS GetItem requests, then the request
/// itself as `domain\user`; returns the final status.
async fn get_item_as(gw: &TestGateway, domain: &str, user: &str) -> u16 {
    let body = support::fixture("ews-getitem-message")
        .request
        .expect("the fixture has a request")
        .body;
    let tcp = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = async |authorization: String| {
        let request = Request::post("/EWS/Exchange.asmx")
            .header("host", "mail.contoso.example")
            .header("content-type", "text/xml; charset=utf-8")
            .header("authorization", authorization)
            .body(Full::new(body.clone()))
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let _: Bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, challenge)
    };
    let (status, challenge) = send(ntlm::negotiate_header()).await;
    assert_eq!(status, 401, "the negotiate leg is challenged");
    let challenge = challenge
        .as_deref()
        .and_then(ntlm::challenge_from_header)
        .expect("an NTLM challenge");
    send(ntlm::authenticate_header(
        challenge,
        domain,
        user,
        &format!("{user}-pw"),
    ))
    .await
    .0
}

/// The decision taken for the observation owned by `principal`.
async fn decision_for(gw: &TestGateway, principal: &str) -> Decision {
    support::wait_for(
        Duration::from_secs(10),
        &format!("a decision for {principal}"),
        async || {
            gw.gateway
                .recent_decisions()
                .into_iter()
                .find(|d| d.mailbox.as_deref() == Some(principal))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ntlm_principal_finds_the_user_whose_sign_in_name_is_a_upn() {
    let mut options = SimulatorOptions::new("sim", FixtureSet::embedded().unwrap());
    options.auth = AuthMode::Ntlm;
    options.passwords = vec![
        ("CONTOSO\\alex.seller".into(), "alex.seller-pw".into()),
        ("CORP\\jo.support".into(), "jo.support-pw".into()),
        ("ELSEWHERE\\alex.seller".into(), "alex.seller-pw".into()),
    ];
    let sim = support::simulator_with(options).await;
    // CORP is not the first label of contoso.example: only the configured mapping finds Jo.
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[identity]\nntlm_domains = { CORP = \"contoso.example\" }\n",
    )
    .await;
    let user = |n: u128| Some(Lookup::new("systemuser", Uuid::from_u128(n)));

    // Alex's domainname is `alex.seller@contoso.example`: CONTOSO is its first label.
    assert_eq!(get_item_as(&gw, "CONTOSO", "alex.seller").await, 200);
    let d = decision_for(&gw, "contoso\\alex.seller").await;
    assert_ne!(d.reason, Reason::UnknownMailbox, "{d:?}");
    assert_eq!(d.user, user(ALEX));

    assert_eq!(get_item_as(&gw, "CORP", "jo.support").await, 200);
    let d = decision_for(&gw, "corp\\jo.support").await;
    assert_ne!(d.reason, Reason::UnknownMailbox, "{d:?}");
    assert_eq!(d.user, user(JO));

    // A domain neither rule knows finds nobody.
    assert_eq!(get_item_as(&gw, "ELSEWHERE", "alex.seller").await, 200);
    let d = decision_for(&gw, "elsewhere\\alex.seller").await;
    assert_eq!(d.reason, Reason::UnknownMailbox);
    assert_eq!(d.user, None);
    gw.gateway.shutdown().await;
}
