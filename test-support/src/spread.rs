//! Min, median and max of a bench's repeated figures: the benches measure in
//! interleaved rounds on a noisy machine and report each ratio's spread.
//! Also how a bench reads its knobs from the environment.

/// Min, median and max of a list of figures (the median of an even count is
/// the mean of the middle two).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// The spread of `v`; panics on an empty list (a bench bug).
pub fn spread(v: &[f64]) -> Spread {
    assert!(!v.is_empty(), "spread of no figures");
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Spread {
        min: v[0],
        median: (v[(n - 1) / 2] + v[n / 2]) / 2.0,
        max: v[n - 1],
    }
}

/// The median of `v` (see [`spread`]).
pub fn median(v: &[f64]) -> f64 {
    spread(v).median
}

/// A target's figures, one per round it was measured in, from a bench's
/// `(target, figures)` list; `None` when it was not measured.
pub fn rounds_of<'a, T>(figures: &'a [(&str, Vec<T>)], name: &str) -> Option<&'a [T]> {
    figures
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| &f[..])
}

/// Per-round values of `pick(num) op pick(den)`, one per round both were
/// measured in. A target measured in fewer rounds was measured in the first
/// ones, so the rounds pair up by position.
fn per_round<T>(
    figures: &[(&str, Vec<T>)],
    num: &str,
    den: &str,
    pick: impl Fn(&T) -> f64,
    op: fn(f64, f64) -> f64,
) -> Option<Vec<f64>> {
    let (n, d) = (rounds_of(figures, num)?, rounds_of(figures, den)?);
    Some(n.iter().zip(d).map(|(n, d)| op(pick(n), pick(d))).collect())
}

/// Per-round ratios `num / den` of one figure, each from one round's two
/// figures; `None` when either target was not measured.
pub fn round_ratios<T>(
    figures: &[(&str, Vec<T>)],
    num: &str,
    den: &str,
    pick: impl Fn(&T) -> f64,
) -> Option<Vec<f64>> {
    per_round(figures, num, den, pick, |n, d| n / d)
}

/// The median over rounds of `num - den` for one figure (added latency,
/// say), each difference from one round; `None` when either target was not
/// measured.
pub fn median_difference<T>(
    figures: &[(&str, Vec<T>)],
    num: &str,
    den: &str,
    pick: impl Fn(&T) -> f64,
) -> Option<f64> {
    per_round(figures, num, den, pick, |n, d| n - d).map(|v| median(&v))
}

/// A bench knob: the environment variable `var` parsed as `T`; `None` when
/// it is unset or does not parse.
pub fn env_parse<T: std::str::FromStr>(var: &str) -> Option<T> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

/// The rounds a bench takes: the environment variable `var` (at least 1),
/// 3 by default.
pub fn rounds_from_env(var: &str) -> usize {
    env_parse(var).unwrap_or(3).max(1)
}

impl Spread {
    /// `min / median / max`, each with `decimals` and `unit`.
    pub fn show(self, decimals: usize, unit: &str) -> String {
        format!(
            "{:.d$}{unit} / {:.d$}{unit} / {:.d$}{unit}",
            self.min,
            self.median,
            self.max,
            d = decimals
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_counts() {
        let s = spread(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(spread(&[0.5]).show(2, "×"), "0.50× / 0.50× / 0.50×");
        let figures = [("a", vec![1, 2]), ("b", vec![3])];
        assert_eq!(rounds_of(&figures, "b"), Some(&[3][..]));
        assert_eq!(rounds_of(&figures, "c"), None);
        let figures = [("a", vec![2.0, 9.0, 4.0]), ("b", vec![1.0, 3.0])];
        let pick = |f: &f64| *f;
        assert_eq!(round_ratios(&figures, "a", "b", pick), Some(vec![2.0, 3.0]));
        assert_eq!(median_difference(&figures, "a", "b", pick), Some(3.5));
        assert_eq!(round_ratios(&figures, "a", "c", pick), None);
    }
}
