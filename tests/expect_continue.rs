use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trackgate::simulate::{AuthMode, FixtureSet, SimulatorOptions};

use crate::support;

async fn read_head(stream: &mut TcpStream) -> String {
    support::read_head(stream)
        .await
        .expect("the connection closed before a whole response head")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_upstream_answers_before_any_body_is_sent() {
    let mut options = SimulatorOptions::new("sim", FixtureSet::embedded().unwrap());
    options.auth = AuthMode::Basic {
        user: "u".into(),
        password: "p".into(),
    };
    let sim = support::simulator_with(options).await;
    // A long fallback proves the 401 is not merely a timeout race.
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[upstreams]\nexpect_continue_timeout = \"30s\"\n",
    )
    .await;
    let mut stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    stream
        .write_all(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: mail\r\nContent-Type: text/xml\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 401"), "got {head}");
    assert!(!head.contains("100 Continue"));
    assert_eq!(sim.stats().body_bytes_received, 0);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_is_relayed_only_after_the_upstream_sends_it() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        "[listener]\nplaintext = true\n[upstreams]\nexpect_continue_timeout = \"30s\"\n",
    )
    .await;
    let mut stream = TcpStream::connect(gw.gateway.proxy_addr()).await.unwrap();
    stream
        .write_all(b"POST /_sim/sink HTTP/1.1\r\nHost: mail\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 100"), "got {head}");
    stream.write_all(&[0, 1, 2, 3, 4]).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "got {head}");
    let mut body = vec![0u8; 64];
    let n = stream.read(&mut body).await.unwrap();
    let body = String::from_utf8_lossy(&body[..n]);
    assert!(
        body.contains(r#""bytes":5"#) && body.contains(r#""pattern_ok":true"#),
        "{body}"
    );
    gw.gateway.shutdown().await;
}
