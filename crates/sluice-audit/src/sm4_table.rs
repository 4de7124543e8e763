//! The SM4 block cipher (GB/T 32907-2016), computed for speed: the audit
//! trail's SM4-GCM ([`crate::cipher`]) runs on it, sealing through
//! `crate::seal` and opening through `aes-gcm`'s GCM.
//!
//! The `sm4` crate looks the S-box up a byte at a time and applies the
//! linear transform `L` after it: ~260 ns a block here, and an encrypted
//! field costs three blocks or more (GCM's tag mask, then the counter
//! blocks). In `perf` of `bench/proxy.py`'s production-shaped load it was
//! the largest single function, ~0.8 µs of ~25 per request. Here
//! `L(S(b) << 24)` is one 1 KiB table, the other byte positions its
//! rotations (`L` commutes with rotation): a round is four lookups, three
//! rotations and the XORs, still one round after another. The counter
//! mode hands over four blocks at a time when a field has them, and those
//! go through the rounds together, so that their independent chains
//! overlap. SM4-GCM seals a 24-byte field in 0.71–0.80 of the crate's
//! time (three blocks one after another), a 64-byte one in 0.40–0.59
//! (`security-bench`, bench/micro).
//!
//! The `sm4` crate stays the reference this is tested against. The table
//! is the same kind of secret-indexed lookup as the crate's S-box, four
//! times its size (OpenSSL's SM4 uses four such tables).

use aes_gcm::aead::consts::{U4, U16};
use sm4::cipher::{
    Block, BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, InOut,
    Key, KeyInit, KeySizeUser, ParBlocks, ParBlocksSizeUser,
};

/// The S-box, GB/T 32907-2016 §6.2.
#[rustfmt::skip]
const SBOX: [u8; 256] = [
    0xd6, 0x90, 0xe9, 0xfe, 0xcc, 0xe1, 0x3d, 0xb7, 0x16, 0xb6, 0x14, 0xc2, 0x28, 0xfb, 0x2c, 0x05,
    0x2b, 0x67, 0x9a, 0x76, 0x2a, 0xbe, 0x04, 0xc3, 0xaa, 0x44, 0x13, 0x26, 0x49, 0x86, 0x06, 0x99,
    0x9c, 0x42, 0x50, 0xf4, 0x91, 0xef, 0x98, 0x7a, 0x33, 0x54, 0x0b, 0x43, 0xed, 0xcf, 0xac, 0x62,
    0xe4, 0xb3, 0x1c, 0xa9, 0xc9, 0x08, 0xe8, 0x95, 0x80, 0xdf, 0x94, 0xfa, 0x75, 0x8f, 0x3f, 0xa6,
    0x47, 0x07, 0xa7, 0xfc, 0xf3, 0x73, 0x17, 0xba, 0x83, 0x59, 0x3c, 0x19, 0xe6, 0x85, 0x4f, 0xa8,
    0x68, 0x6b, 0x81, 0xb2, 0x71, 0x64, 0xda, 0x8b, 0xf8, 0xeb, 0x0f, 0x4b, 0x70, 0x56, 0x9d, 0x35,
    0x1e, 0x24, 0x0e, 0x5e, 0x63, 0x58, 0xd1, 0xa2, 0x25, 0x22, 0x7c, 0x3b, 0x01, 0x21, 0x78, 0x87,
    0xd4, 0x00, 0x46, 0x57, 0x9f, 0xd3, 0x27, 0x52, 0x4c, 0x36, 0x02, 0xe7, 0xa0, 0xc4, 0xc8, 0x9e,
    0xea, 0xbf, 0x8a, 0xd2, 0x40, 0xc7, 0x38, 0xb5, 0xa3, 0xf7, 0xf2, 0xce, 0xf9, 0x61, 0x15, 0xa1,
    0xe0, 0xae, 0x5d, 0xa4, 0x9b, 0x34, 0x1a, 0x55, 0xad, 0x93, 0x32, 0x30, 0xf5, 0x8c, 0xb1, 0xe3,
    0x1d, 0xf6, 0xe2, 0x2e, 0x82, 0x66, 0xca, 0x60, 0xc0, 0x29, 0x23, 0xab, 0x0d, 0x53, 0x4e, 0x6f,
    0xd5, 0xdb, 0x37, 0x45, 0xde, 0xfd, 0x8e, 0x2f, 0x03, 0xff, 0x6a, 0x72, 0x6d, 0x6c, 0x5b, 0x51,
    0x8d, 0x1b, 0xaf, 0x92, 0xbb, 0xdd, 0xbc, 0x7f, 0x11, 0xd9, 0x5c, 0x41, 0x1f, 0x10, 0x5a, 0xd8,
    0x0a, 0xc1, 0x31, 0x88, 0xa5, 0xcd, 0x7b, 0xbd, 0x2d, 0x74, 0xd0, 0x12, 0xb8, 0xe5, 0xb4, 0xb0,
    0x89, 0x69, 0x97, 0x4a, 0x0c, 0x96, 0x77, 0x7e, 0x65, 0xb9, 0xf1, 0x09, 0xc5, 0x6e, 0xc6, 0x84,
    0x18, 0xf0, 0x7d, 0xec, 0x3a, 0xdc, 0x4d, 0x20, 0x79, 0xee, 0x5f, 0x3e, 0xd7, 0xcb, 0x39, 0x48,
];

