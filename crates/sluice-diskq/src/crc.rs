//! CRC-32C arithmetic: moving a checksum past bytes not yet seen, so that a record's checksum
//! can be computed before its sequence number is known.
//!
//! A record's checksum covers `seq ‖ payload`, and the seq is assigned under the queue's lock.
//! The payload's checksum and the operator "shift by the payload's length" are computed
//! outside it ([`shift_op`]); under the lock only the 8 seq bytes are checksummed and combined
//! ([`combine`]: one multiplication in GF(2)[x] mod P, a few dozen operations).
//! `crc32c::crc32c_combine` computes the same but rebuilds the shift operator from scratch by
//! repeated 32×32 matrix squaring, several microseconds per call: too slow for one call per
//! append under a lock.
//!
//! This is zlib's `crc32_combine_gen64` / `crc32_combine_op` (zlib ≥ 1.2.12) with the
//! Castagnoli polynomial; it holds because CRC-32C, like zlib's CRC-32, is reflected with an
//! initial value and final xor of all ones, which cancel out when combining.

/// The Castagnoli polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b mod P`, both polynomials bit-reflected (bit 31 is x^0). Branch-free: 32 rounds of
/// masks, a few nanoseconds whatever the bits.
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut i = 0;
    while i < 32 {
        // All ones if bit x^i of `a` is set.
        let take = 0u32.wrapping_sub((a >> (31 - i)) & 1);
        p ^= b & take;
        b = (b >> 1) ^ (POLY & 0u32.wrapping_sub(b & 1));
        i += 1;
    }
    p
}

/// `X2N[k]` is `x^(2^k) mod P`, for every `k` a shift by up to 2^61 bytes needs.
const X2N: [u32; 64] = {
    let mut table = [0u32; 64];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 64 {
        table[k] = p;
        p = multmodp(p, p);
        k += 1;
    }
    table
};

/// The operator that moves a checksum past `len` bytes: `x^(8 * len) mod P`.
pub(crate) fn shift_op(len: usize) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut n = len as u64;
    let mut k = 3; // 8 * len = len * 2^3
    while n != 0 && k < X2N.len() {
        if n & 1 != 0 {
            p = multmodp(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The checksum of `A ‖ B` from `crc(A)`, `crc(B)` and `shift_op(B.len())`.
pub(crate) fn combine(crc_a: u32, crc_b: u32, op: u32) -> u32 {
    multmodp(op, crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combining_matches_checksumming_the_concatenation() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for split in [0, 1, 7, 8, 255, 256, 4096, 65_535, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            let whole = crc32c::crc32c(&data);
            let combined = combine(crc32c::crc32c(a), crc32c::crc32c(b), shift_op(b.len()));
            assert_eq!(combined, whole, "split at {split}");
            assert_eq!(
                crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len()),
                whole
            );
        }
    }
}
