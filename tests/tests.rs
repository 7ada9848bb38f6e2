//! The integration suite: one binary, one module per behaviour, all over real sockets on
//! loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

/// Admin endpoints and metrics.
mod admin;
/// The imports follow the flow: no stage reaches a later one, configuration is a leaf.
mod architecture;
/// Autodiscover answers and redirects rewritten to the gateway's URL.
mod autodiscover;
/// The catch-up sweep: mail no client saw, server-side filing, restarts and expired states.
mod catchup;
/// The command line: check, certs, version.
mod cli;
/// The Dataverse simulator is as strict as Dataverse; the gateway's writes pass it.
mod dataverse_strict;
/// Outbox and delivery end to end: crashes, outages, throttling, poison, auto-create, sinks.
mod delivery;
/// Delivery under real conditions: outages of every kind end fast, throttling costs little,
/// a crash mid-delivery resumes at the step it reached.
mod delivery_conditions;
/// `trackgate demo`: the working morning, the table, `--keep-running`.
mod demo;
/// The Dataverse directory source: paged loads, deltas, outages, the replica, duplicates.
mod directory_source;
/// `Expect: 100-continue` is answered by the upstream, never the gateway.
mod expect_continue;
/// The fleet outbox on real nats-server processes: exactly once through kills, NATS away,
/// start-up errors.
mod fleet;
/// The fuzz corpora, replayed.
mod fuzz_corpora;
/// Idle keep-alive connections park without HTTP state; plaintext HTTP/2 by prior knowledge.
mod idle_connections;
/// Inspection: every fixture's expected observations, damaged input, traffic end to end.
mod inspect_fixtures;
/// A GiB each way through the gateway process, with flat memory.
mod large_bodies;
/// Windows-auth principals (`DOMAIN\user`) find the user whose sign-in name is a UPN.
mod ntlm_identity;
/// NTLM/Negotiate: one pinned upstream connection per client connection.
mod ntlm_pinning;
/// The Personal Options page: sign-in, preview, save, CSRF and who may see what, in a browser.
mod options_page;
/// h1 and h2 through TLS, bodies byte-identical both ways, header rules, routing.
mod passthrough;
/// Real client libraries (exchangelib, msgraph-sdk) through the gateway against the stateful
/// simulator.
mod real_clients;
/// The rules, behaviour by behaviour (docs/domain.md), with property tests.
mod rules;
/// The rules in the running gateway: decisions, explain, directory reloads, replay.
mod rules_pipeline;
/// The gateway's own HTTP/1.1 loop: answers framed as hyper framed them, hand-offs in order,
/// a client's hang-up cancelling its exchange.
mod server_loop;
/// SIGHUP reload and SIGTERM drain on the real binary.
mod signals;
/// The Exchange simulator's own behaviours: fixtures, faults, auth, TLS.
mod simulator;
/// Request smuggling attempts and malformed framing get 400 and a closed connection.
mod smuggling;
/// CRM ⇄ Exchange synchronisation with both simulators: filters, both directions, deletes,
/// restarts, CRM mail sent exactly once across a kill -9.
mod sync;
/// Header, body, upstream and streaming timeouts; upstream down.
mod timeouts;