/// The system parameter `FK`, GB/T 32907-2016 §7.3.
const FK: [u32; 4] = [0xa3b1bac6, 0x56aa3350, 0x677d9197, 0xb27022dc];

/// The key schedule's constant `CK_i`: its bytes are `(4i + j) × 7 mod
/// 256` for j = 0..3 (GB/T 32907-2016 §7.3).
const fn ck(i: usize) -> u32 {
    let mut v = 0u32;
    let mut j = 0;
    while j < 4 {
        v = (v << 8) | (((4 * i + j) * 7) % 256) as u32;
        j += 1;
    }
    v
}

/// Encryption's linear transform `L`.
const fn l(b: u32) -> u32 {
    b ^ b.rotate_left(2) ^ b.rotate_left(10) ^ b.rotate_left(18) ^ b.rotate_left(24)
}

/// `L(S(i) << 24)`; a byte in another position is the same rotated right
/// by 8, 16 or 24 bits.
const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = l((SBOX[i] as u32) << 24);
        i += 1;
    }
    t
}

static T: [u32; 256] = table();

/// The round function `T = L ∘ τ` of a word.
#[inline(always)]
fn round(x: u32) -> u32 {
    T[(x >> 24) as usize]
        ^ T[((x >> 16) & 0xff) as usize].rotate_right(8)
        ^ T[((x >> 8) & 0xff) as usize].rotate_right(16)
        ^ T[(x & 0xff) as usize].rotate_right(24)
}

/// The key schedule's `T' = L' ∘ τ`.
fn key_round(x: u32) -> u32 {
    let s = u32::from_be_bytes(x.to_be_bytes().map(|b| SBOX[b as usize]));
    s ^ s.rotate_left(13) ^ s.rotate_left(23)
}

/// SM4 with its round keys expanded, encryption only: GCM needs no more.
#[derive(Clone)]
pub struct Sm4 {
    rk: [u32; 32],
}

impl KeySizeUser for Sm4 {
    type KeySize = U16;
}

impl KeyInit for Sm4 {
    fn new(key: &Key<Self>) -> Self {
        let mut k = [0u32; 4];
        for (i, w) in k.iter_mut().enumerate() {
            *w = u32::from_be_bytes(word(&key[4 * i..])) ^ FK[i];
        }
        let mut rk = [0u32; 32];
        for (i, r) in rk.iter_mut().enumerate() {
            let x = k[(i + 1) % 4] ^ k[(i + 2) % 4] ^ k[(i + 3) % 4] ^ ck(i);
            k[i % 4] ^= key_round(x);
            *r = k[i % 4];
        }
        Self { rk }
    }
}

