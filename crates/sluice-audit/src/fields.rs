//! A request's recorded fields as they go into its event: each path and
//! its JSON as recorded (encrypted or redacted), written out verbatim —
//! no `Value` tree built per field and walked again by the serializer.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

#[derive(Debug, Default)]
pub struct Fields(Vec<(String, Box<RawValue>)>);

impl Fields {
    pub(crate) fn push(&mut self, path: String, json: Box<RawValue>) {
        self.0.push((path, json));
    }

    /// The recorded JSON of `path`, when the request had it.
    pub fn get(&self, path: &str) -> Option<&RawValue> {
        self.0.iter().find(|(p, _)| p == path).map(|(_, v)| &**v)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(p, _)| p.as_str())
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (path, json) in &self.0 {
            m.serialize_entry(path, json)?;
        }
        m.end()
    }
}
