//! SM4-GCM sealing (NIST SP 800-38D with SM4 as the block cipher, a 96-bit
//! nonce) with the tag's mask computed beside the first counter blocks.
//!
//! `aes-gcm` encrypts the mask `E(J0)` on its own, then the counter blocks
//! (four at a time only when a message has four): an encrypted field of up
//! to 32 bytes, an identifier or an address, cost three SM4 blocks one
//! after another, each a chain of 32 dependent rounds, ~0.4 µs of the
//! production-shaped request in `perf`. Here the mask and the text's first
//! counter blocks (as many as it needs, up to three) go through the rounds
//! together (`Sm4::blocks`), then the rest four at a time. GHASH is the `ghash` crate's, as `aes-gcm` uses it; `aes-gcm`
//! still opens what this seals, and the tests hold the two to the same
//! bytes.

use ghash::GHash;
use ghash::universal_hash::UniversalHash;
use sm4::cipher::KeyInit;

use crate::sm4_table::Sm4;

pub(crate) struct Sealer {
    sm4: Sm4,
    /// Keyed with `H = E(0¹²⁸)`, cloned per message.
    ghash: GHash,
}

impl Sealer {
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        let sm4 = Sm4::new(key.into());
        let [h] = sm4.blocks([[0; 16]]);
        Self {
            ghash: GHash::new(&h.into()),
            sm4,
        }
    }

    /// Encrypts `buf` in place under `nonce`, authenticating `aad` with it;
    /// the 16-byte tag. The caller keeps a message under GCM's limit
    /// (2³² − 2 blocks; audit fields are far shorter).
    pub(crate) fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let block = |i: u32| {
            let mut b = [0u8; 16];
            b[..12].copy_from_slice(nonce);
            b[12..].copy_from_slice(&i.to_be_bytes());
            b
        };
        // J0 = nonce ‖ 1 masks the tag; the text's counter starts at 2. No
        // more blocks than the text needs: four blocks together take about
        // twice the time of two (the rounds' work, not their latency, is
        // then the limit).
        let mut first = [[0u8; 16]; 3];
        let mask = match buf.len().div_ceil(16) {
            0 => self.sm4.blocks([block(1)])[0],
            1 => {
                let [mask, a] = self.sm4.blocks([block(1), block(2)]);
                first[0] = a;
                mask
            }
            2 => {
                let [mask, a, b] = self.sm4.blocks([block(1), block(2), block(3)]);
                first[..2].copy_from_slice(&[a, b]);
                mask
            }
            _ => {
                let [mask, a, b, c] = self.sm4.blocks([block(1), block(2), block(3), block(4)]);
                first = [a, b, c];
                mask
            }
        };
        let (head, rest) = buf.split_at_mut(buf.len().min(48));
        xor_stream(head, &first);
        for (n, group) in rest.chunks_mut(64).enumerate() {
            let at = 5u32.wrapping_add(4 * n as u32);
            let ks = self.sm4.blocks(std::array::from_fn::<_, 4, _>(|i| {
                block(at.wrapping_add(i as u32))
            }));
            xor_stream(group, &ks);
        }
        let mut g = self.ghash.clone();
        g.update_padded(aad);
        g.update_padded(buf);
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(buf.len() as u64 * 8).to_be_bytes());
        g.update(&[lengths.into()]);
        let mut tag: [u8; 16] = g.finalize().into();
        for (t, m) in tag.iter_mut().zip(mask) {
            *t ^= m;
        }
        tag
    }
}

/// `text` XORed with the key stream `ks`, block by block (the last one
/// partial).
fn xor_stream(text: &mut [u8], ks: &[[u8; 16]]) {
    for (chunk, k) in text.chunks_mut(16).zip(ks) {
        for (b, k) in chunk.iter_mut().zip(k) {
            *b ^= k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::AesGcm;
    use aes_gcm::aead::consts::U12;
    use aes_gcm::aead::{Aead, Payload};

    #[test]
    fn seals_as_aes_gcm_seals_and_opens_with_it() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            // xorshift64*: a fixed sequence, so a failure repeats.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u8
        };
        for len in (0..=200).chain([255, 256, 257, 1000, 4096]) {
            let key: [u8; 16] = std::array::from_fn(|_| next());
            let nonce: [u8; 12] = std::array::from_fn(|_| next());
            let aad: Vec<u8> = (0..len % 23).map(|_| next()).collect();
            let plain: Vec<u8> = (0..len).map(|_| next()).collect();
            let reference = AesGcm::<Sm4, U12>::new(&key.into());
            let want = reference
                .encrypt(
                    &nonce.into(),
                    Payload {
                        msg: &plain,
                        aad: &aad,
                    },
                )
                .unwrap();
            let mut got = plain.clone();
            let tag = Sealer::new(&key).seal(&nonce, &aad, &mut got);
            got.extend_from_slice(&tag);
            assert_eq!(got, want, "{len} bytes");
            let opened = reference
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: &got,
                        aad: &aad,
                    },
                )
                .unwrap();
            assert_eq!(opened, plain);
        }
    }

    /// GB/T 36624-2018's SM4-GCM example (as RFC 8998 gives it): the
    /// cipher and the mode, not only agreement with `aes-gcm`.
    #[test]
    fn the_standard_example() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key: [u8; 16] = hex("0123456789ABCDEFFEDCBA9876543210").try_into().unwrap();
        let nonce: [u8; 12] = hex("00001234567800000000ABCD").try_into().unwrap();
        let aad = hex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        let mut text = hex(concat!(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD",
            "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
        ));
        let tag = Sealer::new(&key).seal(&nonce, &aad, &mut text);
        assert_eq!(
            text,
            hex(concat!(
                "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735",
                "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
            ))
        );
        assert_eq!(tag.to_vec(), hex("83DE3541E4C2B58177E065A9BF7B62EC"));
    }
}
