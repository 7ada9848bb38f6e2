//! The leaf every module may use and that uses no other module of the crate: value types of the
//! configuration (secrets, sizes), text and time helpers the stages share (percent-encoding,
//! Message-ID and timestamp normal forms), bounded reads of service answers, and where
//! background work runs. Nothing here knows a stage.

pub mod bytes;
pub mod duration;
pub mod memory;
pub mod read;
pub mod recent;
pub mod secret;
pub mod shared;
pub mod size;
pub mod text;
pub mod threads;
pub mod time;
pub mod url;

pub use secret::{ClientCredentials, Secret};
pub use size::ByteSize;
pub use threads::{BehindTraffic, off_the_workers, run_behind_traffic};
