//! Shares of traffic, checked statistically: the counts a correct router
//! lands in, with margins that the next plausible mistakes (half or double
//! the share, on enough samples) fall outside of.

use std::ops::RangeInclusive;

/// The counts that `n` independent picks, each landing with probability
/// `share`, fall in: the binomial mean within four standard deviations. A
/// correct router misses it about once in 15,000 runs.
pub fn plausible(n: usize, share: f64) -> RangeInclusive<usize> {
    let mean = n as f64 * share;
    let margin = 4.0 * (mean * (1.0 - share)).sqrt();
    let low = (mean - margin).max(0.0).ceil() as usize;
    let high = ((mean + margin).floor() as usize).min(n);
    low..=high
}

#[cfg(test)]
mod tests {
    use super::plausible;

    #[test]
    fn a_ten_percent_share_of_2000_excludes_half_and_double() {
        let bounds = plausible(2000, 0.10);
        assert!(bounds.contains(&200));
        assert!(
            !bounds.contains(&100) && !bounds.contains(&400),
            "{bounds:?}"
        );
    }

    #[test]
    fn the_bounds_stay_within_the_samples() {
        assert_eq!(plausible(10, 1.0), 10..=10);
        assert_eq!(plausible(10, 0.0), 0..=0);
    }
}
