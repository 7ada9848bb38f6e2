//! The recorded exchanges the load harness replays, in order: what `bench/load.rs` sends
//! through each proxy and what `bench/inspect.rs` inspects per exchange.

pub const MIX: [&str; 10] = [
    "ews-getitem-message",
    "ews-finditem-inbox",
    "ews-syncfolderitems-initial",
    "ews-createitem-sendandsavecopy",
    "ews-moveitem-partial",
    "ews-updateitem-categories",
    "graph-list-messages",
    "graph-delta-inbox",
    "graph-sendmail",
    "graph-batch-mixed",
];
