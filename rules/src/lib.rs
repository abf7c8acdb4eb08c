//! The pure core of Hub: the `Event` that flows on the bus and (with the rules issue) the sandboxed
//! Rhai engine that turns events into actions. No sockets, no database: both `connectors` and `hub`
//! depend on this crate.

pub mod event;

pub use event::{AlarmInfo, Event, EventKind, OutageInfo};
pub mod network;
