//! A request's recorded fields as they go into its event: each path and
//! its JSON as recorded (encrypted or redacted), written out verbatim —
//! no `Value` tree built per field and walked again by the serializer.

use std::ops::Range;
use std::sync::Arc;

use serde::ser::{Error, Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use smallvec::SmallVec;

/// Room for the recorded JSON of a request's fields as first made: an
/// encrypted 24-byte field is ~130 bytes of text.
const TEXT_CAPACITY: usize = 256;

/// Each recorded path and its JSON text. The text is valid JSON by
/// construction (a slice the parser read, or written by the gateway), so
/// it is kept as text: the event line takes it as it is. Every field's
/// text shares one buffer and the paths sit inline (a request records a
/// few): one allocation per request, where a `Vec` of boxed texts made
/// one per field, one for the list and one for each ciphertext.
#[derive(Debug, Default)]
pub struct Fields {
    text: String,
    at: SmallVec<[(Arc<str>, Range<usize>); 4]>,
}

impl Fields {
    /// Records `path` with the JSON `write` appends to the shared text.
    pub(crate) fn push_with(&mut self, path: Arc<str>, write: impl FnOnce(&mut String)) {
        if self.text.capacity() == 0 {
            self.text.reserve(TEXT_CAPACITY);
        }
        let start = self.text.len();
        write(&mut self.text);
        self.at.push((path, start..self.text.len()));
    }

    pub(crate) fn push(&mut self, path: Arc<str>, json: &str) {
        self.push_with(path, |t| t.push_str(json));
    }

    /// The recorded JSON text of `path`, when the request had it.
    pub fn get(&self, path: &str) -> Option<&str> {
        self.entries().find(|(p, _)| *p == path).map(|(_, v)| v)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.at.iter().map(|(p, _)| &**p)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.at.iter().map(|(p, r)| (&**p, &self.text[r.clone()]))
    }
}

/// As a JSON object (what the event line holds; see `line.rs`).
impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.at.len()))?;
        for (path, json) in self.entries() {
            let raw: &RawValue = serde_json::from_str(json).map_err(S::Error::custom)?;
            m.serialize_entry(path, raw)?;
        }
        m.end()
    }
}
