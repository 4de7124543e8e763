//! SM4-GCM field encryption for audit events.
//!
//! Each field gets a fresh random 96-bit nonce; the field's path is the
//! associated data, so a ciphertext moved to another field does not
//! decrypt. The key id (configured, or the first 8 hex digits of the key's
//! SHA-256) is recorded with every field so keys can be rotated: a reader
//! holding several keys picks the right one.
//!
//! An encrypted field is the JSON object
//! `{"enc":"SM4-GCM","kid":"…","nonce":"<base64>","ct":"<base64 ciphertext+tag>"}`;
//! the plaintext is the field's original JSON text, so decryption restores
//! the value exactly, type included.

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;

/// SM4-GCM on the table-driven SM4 of [`crate::sm4_table`].
type Sm4Gcm = AesGcm<crate::sm4_table::Sm4, U12>;
type Nonce = aes_gcm::Nonce<U12>;

pub const ALGORITHM: &str = "SM4-GCM";

/// The longest value encrypted without an allocation (an identifier, an
/// email, a short object: what `encrypt_fields` names).
const STACK_PLAINTEXT: usize = 240;
/// GCM's tag.
const TAG: usize = 16;
/// Base64 of a stack-sized ciphertext and its tag.
const STACK_BASE64: usize = (STACK_PLAINTEXT + TAG).div_ceil(3) * 4;

/// `bytes` in base64, appended to `out`: through a buffer on the stack
/// when they fit. `encode_string` goes through the crate's chunked
/// encoder, which zeroes a 1 KiB buffer per call: ~540 instructions for a
/// nonce or a short ciphertext, twice per encrypted field.
fn push_base64(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; STACK_BASE64];
    match B64.encode_slice(bytes, &mut buf) {
        // Base64's alphabet is ASCII.
        Ok(n) => out.push_str(std::str::from_utf8(&buf[..n]).expect("base64 is ASCII")),
        Err(_) => B64.encode_string(bytes, out),
    }
}

pub struct FieldCipher {
    /// Opens fields (and is the reference the sealer is tested against).
    aead: Sm4Gcm,
    /// Seals them: the tag's mask beside the first counter blocks.
    sealer: crate::seal::Sealer,
    kid: String,
    /// `kid` as a JSON string, written into every encrypted field.
    kid_json: String,
}

impl std::fmt::Debug for FieldCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldCipher")
            .field("kid", &self.kid)
            .finish()
    }
}

impl FieldCipher {
    pub fn new(key: &[u8; 16], kid: Option<&str>) -> Self {
        let kid = kid.map_or_else(|| key_id(key), str::to_owned);
        Self {
            aead: Sm4Gcm::new(key.into()),
            sealer: crate::seal::Sealer::new(key),
            kid_json: Value::from(kid.as_str()).to_string(),
            kid,
        }
    }

