use std::process::Command;

fn trackgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args(args)
        .env_remove("TRACKGATE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(body: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, body).unwrap();
    trackgate(&["check", "--config", path.to_str().unwrap()])
}

#[test]
fn check_names_an_unknown_key() {
    let (code, _, err) = check("[limits]\nmax_conections = 5\n");
    assert_eq!(code, 1);
    assert!(err.contains("max_conections"), "{err}");
    assert!(err.contains("fix:"), "{err}");
}

#[test]
fn check_says_when_emails_would_land_without_a_description() {
    let crm = "[crm]\nsink = \"webhook\"\n[crm.webhook]\nurl = \"https://crm.example.com/hook\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    let (code, _, err) = check(crm);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: delivery.body") && err.contains("[exchange]"),
        "{err}"
    );
    let (code, _, err) = check(&format!("{crm}[delivery]\nbody = \"none\"\n"));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("note:"), "said so: no note: {err}");
}

#[test]
fn check_names_a_bad_value_and_the_fix() {
    let (code, _, err) = check("[upstreams]\news = \"exchange.example.com\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("upstreams.ews"), "{err}");
    assert!(err.contains("https://"), "{err}");

    let (code, _, err) = check("[listener]\naddress = \"localhost\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("listener.address"), "{err}");

    let (code, _, err) = check("[limits]\nheader_read_timeout = \"soon\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("header_read_timeout"), "{err}");

    let (code, _, err) =
        check("[listener]\ntls_cert = \"missing.pem\"\ntls_key = \"missing.key\"\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("listener.tls_cert") && err.contains("missing.pem"),
        "{err}"
    );
}

#[test]
fn check_prints_the_resolved_config_with_secrets_redacted() {
    let (code, out, _) = check(
        "[upstreams]\news = \"https://exchange.example.com\"\n[admin]\ntoken = \"s3cret-s3cret-s3cret-s3cret\"\n",
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("ews = \"https://exchange.example.com\""),
        "{out}"
    );
    assert!(
        out.contains("max_connections = 10000"),
        "defaults are shown: {out}"
    );
    assert!(
        out.contains("<redacted>") && !out.contains("s3cret"),
        "{out}"
    );
}

#[test]
fn check_validates_the_directory_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let directory = dir.path().join("directory.toml");
    let example = trackgate::directory::file::EMBEDDED_EXAMPLE;
    std::fs::write(&directory, example).unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(&config, "[directory]\nfile = \"directory.toml\"\n").unwrap();
    let (code, _, err) = trackgate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("directory: 4 users, 1 queue, 4 mailboxes, 1 folder rule,"),
        "{err}"
    );
    std::fs::write(
        &directory,
        example.replace(
            "maxfolderbasedtrackingmappings = 25",
            "maxfolderbasedtrackingmappings = 40",
        ),
    )
    .unwrap();
    let (code, out, err) = trackgate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("organization.maxfolderbasedtrackingmappings"),
        "{err}"
    );
    assert!(err.contains("fix:"), "{err}");
    // The configuration itself is valid: it is still printed, resolved, before the problem.
    assert!(out.contains("[directory]"), "{out}");
    assert!(!err.contains("is valid"), "{err}");
}

#[test]
fn commands_that_read_the_outbox_judge_the_configuration_as_a_start_would() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.toml");
    // Valid as a file, but the synchronized-fields table it names is not one.
    std::fs::write(dir.path().join("fields.toml"), "email = 3\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\n[crm]\nfields = \"fields.toml\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    for command in [&["check"][..], &["outbox", "stats"]] {
        let mut args = command.to_vec();
        args.extend(["--config", config.to_str().unwrap()]);
        let (code, _, err) = trackgate(&args);
        assert_eq!(code, 1, "{command:?}: {err}");
        assert!(err.contains("crm.fields"), "{command:?}: {err}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, _) = trackgate(&["version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("trackgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = trackgate(&["serve", "--no-such-flag"]);
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_certs_are_a_ca_and_a_leaf_that_complete_a_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = trackgate(&["certs", "dev", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    trackgate::tls::install_crypto_provider();
    let certs = trackgate::tls::DevCerts::in_dir(dir.path());
    let server =
        trackgate::tls::server_config(&certs.cert, &certs.key, &[b"http/1.1".to_vec()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await;
    });
    // rustls refuses a CA certificate as the end entity, so this handshake (trusting only the
    // CA, as `localhost`) proves CA + leaf; it panics if the handshake fails.
    crate::support::tls_stream(addr, &certs.ca).await;
}

/// A config whose listeners sit on ports this test holds.
fn config_on_taken_ports(dir: &std::path::Path, proxy: &str, admin: &str) -> std::path::PathBuf {
    let config = dir.join("t.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\naddress = \"{proxy}\"\nplaintext = true\n[admin]\naddress = \"{admin}\"\n[storage]\ndata_dir = {:?}\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    config
}

#[test]
fn a_taken_port_is_one_line_that_says_how_to_move_and_leaves_no_data_behind() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let config = config_on_taken_ports(dir.path(), &taken, "127.0.0.1:0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("TRACKGATE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("serve did not give up on a taken port");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    for needle in [
        taken.as_str(),
        "listener.address",
        "TRACKGATE_LISTENER__ADDRESS",
        "--listen",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert_eq!(
        err.matches("(os error").count(),
        1,
        "the reason once: {err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "the data directory was created before the bind failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_addresses_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (held_proxy, held_admin) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let config = config_on_taken_ports(
        dir.path(),
        &held_proxy.local_addr().unwrap().to_string(),
        &held_admin.local_addr().unwrap().to_string(),
    );
    let gw = super::support::GatewayProcess::start_with(
        &config,
        &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
    );
    assert_ne!(
        super::support::addr_of(&gw.proxy),
        held_proxy.local_addr().unwrap()
    );
    let health = super::support::get_text(&format!("{}/healthz", gw.admin)).await;
    assert!(!health.is_empty());
}

#[test]
fn inspect_with_a_request_alone_says_what_it_can_and_cannot_tell() {
    let request = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/exchange/ews-getitem-message/request.xml"
    );
    let (code, out, err) = trackgate(&["inspect", "--request", request]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("GetItem") && err.contains("--response"),
        "{err}"
    );
}

#[test]
fn an_error_and_its_cause_are_each_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-fixture");
    let (code, _, err) = trackgate(&["inspect", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-fixture"), "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
}

#[test]
fn check_without_a_file_checks_the_defaults_and_the_environment() {
    let (code, out, err) = trackgate(&["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("embedded defaults"), "{err}");
    assert!(out.contains("[listener]"), "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .arg("check")
        .env_remove("TRACKGATE_CONFIG")
        .env("TRACKGATE_LIMITS__MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("environment variable TRACKGATE_LIMITS__MAX_CONNECTIONS"),
        "{err}"
    );
}
