//! The OpenCTI live stream: the pure SSE parser and the blocking client.

pub(crate) mod client;
pub(crate) mod reader;
pub(crate) mod sse;
