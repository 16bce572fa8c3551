//! Store behaviour suite, written once and run against every backend.
//!
//! Each test body is an `async fn(TestDb)`; `store_tests!` instantiates it
//! as `sqlite::<name>` (always) and `postgres::<name>` (when
//! `SILO_TEST_POSTGRES_URL` is set; otherwise it reports the skip and
//! returns). Every PostgreSQL test runs in its own fresh schema, dropped
//! afterwards even when the test fails.

mod harness;

mod agents;
mod audit;
mod certs;
mod lifecycle;
mod provision;
mod users;
