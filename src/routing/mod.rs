//! Routing: decides which configured endpoint (if any) a request path belongs to.
//!
//! Owns path matching only ([`allowlist`]); it does not read heads (see `crate::http`) or decide
//! what happens to an unmatched request (the proxy answers 404).

pub mod allowlist;
pub mod endpoints;

pub use allowlist::Allowlist;
pub use endpoints::{CoreRoutes, Endpoint, Routes};
