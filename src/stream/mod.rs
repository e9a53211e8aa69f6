//! The OpenCTI live stream: the pure SSE parser and the blocking client.

pub mod client;
pub mod sse;
