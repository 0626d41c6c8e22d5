//! The statistics the gate judges with: medians, a robust spread, and the one-sided
//! Mann-Whitney U test. Small, exact and dependency-free; inputs are a few per-run values.

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    })
}

/// Scale that makes the median absolute deviation estimate a normal standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;
/// How many robust standard deviations of run-to-run spread count as noise.
pub const NOISE_FLOOR_SIGMAS: f64 = 3.0;

/// The noise floor of a set of per-run values, as a fraction of their median:
/// [`NOISE_FLOOR_SIGMAS`] robust standard deviations (1.4826 × the median absolute
/// deviation). Zero for a single run or a zero median.
pub fn relative_noise(values: &[f64]) -> f64 {
    let Some(center) = median(values) else {
        return 0.0;
    };
    if center == 0.0 {
        return 0.0;
    }
    let deviations: Vec<f64> = values.iter().map(|v| (v - center).abs()).collect();
    let mad = median(&deviations).unwrap_or(0.0);
    NOISE_FLOOR_SIGMAS * MAD_TO_SIGMA * mad / center.abs()
}

/// Largest sample, per side, for which the exact distribution of U is computed; above it,
/// or with ties, the normal approximation (with tie correction) is used.
const EXACT_SAMPLE_MAX: usize = 20;

/// The one-sided Mann-Whitney U test that `larger` tends to be larger than `smaller`:
/// the probability, if both came from one distribution, of a U at least as large as the
/// observed one. `None` when either side is empty.
pub fn mann_whitney_greater(larger: &[f64], smaller: &[f64]) -> Option<f64> {
    let (m, n) = (larger.len(), smaller.len());
    if m == 0 || n == 0 {
        return None;
    }
    let mut u = 0.0;
    let mut ties = false;
    for a in larger {
        for b in smaller {
            if a > b {
                u += 1.0;
            } else if a == b {
                u += 0.5;
                ties = true;
            }
        }
    }
    if !ties && m <= EXACT_SAMPLE_MAX && n <= EXACT_SAMPLE_MAX {
        Some(exact_upper_tail(m, n, u as usize))
    } else {
        Some(normal_upper_tail(larger, smaller, u))
    }
}

/// The smallest p-value a test with these sample sizes can give (every value of one side
/// above every value of the other, no ties): 1 / C(m + n, m).
pub fn smallest_p_value(m: usize, n: usize) -> f64 {
    if m == 0 || n == 0 {
        return 1.0;
    }
    let mut arrangements = 1.0;
    for k in 1..=m.min(n) {
        arrangements = arrangements * (m + n + 1 - k) as f64 / k as f64;
    }
    1.0 / arrangements
}

/// P(U >= u) for sample sizes m and n without ties, from the count of arrangements per U:
/// N(m, n, u) = N(m − 1, n, u − n) + N(m, n − 1, u).
fn exact_upper_tail(m: usize, n: usize, u: usize) -> f64 {
    let u_max = m * n;
    // counts[i][j] holds the distribution of U for sizes i and j, as a vector over u.
    let mut counts: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); n + 1]; m + 1];
    for i in 0..=m {
        for j in 0..=n {
            let mut distribution = vec![0.0; i * j + 1];
            if i == 0 || j == 0 {
                distribution[0] = 1.0;
            } else {
                for (value, count) in counts[i - 1][j].iter().enumerate() {
                    distribution[value + j] += count;
                }
                for (value, count) in counts[i][j - 1].iter().enumerate() {
                    distribution[value] += count;
                }
            }
            counts[i][j] = distribution;
        }
    }
    let distribution = &counts[m][n];
    let total: f64 = distribution.iter().sum();
    let tail: f64 = distribution[u.min(u_max)..].iter().sum();
    tail / total
}

/// P(U >= u) by the normal approximation with tie correction and a continuity correction.
fn normal_upper_tail(larger: &[f64], smaller: &[f64], u: f64) -> f64 {
    let (m, n) = (larger.len() as f64, smaller.len() as f64);
    let mut pooled: Vec<f64> = larger.iter().chain(smaller).copied().collect();
    pooled.sort_by(f64::total_cmp);
    let mut tie_term = 0.0;
    let mut start = 0;
    while start < pooled.len() {
        let end = pooled[start..]
            .iter()
            .position(|value| *value != pooled[start])
            .map_or(pooled.len(), |offset| start + offset);
        let t = (end - start) as f64;
        tie_term += t * t * t - t;
        start = end;
    }
    let total = m + n;
    let variance = m * n / 12.0 * ((total + 1.0) - tie_term / (total * (total - 1.0)));
    if variance <= 0.0 {
        return 1.0;
    }
    let z = (u - m * n / 2.0 - 0.5) / variance.sqrt();
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' erfcc, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let value = t * poly.exp();
    if x >= 0.0 { value } else { 2.0 - value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn noise_is_zero_for_one_run_and_grows_with_spread() {
        assert_eq!(relative_noise(&[100.0]), 0.0);
        let tight = relative_noise(&[100.0, 101.0, 99.0, 100.0, 100.5]);
        let loose = relative_noise(&[100.0, 120.0, 80.0, 110.0, 90.0]);
        assert!(tight < loose, "{tight} < {loose}");
        // MAD of the loose set is 10 around 100: 3 × 1.4826 × 10 / 100.
        assert!((loose - 0.444_78).abs() < 1e-9, "{loose}");
    }

    #[test]
    fn exact_p_values_match_the_tables() {
        // Three against three, fully separated: 1 arrangement of C(6,3) = 20.
        let p = mann_whitney_greater(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((p - 0.05).abs() < 1e-12, "{p}");
        // Five against five, fully separated: 1 / 252.
        let p =
            mann_whitney_greater(&[6.0, 7.0, 8.0, 9.0, 10.0], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert!((p - 1.0 / 252.0).abs() < 1e-12, "{p}");
        // The other direction is as unlikely to be "greater" as possible.
        let p = mann_whitney_greater(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
        assert_eq!(p, 1.0);
        assert!((smallest_p_value(5, 5) - 1.0 / 252.0).abs() < 1e-15);
    }

    #[test]
    fn exact_distribution_is_symmetric() {
        // U = 2 for sizes 2 and 2: P(U >= 2) = 4/6 (U takes 0,1,2,2,3,4 over 6 arrangements).
        let p = exact_upper_tail(2, 2, 2);
        assert!((p - 4.0 / 6.0).abs() < 1e-12, "{p}");
    }

    #[test]
    fn the_normal_approximation_agrees_with_the_exact_test() {
        let larger: Vec<f64> = (0..20).map(|i| 10.0 + i as f64 * 1.3).collect();
        let smaller: Vec<f64> = (0..20).map(|i| 1.0 + i as f64 * 1.1).collect();
        let exact = mann_whitney_greater(&larger, &smaller).unwrap();
        let mut u = 0.0;
        for a in &larger {
            for b in &smaller {
                u += if a > b { 1.0 } else { 0.0 };
            }
        }
        let approx = normal_upper_tail(&larger, &smaller, u);
        assert!((exact - approx).abs() < 0.01, "{exact} vs {approx}");
    }

    #[test]
    fn ties_use_the_corrected_approximation_and_identical_samples_are_not_significant() {
        let same = [5.0, 5.0, 5.0, 5.0];
        assert_eq!(mann_whitney_greater(&same, &same), Some(1.0));
        let p = mann_whitney_greater(&[2.0, 3.0, 3.0, 4.0], &[1.0, 2.0, 2.0, 3.0]).unwrap();
        assert!(p > 0.0 && p < 0.5, "{p}");
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-6);
    }
}
