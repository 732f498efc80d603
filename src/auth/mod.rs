//! Who may call: client IP resolution and allowlists (`ip.rs`), bearer tokens (`jwt.rs`) and
//! their keys (`jwks.rs`). Called from `request_filter`
//! once the route is known, before anything reaches an upstream.

pub mod ip;
pub mod issuer;
pub mod jwks;
pub mod jwt;
