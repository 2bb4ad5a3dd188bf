//! A figure's value across repeated runs: the median with its minimum and
//! maximum, so that a picture can show how far the runs disagree.

/// The median of a set of runs and their range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    /// `None` for no runs; otherwise the median (the mean of the middle two
    /// for an even count), minimum and maximum.
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            runs: n,
        })
    }

    /// One value given as a median with its range by the program that
    /// measured it (firsttouch prints them itself).
    pub fn given(median: f64, min: f64, max: f64, runs: usize) -> Spread {
        Spread {
            median,
            min,
            max,
            runs,
        }
    }

    /// The same spread under a monotone decreasing map (ns per page to
    /// GiB/s, say): the minimum and maximum trade places.
    pub fn map_decreasing(self, f: impl Fn(f64) -> f64) -> Spread {
        Spread {
            median: f(self.median),
            min: f(self.max),
            max: f(self.min),
            runs: self.runs,
        }
    }

    /// "1.23 (1.10–1.40)" with the given number of decimals.
    pub fn cell(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }

    /// A ratio as a cell, with enough decimals that a small one does not
    /// print as zero: "0.85× (0.80–0.90)", "0.0091× (0.0088–0.0095)".
    pub fn ratio_cell(&self) -> String {
        let small = self.min.min(self.median);
        let decimals = if small >= 0.1 {
            2
        } else {
            // two significant digits
            (1.0 - small.log10().floor()) as usize
        };
        format!(
            "{:.d$}× ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(
            Spread::given(0.85, 0.8, 0.9, 3).ratio_cell(),
            "0.85× (0.80–0.90)"
        );
        assert_eq!(
            Spread::given(0.0091, 0.0088, 0.0095, 3).ratio_cell(),
            "0.0091× (0.0088–0.0095)"
        );
    }

    #[test]
    fn decreasing_map_swaps_the_ends() {
        let s = Spread::given(2.0, 1.0, 4.0, 3).map_decreasing(|x| 1.0 / x);
        assert_eq!((s.median, s.min, s.max), (0.5, 0.25, 1.0));
    }
}
