//! End-to-end tests: the real `hub` binary, each test on its own fresh database (SQLite, or PostgreSQL
//! when `HUB_TEST_POSTGRES_URL` is set) and a free port, spoken to over HTTP and the command line.

mod harness;

mod affected;
mod auth;
mod bad_input;
mod demo;
mod health;
mod import;
mod model;
mod outages;
mod roles;
mod shutdown;