    /// From 32 hex digits.
    pub fn from_hex(hex: &str, kid: Option<&str>) -> Result<Self, String> {
        let key = sluice_core::config::parse_key_hex(hex.trim())
            .ok_or("an SM4 key is 32 hex digits (128 bits)")?;
        Ok(Self::new(&key, kid))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The encrypted form of `value`, bound to `field`.
    pub fn encrypt(&self, field: &str, value: &Value) -> Value {
        serde_json::from_str(&self.encrypt_raw(field, &value.to_string()))
            .expect("an encrypted field is a JSON object")
    }

    /// The encrypted form, as JSON text, of a value given as its JSON text
    /// (`plain`, as the client wrote it: no `Value` built and written out
    /// again), bound to `field`.
    pub fn encrypt_raw(&self, field: &str, plain: &str) -> Box<str> {
        let mut out = String::new();
        self.encrypt_into(field, plain, &mut out);
        out.into_boxed_str()
    }

    /// [`FieldCipher::encrypt_raw`], appended to `out`: the ciphertext is
    /// made in a buffer on the stack (for a value up to
    /// [`STACK_PLAINTEXT`] bytes) and written into `out` as base64, with
    /// `out` grown once. Nothing else is allocated.
    pub fn encrypt_into(&self, field: &str, plain: &str, out: &mut String) {
        // A fresh random nonce per field, from a CSPRNG seeded by the OS
        // (no system call per field).
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let mut ct: SmallVec<[u8; STACK_PLAINTEXT + TAG]> = SmallVec::from_slice(plain.as_bytes());
        let tag = self.sealer.seal(&nonce, field.as_bytes(), &mut ct);
        ct.extend_from_slice(&tag);
        let (head, kid_key, nonce_key, ct_key, tail) = (
            r#"{"enc":""#,
            r#"","kid":"#,
            r#","nonce":""#,
            r#"","ct":""#,
            r#""}"#,
        );
        let b64 = |n| base64::encoded_len(n, true).unwrap_or_default();
        out.reserve(
            head.len()
                + ALGORITHM.len()
                + kid_key.len()
                + self.kid_json.len()
                + nonce_key.len()
                + b64(nonce.len())
                + ct_key.len()
                + b64(ct.len())
                + tail.len(),
        );
        for part in [head, ALGORITHM, kid_key, &self.kid_json, nonce_key] {
            out.push_str(part);
        }
        push_base64(out, &nonce);
        out.push_str(ct_key);
        push_base64(out, &ct);
        // JSON by construction: fixed keys, the key id written by serde,
        // base64 (no character that needs an escape).
        out.push_str(tail);
    }

    /// The original value of an encrypted `field`.
    pub fn decrypt(&self, field: &str, enc: &Value) -> Result<Value, String> {
        if enc.get("enc").and_then(Value::as_str) != Some(ALGORITHM) {
            return Err(format!("field '{field}' is not {ALGORITHM}-encrypted"));
        }
        let kid = enc.get("kid").and_then(Value::as_str).unwrap_or_default();
        if kid != self.kid {
            return Err(format!(
                "field '{field}' was encrypted with key '{kid}', not '{}'",
                self.kid
            ));
        }
        let b64 = |k: &str| {
            enc.get(k)
                .and_then(Value::as_str)
                .and_then(|s| B64.decode(s).ok())
                .ok_or_else(|| format!("field '{field}': '{k}' is missing or not base64"))
        };
        let nonce_bytes = b64("nonce")?;
        let nonce = Nonce::try_from(nonce_bytes.as_slice())
            .map_err(|_| format!("field '{field}': the nonce is not 12 bytes"))?;
        let ct = b64("ct")?;
        let plain = self
            .aead
            .decrypt(
                &nonce,
                Payload {
                    msg: &ct,
                    aad: field.as_bytes(),
                },
            )
            .map_err(|_| {
                format!("field '{field}': authentication failed (wrong key or altered)")
            })?;
        serde_json::from_slice(&plain).map_err(|e| format!("field '{field}': {e}"))
    }
}

/// The default key id: the first 8 hex digits of the key's SHA-256.
pub fn key_id(key: &[u8; 16]) -> String {
    let d = Sha256::digest(key);
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sm4::cipher::{BlockCipherDecrypt, BlockCipherEncrypt};

    #[test]
    fn base64_through_the_stack_is_the_engines() {
        let bytes: Vec<u8> = (0..=255u8)
            .cycle()
            .take(STACK_PLAINTEXT + TAG + 40)
            .collect();
        // Every length, past the stack buffer's too (the engine's own way).
        for n in 0..=bytes.len() {
            let mut out = String::from("x");
            push_base64(&mut out, &bytes[..n]);
            assert_eq!(out[1..], B64.encode(&bytes[..n]), "{n} bytes");
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// GB/T 32907-2016, Appendix A: example 1, one encryption, and example
    /// 2, the same block encrypted 1,000,000 times.
    #[test]
    fn sm4_matches_the_standard_test_vectors() {
        let key = hex("0123456789abcdeffedcba9876543210");
        let cipher = sm4::Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::Block::<sm4::Sm4>::try_from(key.as_slice()).unwrap();
        cipher.encrypt_block(&mut block);
        assert_eq!(block.as_slice(), hex("681edf34d206965e86b3e94f536e4246"));
        cipher.decrypt_block(&mut block);
        assert_eq!(block.as_slice(), key);
        for _ in 0..1_000_000 {
            cipher.encrypt_block(&mut block);
        }
        assert_eq!(block.as_slice(), hex("595298c7c6fd271f0402f804c33d3f66"));
    }

    /// RFC 8998, Appendix A.1: the SM4-GCM known answer (ciphertext and
    /// tag), with the exact construction the audit fields use.
    #[test]
    fn sm4_gcm_matches_rfc_8998() {
        let gcm = Sm4Gcm::new_from_slice(&hex("0123456789abcdeffedcba9876543210")).unwrap();
        let nonce = Nonce::try_from(hex("00001234567800000000abcd").as_slice()).unwrap();
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plain = hex(concat!(
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccdddddddddddddddd",
            "eeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa"
        ));
        let sealed = gcm
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .unwrap();
        let want = hex(concat!(
            "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735",
            "d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d",
            "83de3541e4c2b58177e065a9bf7b62ec"
        ));
        assert_eq!(sealed, want);
        let opened = gcm
            .decrypt(
                &nonce,
                Payload {
                    msg: &want,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(opened, plain);
    }

    #[test]
    fn fields_round_trip_with_type_and_fresh_nonces() {
        let key = [7u8; 16];
        let c = FieldCipher::new(&key, None);
        assert_eq!(c.kid().len(), 8);
        for v in [
            json!("patient-42"),
            json!(12345),
            json!({"a":[1,"x"]}),
            json!(null),
        ] {
            let a = c.encrypt("metadata.patient_id", &v);
            let b = c.encrypt("metadata.patient_id", &v);
            assert_ne!(a["nonce"], b["nonce"], "a nonce per field");
            assert_ne!(a["ct"], b["ct"]);
            assert!(!a.to_string().contains("patient-42"));
            assert_eq!(c.decrypt("metadata.patient_id", &a).unwrap(), v);
        }
    }

    #[test]
    fn a_key_id_needing_escapes_is_written_as_json() {
        let c = FieldCipher::new(&[3u8; 16], Some("k\"1\\é"));
        let raw = c.encrypt_raw("user", r#" "alice" "#);
        let enc: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(enc["kid"], "k\"1\\é");
        assert_eq!(enc["enc"], ALGORITHM);
        assert_eq!(c.decrypt("user", &enc).unwrap(), json!("alice"));
    }

    #[test]
    fn wrong_key_field_or_tampering_fail() {
        let c = FieldCipher::new(&[1u8; 16], Some("k1"));
        let enc = c.encrypt("user", &json!("alice"));
        // Another key with the same id: authentication fails.
        let other = FieldCipher::new(&[2u8; 16], Some("k1"));
        assert!(
            other
                .decrypt("user", &enc)
                .unwrap_err()
                .contains("authentication")
        );
        // Another key id: named.
        let k2 = FieldCipher::new(&[1u8; 16], Some("k2"));
        assert!(k2.decrypt("user", &enc).unwrap_err().contains("'k1'"));
        // Moved to another field.
        assert!(c.decrypt("metadata.user", &enc).is_err());
        // A flipped bit.
        let mut t = enc.clone();
        let mut ct = B64.decode(t["ct"].as_str().unwrap()).unwrap();
        ct[0] ^= 1;
        t["ct"] = json!(B64.encode(ct));
        assert!(c.decrypt("user", &t).is_err());
        assert!(c.decrypt("user", &json!("plain")).is_err());
    }
}
