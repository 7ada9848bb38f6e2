//! `trackgate demo`: the working morning's decisions and CRM records are the expected ones,
//! the command prints them and exits 0, and `--keep-running` leaves a gateway to poke.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support;

/// (step, mailbox, message, verdict, reason, CRM record) as the demo reports them.
const EXPECTED: [(&str, &str, &str, &str, &str, &str); 24] = [
    (
        "Outlook's first sync of the Inbox",
        "alex.seller@contoso.example",
        "Quote for 40 seats",
        "track",
        "sender_contact",
        "email 43b7be51, regarding account Fabrikam",
    ),
    (
        "Outlook's first sync of the Inbox",
        "alex.seller@contoso.example",
        "RE: Renewal [CRM:0271001]",
        "track",
        "sender_contact",
        "email 47c6673f, regarding account Fabrikam",
    ),
    (
        "Outlook's first sync of the Inbox",
        "alex.seller@contoso.example",
        "Re: Pricing",
        "ignore",
        "received_before_cutoff",
        "—",
    ),
    (
        "Outlook lists the Inbox",
        "alex.seller@contoso.example",
        "RE: Renewal [CRM:0271001]",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "Outlook lists the Inbox",
        "alex.seller@contoso.example",
        "Quote for 40 seats",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "Outlook lists the Inbox",
        "alex.seller@contoso.example",
        "Re: Pricing",
        "ignore",
        "already_decided",
        "—",
    ),
    (
        "Alex reads Pat's quote request",
        "alex.seller@contoso.example",
        "Quote for 40 seats",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "The phone lists the Inbox (Graph)",
        "alex.seller@contoso.example",
        "RE: Renewal [CRM:0271001]",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "The phone lists the Inbox (Graph)",
        "alex.seller@contoso.example",
        "Quote for 40 seats",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "The phone lists the Inbox (Graph)",
        "alex.seller@contoso.example",
        "Re: Pricing",
        "ignore",
        "already_decided",
        "—",
    ),
    (
        "The phone's first sync (Graph delta)",
        "alex.seller@contoso.example",
        "Quote for 40 seats",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "The phone's first sync (Graph delta)",
        "alex.seller@contoso.example",
        "RE: Renewal [CRM:0271001]",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "The phone's first sync (Graph delta)",
        "alex.seller@contoso.example",
        "Re: Pricing",
        "ignore",
        "already_decided",
        "—",
    ),
    (
        "The phone syncs: a reply to a CRM email",
        "alex.seller@contoso.example",
        "Contract signed",
        "track",
        "sender_contact",
        "email 7585c637",
    ),
    (
        "Alex replies from Outlook",
        "alex.seller@contoso.example",
        "(no subject)",
        "ignore",
        "not_saved_to_sent_items",
        "—",
    ),
    (
        "Alex files mail in the tracked folder",
        "alex.seller@contoso.example",
        "Quote for 40 seats",
        "track",
        "folder_rule",
        "email 43b7be51: regarding set to account Fabrikam",
    ),
    (
        "Alex sets the tracking category",
        "alex.seller@contoso.example",
        "Quote for 40 seats",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "Alex writes to Pat in German",
        "alex.seller@contoso.example",
        "Angebot für Fabrikam",
        "track",
        "recipient_contact",
        "email 47d83e5f, regarding account Fabrikam",
    ),
    (
        "Alex writes to a new prospect",
        "alex.seller@contoso.example",
        "Introduction: Contoso seats for Northwind",
        "ignore",
        "recipients_not_in_filter",
        "—",
    ),
    (
        "The sales team's shared mailbox",
        "team.sales@contoso.example",
        "Invoice question",
        "track",
        "sender_email_enabled",
        "email fc307e16",
    ),
    (
        "The sales team's shared mailbox",
        "team.sales@contoso.example",
        "Demo request",
        "track",
        "sender_email_enabled",
        "email 79dcdc13",
    ),
    (
        "Alex sends from the phone",
        "alex.seller@contoso.example",
        "Meet for lunch?",
        "ignore",
        "not_saved_to_sent_items",
        "—",
    ),
    (
        "The phone's batch of changes",
        "alex.seller@contoso.example",
        "Contract signed",
        "ignore",
        "already_tracked",
        "—",
    ),
    (
        "The phone's batch of changes",
        "kim.manager@contoso.example",
        "item AAAAAFRHAgAA…",
        "ignore",
        "not_tracked_folder",
        "—",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_morning_yields_the_expected_decisions_and_crm_records() {
    let mut steps = Vec::new();
    let (report, running) = trackgate::demo::run(false, |s| steps.push(s.to_owned()))
        .await
        .expect("the demo runs");
    assert!(running.is_none());
    // Progress: the start, every step of the morning, the wait for the CRM, the wait for
    // synchronisation.
    assert_eq!(
        steps.len(),
        trackgate::demo::MORNING.len() + 3,
        "{steps:#?}"
    );
    // Synchronisation brought Alex's appointment from the CRM into his calendar (his Outlook
    // filter "My Appointments"), Pat into his contacts with Fabrikam as company, his task.
    assert_eq!(
        report.synchronised,
        [
            "calendar: Fabrikam renewal review — 2026-12-10T14:00:00Z to 2026-12-10T15:00:00Z (an appointment from the CRM)",
            "contacts: Pat Buyer — Fabrikam",
            "tasks: Send Fabrikam the renewal proposal — due 2026-12-09T17:00:00Z",
        ]
    );
    let got: Vec<_> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.step.as_str(),
                r.mailbox.as_str(),
                r.message.as_str(),
                r.verdict.as_str(),
                r.reason.as_str(),
                r.crm.as_str(),
            )
        })
        .collect();
    assert_eq!(got, EXPECTED.to_vec());
    // Outcomes, cross-checked: the emails the rows say landed are the ones the simulator got.
    let landed: std::collections::BTreeSet<_> = report
        .rows
        .iter()
        .filter_map(|r| match r.landed {
            trackgate::demo::Landed::Email(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(landed.len(), 6);
    assert_eq!(report.new_crm_emails, landed.len());
    assert_eq!(
        report.crm_refused, 0,
        "every write passed the strict simulator: {:#?}",
        report.crm_refusals
    );
}

#[test]
fn the_demo_command_prints_the_table_and_exits_0() {
    let (stdout, stderr) = support::run_trackgate(["demo"]);
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        stderr.contains("[16/16] The phone's batch of changes"),
        "{stderr}"
    );
    assert!(stdout.lines().next().is_some_and(|l| l.is_empty()));
    assert!(
        stdout.contains("step") && stdout.contains("CRM record"),
        "{stdout}"
    );
    assert!(
        stdout.contains("email 43b7be51, regarding account Fabrikam"),
        "{stdout}"
    );
    assert!(
        stdout.contains("24 decisions: 7 tracked, 17 ignored.")
            && stdout.contains("In the CRM: 6 new emails, 1 regarding set on an email already there; 0 not tracked once fetched from Exchange, 0 dead letters, 0 not settled."),
        "{stdout}"
    );
    assert!(
        !stdout.contains("simulator holds"),
        "the rows and the CRM disagree: {stdout}"
    );
    // The README shows this table: every line it quotes is one the demo prints.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let quoted = readme
        .split("landed:\n\n```\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the README's demo table");
    for line in quoted.lines().filter(|l| *l != "…") {
        assert!(
            stdout.lines().any(|printed| printed == line),
            "the README quotes a line the demo does not print:\n{line}\n\n{stdout}"
        );
    }
}

#[test]
fn keep_running_leaves_the_gateway_up_with_urls_to_poke_until_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args(["demo", "--keep-running"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed if an assertion fails before the end.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            // Usually gone already; kill's "No such process" is not news.
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _reap = Reap(child.id());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut admin = None;
    let mut ca = None;
    let mut options = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("admin:") {
            admin = Some(url.trim().to_owned());
        }
        if let Some(url) = line.trim().strip_prefix("options page:") {
            options = url.split_whitespace().next().map(str::to_owned);
        }
        if let Some(path) = line.trim().strip_prefix("development CA:") {
            ca = Some(path.trim().to_owned());
        }
        if line.contains("curl '") && line.contains("contacts") {
            break;
        }
    }
    let admin = admin.expect("the admin URL is printed");
    let ca = ca.expect("the CA path is printed");
    assert!(std::path::Path::new(&ca).exists());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let decisions = runtime.block_on(support::get_text(&format!("{admin}/decisions")));
    assert!(decisions.contains("folder_rule"), "{decisions}");
    // The options page, with the development sign-in the demo prints.
    let options = options.expect("the options page's URL is printed");
    assert_eq!(options, format!("{admin}/options"));
    let signin = runtime.block_on(support::get_text(&format!("{options}/signin")));
    assert!(signin.contains("alex.seller@contoso.example"), "{signin}");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(
        !std::path::Path::new(&ca).exists(),
        "the demo's data is removed"
    );
}
