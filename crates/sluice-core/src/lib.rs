//! Sluice core: the ideas every other crate shares and none of them owns —
//! configuration (raw schema → validated snapshot), the routing table, the
//! error taxonomy, and the few request fields the gateway acts on.

pub mod auth;
pub mod cgroup;
pub mod config;
pub mod error;
pub mod json;
pub mod json_quick;
pub mod limits;
pub mod media;
pub mod pii;
pub mod probes;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod request;
pub mod resilience;
pub mod route;
pub mod scrub;
pub mod secret;

pub use error::{ErrorKind, GatewayError};
pub use secret::Secret;
