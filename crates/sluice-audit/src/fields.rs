//! A request's recorded fields as they go into its event: each path and
//! its JSON as recorded (encrypted or redacted), written out verbatim —
//! no `Value` tree built per field and walked again by the serializer.

use std::sync::Arc;

use serde::ser::{Error, Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

/// Each recorded path and its JSON text. The text is valid JSON by
/// construction (a slice the parser read, or written by the gateway), so
/// it is kept as text: the event line takes it as it is.
#[derive(Debug, Default)]
pub struct Fields(Vec<(Arc<str>, Box<str>)>);

impl Fields {
    pub(crate) fn push(&mut self, path: Arc<str>, json: Box<str>) {
        self.0.push((path, json));
    }

    /// The recorded JSON text of `path`, when the request had it.
    pub fn get(&self, path: &str) -> Option<&str> {
        self.0.iter().find(|(p, _)| &**p == path).map(|(_, v)| &**v)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(p, _)| &**p)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(p, v)| (&**p, &**v))
    }
}

/// As a JSON object (what the event line holds; see `line.rs`).
impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (path, json) in &self.0 {
            let raw: &RawValue = serde_json::from_str(json).map_err(S::Error::custom)?;
            m.serialize_entry(&**path, raw)?;
        }
        m.end()
    }
}
