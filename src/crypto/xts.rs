//! AES-256-XTS over one data unit, batched: the tweak sequence for a whole run of blocks
//! is computed first, then the AES rounds go through the `aes` crate's parallel block
//! calls (AES-NI/VAES pipelines) instead of one block at a time.
//!
//! Two ways to cut a file into XTS input (docs/FORMAT.md):
//! - format 1, [`Xts256::encrypt_unit`]: a unit of 16 bytes or more is standard IEEE 1619
//!   XTS, with ciphertext stealing for a final partial block; a unit shorter than 16
//!   bytes, which XTS cannot encrypt, is XORed with a pad derived from the unit's tweak
//!   and its length. A unit's ciphertext depends on its length.
//! - format 2, [`Xts256::encrypt_blocks`]: whole 16-byte blocks only, addressed by their
//!   index in the file. Block `b` is block `b mod 256` of data unit `b / 256`, so a whole
//!   unit encrypts exactly as IEEE 1619 XTS does, and any run of blocks can be encrypted
//!   on its own: a block's ciphertext depends on nothing but its own bytes and position.
//!
//! No input length panics.

use aes::cipher::consts::{U32, U64};
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use super::secret::SecretBytes;

pub const BLOCK: usize = 16;
/// Blocks processed per batch: one 4 KiB data unit.
const BATCH_BLOCKS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XtsError {
    #[error("an XTS data unit cannot be empty")]
    EmptyUnit,
    #[error("the XTS output buffer is not as long as the input")]
    LengthMismatch,
    #[error("an XTS block run is not a whole number of 16-byte blocks")]
    PartialBlock,
}

/// Blocks in one data unit.
pub const UNIT_BLOCKS: u64 = BATCH_BLOCKS as u64;

/// An AES-256-XTS key pair (K1 for data, K2 for tweaks) with expanded key schedules.
pub struct Xts256 {
    data: Box<Aes256>,
    tweak: Box<Aes256>,
}

impl Xts256 {
    /// `key` is K1 || K2, 32 bytes each.
    pub fn new(key: &SecretBytes<64>) -> Self {
        let key: &Array<u8, U64> = key.expose().into();
        let (k1, k2) = key.split_ref::<U32>();
        Xts256 {
            data: Box::new(Aes256::new(k1)),
            tweak: Box::new(Aes256::new(k2)),
        }
    }

    fn initial_tweak(&self, unit_index: u64) -> u128 {
        let mut block = Array::from((unit_index as u128).to_le_bytes());
        self.tweak.encrypt_block(&mut block);
        u128::from_le_bytes(block.into())
    }

    pub fn encrypt_unit(&self, unit_index: u64, unit: &mut [u8]) -> Result<(), XtsError> {
        self.process(unit_index, unit, Direction::Encrypt)
    }

    pub fn decrypt_unit(&self, unit_index: u64, unit: &mut [u8]) -> Result<(), XtsError> {
        self.process(unit_index, unit, Direction::Decrypt)
    }

