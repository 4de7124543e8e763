//! Test bodies for the quick walks that are held to serde_json: a JSON
//! object of generated members, whole, cut short, or with one byte changed
//! to one that breaks JSON or UTF-8.

use proptest::prelude::*;
use proptest::sample::Index;

/// How a body is spoiled (or not).
#[derive(Debug, Clone)]
pub(crate) struct Spoil {
    /// 0: whole; 1: cut at `cut`; 2: the byte at `change` made `byte`.
    pub how: u8,
    cut: Index,
    change: Index,
    byte: u8,
}

pub(crate) fn spoil() -> impl Strategy<Value = Spoil> {
    let byte = prop_oneof![
        Just(b'"'),
        Just(b','),
        Just(b'}'),
        Just(b']'),
        Just(b'\\'),
        Just(b'x'),
        Just(0xC3),
        Just(0xA9),
        Just(0xFF),
        Just(0x1F)
    ];
    (0u8..3, any::<Index>(), any::<Index>(), byte).prop_map(|(how, cut, change, byte)| Spoil {
        how,
        cut,
        change,
        byte,
    })
}

/// The object `{m1,m2,…}` of `members`, spoiled as `s` says.
pub(crate) fn object(members: &[String], s: &Spoil) -> Vec<u8> {
    let mut body = format!("{{{}}}", members.join(",")).into_bytes();
    match s.how {
        0 => {}
        1 => body.truncate(s.cut.index(body.len() + 1)),
        _ => {
            let at = s.change.index(body.len());
            body[at] = s.byte;
        }
    }
    body
}
