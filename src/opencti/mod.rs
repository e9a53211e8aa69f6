//! Speaking to the OpenCTI platform beyond the stream: its GraphQL API
//! ([`graphql`]), the registration on the connectors page ([`connector`]),
//! and reading a connector's state (`state import`).

pub mod connector;
pub mod graphql;
pub mod migrate;
