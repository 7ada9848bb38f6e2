//! trackgate: an Outlook/Exchange protocol gateway. It sits between mail clients and Exchange as
//! a streaming reverse proxy and (in later stages) decides which messages belong in Dynamics 365.
//!
//! The flow, one way: `proxy → inspect → rules → outbox → crm`. Each module owns one stage;
//! `app` alone wires them together. `simulate` holds the stand-ins for the services that cannot
//! run here (Exchange and Dataverse).

pub mod admin;
pub mod app;
pub mod catchup;
pub mod common;
pub mod config;
pub mod crm;
pub mod delivery;
pub mod demo;
pub mod directory;
pub mod exchange;
pub mod fleet;
pub mod inspect;
pub mod oauth;
pub mod ops;
pub mod options;
pub mod outbox;
pub mod pipeline;
pub mod proxy;
pub mod replay;
pub mod rules;
pub mod simulate;
pub mod sync;
pub mod telemetry;
pub mod tls;
