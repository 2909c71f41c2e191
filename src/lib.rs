//! Sluice: an asynchronous event relay.
//!
//! ```text
//! producer ─▶ source ─▶ queue (per sink) ─▶ sink ─▶ destination
//! ```
//!
//! The folders follow the data: [`sources`] decode what producers send into [`event::Event`]s,
//! [`queue`] bounds what waits for each sink, [`sinks`] deliver (sharing one delivery
//! [`sinks::driver`]), and [`admin`] shows the [`ledger`] that accounts for every event.
//! [`config`] and [`topology`] describe a relay; [`relay`] runs one.

pub mod admin;
pub mod config;
pub mod event;
pub mod http_server;
pub mod ledger;
pub mod log_throttle;
pub mod queue;
pub mod relay;
pub mod sinks;
pub mod sources;
pub mod topology;