    /// Encrypts `plain` into `out`, which must be as long. A write has to copy the
    /// caller's bytes anyway; here the first tweak pass reads them straight from `plain`
    /// instead of a separate copying pass over them.
    pub fn encrypt_unit_from(
        &self,
        unit_index: u64,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<(), XtsError> {
        if plain.len() != out.len() {
            return Err(XtsError::LengthMismatch);
        }
        // Ciphertext stealing and short units work in place.
        if plain.is_empty() || !plain.len().is_multiple_of(BLOCK) {
            out.copy_from_slice(plain);
            return self.encrypt_unit(unit_index, out);
        }
        let mut tweak = self.initial_tweak(unit_index);
        let chunk = BATCH_BLOCKS * BLOCK;
        for (source, chunk) in plain.chunks(chunk).zip(out.chunks_mut(chunk)) {
            tweak = self.batch(tweak, Some(source), chunk, Direction::Encrypt);
        }
        Ok(())
    }

    /// Encrypts whole blocks in place; `blocks` starts at the file's block `first_block`.
    pub fn encrypt_blocks(&self, first_block: u64, blocks: &mut [u8]) -> Result<(), XtsError> {
        self.process_blocks(first_block, None, blocks, Direction::Encrypt)
    }

    pub fn decrypt_blocks(&self, first_block: u64, blocks: &mut [u8]) -> Result<(), XtsError> {
        self.process_blocks(first_block, None, blocks, Direction::Decrypt)
    }

    /// Encrypts the whole blocks `plain` into `out`, which must be as long.
    pub fn encrypt_blocks_from(
        &self,
        first_block: u64,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<(), XtsError> {
        if plain.len() != out.len() {
            return Err(XtsError::LengthMismatch);
        }
        self.process_blocks(first_block, Some(plain), out, Direction::Encrypt)
    }

    /// Runs of whole blocks, cut where they cross a data unit, each started from its
    /// unit's tweak advanced to the block's position in the unit.
    fn process_blocks(
        &self,
        first_block: u64,
        source: Option<&[u8]>,
        out: &mut [u8],
        dir: Direction,
    ) -> Result<(), XtsError> {
        if !out.len().is_multiple_of(BLOCK) {
            return Err(XtsError::PartialBlock);
        }
        let mut block = first_block;
        let mut done = 0;
        while done < out.len() {
            let in_unit = block % UNIT_BLOCKS;
            let run = ((UNIT_BLOCKS - in_unit) as usize * BLOCK).min(out.len() - done);
            let tweak = advance(self.initial_tweak(block / UNIT_BLOCKS), in_unit);
            let chunk = &mut out[done..done + run];
            self.batch(tweak, source.map(|s| &s[done..done + run]), chunk, dir);
            done += run;
            block += (run / BLOCK) as u64;
        }
        Ok(())
    }

    fn process(&self, unit_index: u64, unit: &mut [u8], dir: Direction) -> Result<(), XtsError> {
        if unit.is_empty() {
            return Err(XtsError::EmptyUnit);
        }
        let mut tweak = self.initial_tweak(unit_index);
        if unit.len() < BLOCK {
            self.short_tail(tweak, unit);
            return Ok(());
        }
        let partial = unit.len() % BLOCK;
        // With a partial final block, the last full block takes part in ciphertext stealing.
        let plain_blocks = unit.len() / BLOCK - usize::from(partial != 0);
        let (body, rest) = unit.split_at_mut(plain_blocks * BLOCK);
        for chunk in body.chunks_mut(BATCH_BLOCKS * BLOCK) {
            tweak = self.batch(tweak, None, chunk, dir);
        }
        // `rest` is empty, or the last full block and the partial one after it.
        if let Some((last_full, partial)) = rest.split_first_chunk_mut::<BLOCK>() {
            self.steal(tweak, last_full, partial, dir);
        }
        Ok(())
    }

    /// XTS over whole blocks, of `source` into `chunk` or of `chunk` in place; returns
    /// the tweak for the block after `chunk`.
    fn batch(&self, tweak: u128, source: Option<&[u8]>, chunk: &mut [u8], dir: Direction) -> u128 {
        let mut tweaks = [0u128; BATCH_BLOCKS];
        // Plain byte arrays, not `aes::Block`s, for the XOR passes: their conversions to
        // and from u128 compile to plain loads and stores.
        let (blocks, _) = chunk.as_chunks_mut::<BLOCK>();
        let tweaks = &mut tweaks[..blocks.len()];
        let next = match source {
            None => fill_tweaks_and_xor(tweak, tweaks, blocks, |_, block| *block),
            Some(source) => {
                // As long as `blocks`, so indexing it needs no bounds check.
                let source = &source.as_chunks::<BLOCK>().0[..blocks.len()];
                fill_tweaks_and_xor(tweak, tweaks, blocks, |j, _| source[j])
            }
        };
        let aes_blocks = aes::Block::cast_slice_from_core_mut(blocks);
        match dir {
            Direction::Encrypt => self.data.encrypt_blocks(aes_blocks),
            Direction::Decrypt => self.data.decrypt_blocks(aes_blocks),
        }
        xor_tweaks(blocks, tweaks);
        next
    }

    /// Ciphertext stealing (IEEE 1619 §5.3.2) over the last full block and the partial
    /// block after it (1..=15 bytes).
    fn steal(&self, tweak: u128, last_full: &mut [u8; BLOCK], partial: &mut [u8], dir: Direction) {
        let next_tweak = mul_alpha(tweak);
        // Encryption uses T(m-1) then T(m); decryption reverses the order.
        let (first, second) = match dir {
            Direction::Encrypt => (tweak, next_tweak),
            Direction::Decrypt => (next_tweak, tweak),
        };
        let mut block = Array::from(*last_full);
        self.one_block(&mut block, first, dir);
        let m = partial.len();
        let mut stolen = block;
        stolen[..m].copy_from_slice(partial);
        partial.copy_from_slice(&block[..m]);
        self.one_block(&mut stolen, second, dir);
        last_full.copy_from_slice(&stolen);
    }

    fn one_block(&self, block: &mut aes::Block, tweak: u128, dir: Direction) {
        xor_tweak(block.as_mut(), tweak);
        match dir {
            Direction::Encrypt => self.data.encrypt_block(block),
            Direction::Decrypt => self.data.decrypt_block(block),
        }
        xor_tweak(block.as_mut(), tweak);
    }

    /// A unit of 1..=15 bytes: XOR with AES-K1(T ^ L(n)), L(n) = n in the last byte.
    /// Its own inverse.
    fn short_tail(&self, tweak: u128, unit: &mut [u8]) {
        let mut pad = Array::from(tweak.to_le_bytes());
        pad[BLOCK - 1] ^= unit.len() as u8;
        self.data.encrypt_block(&mut pad);
        for (byte, p) in unit.iter_mut().zip(pad.iter()) {
            *byte ^= p;
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

fn xor_tweaks(blocks: &mut [[u8; BLOCK]], tweaks: &[u128]) {
    for (block, tweak) in blocks.iter_mut().zip(tweaks) {
        xor_tweak(block, *tweak);
    }
}

fn xor_tweak(block: &mut [u8; BLOCK], tweak: u128) {
    *block = (u128::from_le_bytes(*block) ^ tweak).to_le_bytes();
}

/// Multiplication by the primitive element α in GF(2^128), little-endian (IEEE 1619).
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ if t >> 127 == 1 { 0x87 } else { 0 }
}

/// `t`·α^`n`: the tweak `n` blocks further into a unit.
fn advance(t: u128, n: u64) -> u128 {
    let t = (0..n / 8).fold(t, |t, _| mul_alpha8(t));
    (0..n % 8).fold(t, |t, _| mul_alpha(t))
}

/// Chains of tweaks stepped together: each multiplication waits only on the one eight
/// blocks back, so eight overlap instead of all 256 of a unit forming one serial chain.
const TWEAK_CHAINS: usize = 8;

/// `REDUCE_BYTE[b]`: what the eight bits `b` shifted out past x^127 fold back to, using
/// x^128 = x^7 + x^2 + x + 1 (0x87).
const REDUCE_BYTE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        let mut bit = 0;
        while bit < 8 {
            if b >> bit & 1 == 1 {
                table[b] ^= 0x87 << bit;
            }
            bit += 1;
        }
        b += 1;
    }
    table
};

/// Multiplication by α^8.
fn mul_alpha8(t: u128) -> u128 {
    (t << 8) ^ REDUCE_BYTE[(t >> 120) as usize] as u128
}

/// Fills `tweaks` with `first`·α^j and sets each block to its input XOR its tweak in the
/// same pass; `input(j, block)` gives block j's input (the block itself, or a source's).
/// Returns the tweak after the last one.
fn fill_tweaks_and_xor(
    first: u128,
    tweaks: &mut [u128],
    blocks: &mut [[u8; BLOCK]],
    input: impl Fn(usize, &[u8; BLOCK]) -> [u8; BLOCK],
) -> u128 {
    let mut t = first;
    for (j, (slot, block)) in tweaks
        .iter_mut()
        .zip(blocks.iter_mut())
        .enumerate()
        .take(TWEAK_CHAINS)
    {
        *slot = t;
        *block = input(j, block);
        xor_tweak(block, t);
        t = mul_alpha(t);
    }
    for j in TWEAK_CHAINS..tweaks.len() {
        let t = mul_alpha8(tweaks[j - TWEAK_CHAINS]);
        tweaks[j] = t;
        blocks[j] = input(j, &blocks[j]);
        xor_tweak(&mut blocks[j], t);
    }
    match tweaks.len().checked_sub(TWEAK_CHAINS) {
        Some(back) => mul_alpha8(tweaks[back]),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::KeyInit;

    fn key() -> SecretBytes<64> {
        let mut key = SecretBytes::<64>::zeroed();
        for (i, b) in key.expose_mut().iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7).wrapping_add(3);
        }
        key
    }

    /// xts-mode is the one-block-at-a-time reference this batched code must match.
    #[test]
    fn matches_xts_mode_for_every_length_from_16_to_a_unit_and_more() {
        let key = key();
        let ours = Xts256::new(&key);
        let (k1, k2) = key.expose().split_at(32);
        let oracle = xts_mode::Xts128::new(
            Aes256::new(&Array::try_from(k1).unwrap()),
            Aes256::new(&Array::try_from(k2).unwrap()),
        );
        for len in (16..=4096 + 64).chain([8192, 8192 + 17]) {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let unit_index = (len as u64) << 20;
            let mut expected = plain.clone();
            oracle.encrypt_sector(
                &mut expected,
                xts_mode::get_tweak_default(unit_index.into()),
            );
            let mut got = plain.clone();
            ours.encrypt_unit(unit_index, &mut got).unwrap();
            assert_eq!(got, expected, "encrypt, length {len}");
            ours.decrypt_unit(unit_index, &mut got).unwrap();
            assert_eq!(got, plain, "decrypt, length {len}");
        }
    }

    #[test]
    fn encrypting_from_a_source_matches_encrypting_in_place() {
        let ours = Xts256::new(&key());
        for len in (1..=4096 + 64).chain([8192, 8192 + 17]) {
            let plain: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
            let mut in_place = plain.clone();
            ours.encrypt_unit(77, &mut in_place).unwrap();
            // A stale buffer, as a reused one would be.
            let mut out = vec![0xa5u8; len];
            ours.encrypt_unit_from(77, &plain, &mut out).unwrap();
            assert_eq!(out, in_place, "length {len}");
        }
        assert_eq!(
            ours.encrypt_unit_from(0, &[1; 32], &mut [0; 16]),
            Err(XtsError::LengthMismatch)
        );
        assert_eq!(
            ours.encrypt_unit_from(0, &[], &mut []),
            Err(XtsError::EmptyUnit)
        );
    }

    /// Any run of blocks encrypts as the same blocks of whole units do, wherever it starts
    /// and however many unit boundaries it crosses.
    #[test]
    fn block_runs_match_whole_units() {
        let ours = Xts256::new(&key());
        let units = 3u64;
        let plain: Vec<u8> = (0..units as usize * 4096)
            .map(|i| (i * 7 + 1) as u8)
            .collect();
        let mut whole = plain.clone();
        for (u, unit) in whole.chunks_mut(4096).enumerate() {
            ours.encrypt_unit(10 + u as u64, unit).unwrap();
        }
        let first = 10 * UNIT_BLOCKS;
        for (start, blocks) in [(0, 1), (3, 1), (255, 2), (250, 300), (0, 768), (17, 600)] {
            let range = start * BLOCK..(start + blocks) * BLOCK;
            let mut run = plain[range.clone()].to_vec();
            ours.encrypt_blocks(first + start as u64, &mut run).unwrap();
            assert_eq!(run, whole[range.clone()], "blocks {start}+{blocks}");
            let mut out = vec![0x5a; run.len()];
            ours.encrypt_blocks_from(first + start as u64, &plain[range.clone()], &mut out)
                .unwrap();
            assert_eq!(out, run);
            ours.decrypt_blocks(first + start as u64, &mut run).unwrap();
            assert_eq!(run, plain[range]);
        }
        assert_eq!(
            ours.encrypt_blocks(0, &mut [0; 17]),
            Err(XtsError::PartialBlock)
        );
        assert_eq!(
            ours.encrypt_blocks_from(0, &[0; 32], &mut [0; 16]),
            Err(XtsError::LengthMismatch)
        );
        ours.encrypt_blocks(5, &mut []).unwrap();
    }

    #[test]
    fn short_units_round_trip_and_never_stay_plaintext() {
        let ours = Xts256::new(&key());
        assert_eq!(ours.encrypt_unit(0, &mut []), Err(XtsError::EmptyUnit));
        for len in 1..16 {
            let plain = vec![0x41u8; len];
            let mut buf = plain.clone();
            ours.encrypt_unit(9, &mut buf).unwrap();
            assert_ne!(buf, plain, "length {len}");
            ours.decrypt_unit(9, &mut buf).unwrap();
            assert_eq!(buf, plain);
        }
    }
}
