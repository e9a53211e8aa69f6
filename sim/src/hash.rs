//! Deterministic randomness: every choice the simulator makes is a pure function
//! of `(seed, tag, index)`, so event `i` can be rebuilt at any time without
//! keeping earlier events in memory.
//!
//! Owns the mixing function, a tiny splitmix64 stream for byte filling, and a
//! reversible 62-bit permutation used to make object uuids that can be mapped
//! back to their object number (the file endpoint needs that). It knows nothing
//! of events or JSON.

/// The splitmix64 finalizer: a bijection on `u64` with good avalanche.
pub const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 well-mixed bits for `(seed, tag, a)`.
pub fn h(seed: u64, tag: u64, a: u64) -> u64 {
    mix(seed ^ mix(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ mix(a)))
}

/// 64 well-mixed bits for `(seed, tag, a, b)`.
pub fn h2(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    h(
        seed,
        tag,
        a ^ mix(b.wrapping_add(0x632b_e59b_d9b4_e019)).rotate_left(23),
    )
}

/// Maps 64 hash bits to a float in `[0, 1)`.
pub fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A splitmix64 generator, for filling byte buffers.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(state: u64) -> Self {
        SplitMix(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
}

const M31: u64 = (1 << 31) - 1;
/// Mask of the 62 bits [`permute62`] works on.
pub const M62: u64 = (1 << 62) - 1;
const ROUNDS: u64 = 4;
const TAG_FEISTEL: u64 = 0x6665_6973;

fn round(seed: u64, r: u64, half: u64) -> u64 {
    h(seed, TAG_FEISTEL + r, half) & M31
}

/// A seed-keyed permutation of `[0, 2^62)` (a 4-round Feistel network).
pub fn permute62(seed: u64, x: u64) -> u64 {
    let (mut l, mut r) = ((x >> 31) & M31, x & M31);
    for k in 0..ROUNDS {
        let next = l ^ round(seed, k, r);
        l = r;
        r = next;
    }
    (l << 31) | r
}

/// The inverse of [`permute62`].
pub fn unpermute62(seed: u64, y: u64) -> u64 {
    let (mut l, mut r) = ((y >> 31) & M31, y & M31);
    for k in (0..ROUNDS).rev() {
        let prev = r ^ round(seed, k, l);
        r = l;
        l = prev;
    }
    (l << 31) | r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute62_round_trips_and_stays_in_range() {
        for seed in [0, 1, 42, u64::MAX] {
            for x in (0..2000).chain([M62, M62 - 1, 1 << 40]) {
                let y = permute62(seed, x);
                assert!(y <= M62);
                assert_eq!(unpermute62(seed, y), x);
            }
        }
    }

    #[test]
    fn permute62_depends_on_the_seed() {
        assert_ne!(permute62(1, 7), permute62(2, 7));
    }

    #[test]
    fn unit_is_in_range_and_spread() {
        let mut below_half = 0;
        for i in 0..10_000 {
            let u = unit(h(3, 9, i));
            assert!((0.0..1.0).contains(&u));
            if u < 0.5 {
                below_half += 1;
            }
        }
        assert!((4_700..5_300).contains(&below_half), "{below_half}");
    }
}