/// The first four bytes of `b`.
fn word(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

impl BlockSizeUser for Sm4 {
    type BlockSize = U16;
}

impl ParBlocksSizeUser for Sm4 {
    type ParBlocksSize = U4;
}

impl BlockCipherEncrypt for Sm4 {
    #[inline]
    fn encrypt_with_backend(&self, f: impl BlockCipherEncClosure<BlockSize = Self::BlockSize>) {
        f.call(self)
    }
}

impl Sm4 {
    /// `N` whole blocks encrypted together, their rounds interleaved (for
    /// GCM's tag mask beside its first counter blocks: `crate::seal`).
    #[inline]
    pub(crate) fn blocks<const N: usize>(&self, input: [[u8; 16]; N]) -> [[u8; 16]; N] {
        self.encrypt(input.each_ref().map(|b| &b[..]))
    }

    /// `N` blocks encrypted with their rounds interleaved.
    #[inline(always)]
    fn encrypt<const N: usize>(&self, input: [&[u8]; N]) -> [[u8; 16]; N] {
        let mut x = input.map(|b| {
            let mut w = [0u32; 4];
            for (i, v) in w.iter_mut().enumerate() {
                *v = u32::from_be_bytes(word(&b[4 * i..]));
            }
            w
        });
        for rk in self.rk.chunks_exact(4) {
            for (i, k) in rk.iter().enumerate() {
                for w in x.iter_mut() {
                    w[i] ^= round(w[(i + 1) % 4] ^ w[(i + 2) % 4] ^ w[(i + 3) % 4] ^ k);
                }
            }
        }
        // The output is the last four words in reverse order.
        x.map(|w| {
            let mut out = [0u8; 16];
            for (o, v) in out.chunks_exact_mut(4).zip(w.iter().rev()) {
                o.copy_from_slice(&v.to_be_bytes());
            }
            out
        })
    }
}

impl BlockCipherEncBackend for Sm4 {
    #[inline]
    fn encrypt_block(&self, mut block: InOut<'_, '_, Block<Self>>) {
        let [out] = self.encrypt([block.get_in().as_slice()]);
        block.get_out().copy_from_slice(&out);
    }

    #[inline]
    fn encrypt_par_blocks(&self, mut blocks: InOut<'_, '_, ParBlocks<Self>>) {
        let b = blocks.get_in();
        let out = self.encrypt([&b[0][..], &b[1][..], &b[2][..], &b[3][..]]);
        for (o, v) in blocks.get_out().iter_mut().zip(out) {
            o.copy_from_slice(&v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::AesGcm;
    use aes_gcm::aead::AeadInOut;
    use aes_gcm::aead::consts::U12;

    fn random<const N: usize>(state: &mut u64) -> [u8; N] {
        std::array::from_fn(|_| {
            // xorshift64*: a fixed sequence, so a failure repeats.
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
    }

    /// Every block this computes is the `sm4` crate's, one at a time and
    /// four together, for keys and blocks all over the space.
    #[test]
    fn blocks_are_the_sm4_crates() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000 {
            let key: [u8; 16] = random(&mut state);
            let ours = Sm4::new(&key.into());
            let theirs = sm4::Sm4::new(&key.into());
            let mut four: ParBlocks<Sm4> = Default::default();
            let mut want = four;
            for (a, b) in four.iter_mut().zip(want.iter_mut()) {
                *a = random::<16>(&mut state).into();
                *b = *a;
                BlockCipherEncrypt::encrypt_block(&theirs, b);
            }
            let mut one = four[2];
            BlockCipherEncrypt::encrypt_block(&ours, &mut one);
            assert_eq!(one, want[2], "key {key:02x?}");
            BlockCipherEncBackend::encrypt_par_blocks_inplace(&ours, &mut four);
            assert_eq!(four, want, "key {key:02x?}");
        }
    }

    /// SM4-GCM on this cipher seals exactly as on the `sm4` crate's, for
    /// every length from nothing to past several four-block batches (the
    /// counter mode takes four blocks at a time, the rest one by one).
    #[test]
    fn gcm_on_it_is_gcm_on_the_sm4_crate() {
        let mut state = 0x0123_4567_89ab_cdef;
        for len in 0..=200 {
            let key: [u8; 16] = random(&mut state);
            let nonce: [u8; 12] = random(&mut state);
            let aad: [u8; 9] = random(&mut state);
            let plain: Vec<u8> = (0..len).map(|_| random::<1>(&mut state)[0]).collect();
            let ours = AesGcm::<Sm4, U12>::new(&key.into());
            let theirs = AesGcm::<sm4::Sm4, U12>::new(&key.into());
            let (mut a, mut b) = (plain.clone(), plain.clone());
            let nonce = nonce.into();
            let tag_a = ours
                .encrypt_inout_detached(&nonce, &aad, a.as_mut_slice().into())
                .unwrap();
            let tag_b = theirs
                .encrypt_inout_detached(&nonce, &aad, b.as_mut_slice().into())
                .unwrap();
            assert_eq!((a.as_slice(), tag_a), (b.as_slice(), tag_b), "{len} bytes");
            if len > 0 {
                assert_ne!(a, plain);
            }
        }
    }

    /// GB/T 32907-2016, Appendix A: example 1, and example 2 (the same
    /// block encrypted 1,000,000 times).
    #[test]
    fn the_standards_examples() {
        let key: [u8; 16] = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
            0x32, 0x10,
        ];
        let c = Sm4::new(&key.into());
        let mut block = Block::<Sm4>::from(key);
        BlockCipherEncrypt::encrypt_block(&c, &mut block);
        assert_eq!(
            block.as_slice(),
            [
                0x68, 0x1e, 0xdf, 0x34, 0xd2, 0x06, 0x96, 0x5e, 0x86, 0xb3, 0xe9, 0x4f, 0x53, 0x6e,
                0x42, 0x46
            ]
        );
        for _ in 1..1_000_000 {
            BlockCipherEncrypt::encrypt_block(&c, &mut block);
        }
        assert_eq!(
            block.as_slice(),
            [
                0x59, 0x52, 0x98, 0xc7, 0xc6, 0xfd, 0x27, 0x1f, 0x04, 0x02, 0xf8, 0x04, 0xc3, 0x3d,
                0x3f, 0x66
            ]
        );
    }
}
