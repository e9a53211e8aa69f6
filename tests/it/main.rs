//! The integration tests: one test binary that runs the real exporter against
//! the stream simulator and a real S3 server (SeaweedFS), all as child
//! processes on 127.0.0.1.
//!
//! Run through `scripts/test`, which installs SeaweedFS and builds the
//! simulator first. `support` is the harness; every other module is a group of
//! tests.

mod support;

mod attachments;
mod commands;
mod export;
mod faults;
mod identity;
mod opencti;
mod operate;
mod policy_metrics;
mod review;
mod smoke;
