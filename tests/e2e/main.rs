//! End-to-end tests: the real `hub` binary, each test on its own fresh database (SQLite, or PostgreSQL
//! when `HUB_TEST_POSTGRES_URL` is set) and a free port, spoken to over HTTP and the command line.

// A test crate: the harness's helpers live outside `#[test]` functions, and a failed expectation in
// them is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

mod affected;
mod alarms;
mod auth;
mod bad_input;
mod campaigns;
mod demo;
mod escalation;
mod health;
mod import;
mod ivr;
mod modbus;
mod model;
mod mqtt;
mod notify;
mod outages;
mod roles;
mod rules;
mod shutdown;
mod simulate;
mod slice;
mod smpp;
mod telephony;
mod telephony_sip;
mod tickets;
