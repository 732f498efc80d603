//! Who may call: client IP resolution and allowlists (`ip.rs`). Called from `request_filter`
//! once the route is known, before anything reaches an upstream.

pub mod ip;
pub mod jwt;
