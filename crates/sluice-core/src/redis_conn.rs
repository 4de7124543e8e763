//! The Redis connection a feature keeps (multiplexed, reconnecting in the
//! background); with the `redis` feature.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;

/// A lazily connected manager: building it never waits for Redis, so a
/// Redis that is down at start-up does not stop the gateway; commands fail
/// within the configured timeout until it is back.
pub fn connect(cfg: &RedisConfig) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(cfg.url.expose())
        .map_err(|e| format!("[redis] url is not usable: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.timeout))
        .set_response_timeout(Some(cfg.timeout))
        .set_number_of_retries(1)
        .set_max_delay(cfg.timeout);
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| format!("[redis]: {e}"))
}
