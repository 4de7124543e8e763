//! The built-in kinds of personal data: their patterns, tags and the
//! checks a candidate must pass (Luhn, ISO 7064 mod 97, GB 11643, …).

use std::net::{Ipv4Addr, Ipv6Addr};

/// The kinds of personal data found by the built-in patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Email,
    Iban,
    ChinaId,
    Card,
    Ip,
    Phone,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Email,
        Kind::Iban,
        Kind::ChinaId,
        Kind::Card,
        Kind::Ip,
        Kind::Phone,
    ];

    /// The name used in configuration (`kinds = ["email", …]`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Iban => "iban",
            Kind::ChinaId => "china_id",
            Kind::Card => "card",
            Kind::Ip => "ip",
            Kind::Phone => "phone",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub(super) fn tag(self) -> &'static str {
        match self {
            Kind::Email => "[EMAIL]",
            Kind::Iban => "[IBAN]",
            Kind::ChinaId => "[CN_ID]",
            Kind::Card => "[CARD]",
            Kind::Ip => "[IP]",
            Kind::Phone => "[PHONE]",
        }
    }

    /// The pattern, written for leftmost-first alternation: more specific
    /// kinds come first. `(?-u:\b)` is an ASCII word boundary, so digits
    /// right next to CJK text still count as a separate number.
    pub(super) fn pattern(self) -> &'static str {
        match self {
            // Internationalised addresses too (RFC 6531): accented Latin
            // or CJK local parts, IDN domains and TLDs. A local part is one
            // script or the other, so CJK text right before a Latin address
            // is not swallowed with it. A Unicode TLD is two letters or more
            // with no upper bound: `\p{L}{2,24}` compiled the letter class
            // 24 times over, ~2 MB of automaton per copy of this pattern
            // (there were two) and a 4.8 MB peak while it compiled, for
            // every gateway with redaction on (the default); a longer TLD
            // is now taken whole instead of cut at 24 letters.
            Kind::Email => {
                r"(?:[\p{Latin}0-9._%+\-]+|[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}0-9._%+\-]+)@[\p{L}\p{M}0-9\-]+(?:\.[\p{L}\p{M}0-9\-]+)*\.(?:[A-Za-z]{2,24}|\p{L}\p{L}+)"
            }
            Kind::Iban => {
                r"(?-u:\b)[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?-u:\b)"
            }
            Kind::ChinaId => r"(?-u:\b)[1-9][0-9]{16}[0-9Xx](?-u:\b)",
            Kind::Card => {
                r"(?-u:\b)(?:[0-9]{13,19}|[0-9]{4}(?:[ .\-][0-9]{4}){2,3}(?:[ .\-][0-9]{1,3})?|[0-9]{4}[ \-][0-9]{6}[ \-][0-9]{4,5})(?-u:\b)"
            }
            Kind::Ip => {
                r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{1,4}(?-u:\b)"
            }
            Kind::Phone => {
                r"\+[0-9][0-9 ().\-]{5,20}[0-9]|(?:\([0-9]{3}\) ?|(?-u:\b)[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}(?-u:\b)|(?-u:\b)1[3-9][0-9](?:[ \-]?[0-9]{4}){2}(?-u:\b)"
            }
        }
    }

    /// The length of the longest verified prefix of a candidate: the whole
    /// of it, or — for numbers written in groups — the candidate without
    /// its last groups (`4111 1111 1111 1111 9`: the card, then a 9).
    pub(super) fn verified_len(self, s: &str) -> Option<usize> {
        let mut end = s.len();
        loop {
            if self.check(&s[..end]) {
                return Some(end);
            }
            if !matches!(self, Kind::Card | Kind::Iban | Kind::Phone) {
                return None;
            }
            end = s[..end].rfind([' ', '-', '.'])?;
        }
    }

    fn check(self, s: &str) -> bool {
        match self {
            Kind::Email => true,
            Kind::Iban => iban_valid(s),
            Kind::ChinaId => china_id_valid(s),
            Kind::Card => luhn_valid(s),
            Kind::Ip => s.parse::<Ipv4Addr>().is_ok() || s.parse::<Ipv6Addr>().is_ok(),
            Kind::Phone => (7..=15).contains(&s.bytes().filter(u8::is_ascii_digit).count()),
        }
    }
}

/// Luhn check over the digits of `s` (separators ignored).
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 IBAN: country letters, two check digits, 11–30 alphanumerics;
/// the rearranged number mod 97 is 1.
pub fn iban_valid(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// GB 11643-1999 resident identity number: 17 digits and a check character.
pub fn china_id_valid(s: &str) -> bool {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let b = s.as_bytes();
    if b.len() != 18 {
        return false;
    }
    let mut sum = 0;
    for (i, w) in W.iter().enumerate() {
        if !b[i].is_ascii_digit() {
            return false;
        }
        sum += u32::from(b[i] - b'0') * w;
    }
    CHECK[(sum % 11) as usize] == b[17].to_ascii_uppercase()
}
