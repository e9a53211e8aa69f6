//! Speaking to the OpenCTI platform beyond the stream: its GraphQL API
//! ([`graphql`]), the registration on the connectors page ([`connector`]),
//! and reading a connector's state (`state import`).

pub(crate) mod connector;
pub(crate) mod graphql;
pub(crate) mod migrate;
