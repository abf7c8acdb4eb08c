//! The pure core of Hub: the `Event` that flows on the bus, the `Action`s rules ask for, and the
//! sandboxed Rhai engine (`RuleSet`) that turns events into actions. No sockets, no database: both
//! `connectors` and `hub` depend on this crate.

pub mod action;
pub mod engine;
pub mod error;
pub mod event;
pub mod network;
pub mod testing;
pub mod world;

pub use action::{Action, IvrMode, Severity, SiteRef};
pub use engine::{
    Evaluation, Input, Limits, RuleInfo, RuleMetrics, RuleRun, RuleSet, RunError, TraceEntry,
    dry_run,
};
pub use error::{Diagnostic, Level, RuleError};
pub use event::{AlarmInfo, CallInfo, Event, EventKind, OutageInfo, TicketInfo};
pub use world::{AffectedView, SensorView, StaticWorld, World};
