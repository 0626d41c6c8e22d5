//! trove's one source of randomness: a seeded xoshiro256** generator, with independent
//! streams derived from one seed by SplitMix64.
//!
//! Written here rather than taken from a crate so that the sequence a seed produces is fixed by
//! this file alone: a simulation or a benchmark workload is reproduced from its seed on any
//! machine and with any dependency versions. Each user draws from its own stream (each load
//! generator thread, each part of a simulated model), so streams stay independent. A plain
//! value, owned by whoever draws from it.

/// SplitMix64: expands one seed into well-mixed words; used only to seed [`Rng`].
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A xoshiro256** generator (Blackman and Vigna).
#[derive(Clone, Debug)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// The generator of stream `stream` of `seed`. Different streams of one seed are
    /// independent for every practical purpose.
    pub fn stream(seed: u64, stream: u64) -> Rng {
        let mut mix = seed ^ splitmix64(&mut stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        let state = [
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
        ];
        // xoshiro's one forbidden state is all zeros; SplitMix64 never yields four in a row.
        debug_assert!(state.iter().any(|&word| word != 0));
        Rng { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// A uniform integer in `0..bound` (Lemire's multiply-shift; the bias for the bounds used
    /// here, far below 2^32, is under one part in 2^32). `bound` must not be zero.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no value to return");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_a_pure_function_of_seed_and_stream() {
        let draw = |seed, stream| {
            let mut rng = Rng::stream(seed, stream);
            (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 3), draw(7, 3));
        assert_ne!(draw(7, 3), draw(7, 4));
        assert_ne!(draw(7, 3), draw(8, 3));
    }

    #[test]
    fn the_generator_is_xoshiro256_starstar() {
        // The reference implementation, from state {1, 2, 3, 4}, starts 11520, 0, 1509978240.
        let mut rng = Rng {
            state: [1, 2, 3, 4],
        };
        assert_eq!(
            [rng.next_u64(), rng.next_u64(), rng.next_u64()],
            [11520, 0, 1509978240]
        );
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::stream(1, 1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10) as usize] += 1;
        }
        // Each value is expected 1000 times; 800 is more than six standard deviations away.
        assert!(seen.iter().all(|&count| count > 800), "{seen:?}");
    }
}
