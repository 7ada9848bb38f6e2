//! Simulators for the services trackgate talks to but cannot run here. They speak the real wire
//! protocol over real sockets and serve the embedded default, the tests and the benchmarks.

pub mod auth;
pub mod dataverse;
pub mod ews;
pub mod exchange;
pub mod fixtures;
pub mod graph;
pub mod mailbox;
pub mod ntlm;
pub mod soap;
pub mod standalone;

pub use dataverse::{DataverseFaults, DataverseOptions, DataverseSimulator};
pub use exchange::{
    AuthMode, ExchangeSimulator, Faults, PatternBody, PatternChecker, SimStats, SimulatorOptions,
};
pub use fixtures::FixtureSet;
