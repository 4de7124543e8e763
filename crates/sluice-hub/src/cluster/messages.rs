//! The messages replicas send each other on their Redis channels, and
//! what an instruction's sender reads of an agent's presence.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// A message on a replica's channel (`on_message`), read in place.
#[derive(Deserialize)]
pub(super) struct Message<'a> {
    #[serde(borrow)]
    pub(super) op: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) agent_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) origin: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) session_key: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) status: Cow<'a, str>,
    /// Passed on to the agent as it came (no tree built for it).
    #[serde(default, borrow)]
    pub(super) payload: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) result: Option<Value>,
}

/// What the sender of an instruction reads of its agent's presence (the
/// rest of it, tools and all, is skipped, not built).
#[derive(Deserialize)]
pub(super) struct Whereabouts<'a> {
    #[serde(default)]
    pub(super) replica: Option<String>,
    #[serde(default, borrow)]
    pub(super) groups: Vec<Cow<'a, str>>,
}

/// A status update for the replica an instruction came from.
#[derive(Serialize)]
pub(super) struct StatusMessage<'a> {
    pub(super) op: &'static str,
    pub(super) id: &'a str,
    pub(super) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) result: Option<&'a Value>,
}
