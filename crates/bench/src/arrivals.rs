//! Request arrival times: a Poisson process (`burstiness` 1), gamma-distributed intervals
//! (other burstiness values, same mean rate), evenly spaced (`burstiness` ∞), or everything at
//! once (`rate` ∞). Matches `vllm bench serve`'s semantics, including its rescaling of the
//! schedule so that N requests span exactly N / rate seconds whatever the seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::error::{BenchError, Result};

/// How request send times are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrivalProcess {
    /// Mean requests per second; `f64::INFINITY` sends every request at time 0.
    pub rate: f64,
    /// Gamma shape: 1 is Poisson, below 1 burstier, above 1 more regular, ∞ evenly spaced.
    pub burstiness: f64,
}

/// Draws inter-arrival intervals (seconds) of an [`ArrivalProcess`].
pub struct IntervalSampler {
    kind: SamplerKind,
}

enum SamplerKind {
    Zero,
    Constant(f64),
    Gamma(Gamma<f64>),
}

impl ArrivalProcess {
    pub fn new(rate: f64, burstiness: f64) -> Result<Self> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(BenchError::invalid(format!(
                "--request-rate must be positive or inf, got {rate}"
            )));
        }
        if burstiness.is_nan() || burstiness <= 0.0 {
            return Err(BenchError::invalid(format!(
                "--burstiness must be positive, got {burstiness}"
            )));
        }
        Ok(Self { rate, burstiness })
    }

    pub fn sampler(&self) -> Result<IntervalSampler> {
        let kind = if self.rate.is_infinite() {
            SamplerKind::Zero
        } else if self.burstiness.is_infinite() {
            SamplerKind::Constant(1.0 / self.rate)
        } else {
            // Mean of Gamma(k, θ) is kθ: θ = 1 / (rate · k) keeps the mean at 1 / rate, and the
            // coefficient of variation is 1 / √k.
            let scale = 1.0 / (self.rate * self.burstiness);
            let gamma = Gamma::new(self.burstiness, scale)
                .map_err(|e| BenchError::invalid(format!("gamma arrivals: {e}")))?;
            SamplerKind::Gamma(gamma)
        };
        Ok(IntervalSampler { kind })
    }

    /// Send offsets (seconds from the start) of `n` requests, non-decreasing, reproducible from
    /// `seed`. With a finite rate the last offset is rescaled to exactly `n / rate`, so that
    /// throughput at a given rate does not drift by a percent or two from seed to seed.
    pub fn schedule(&self, n: usize, seed: u64) -> Result<Vec<f64>> {
        let sampler = self.sampler()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut offsets = Vec::with_capacity(n);
        let mut t = 0.0;
        for _ in 0..n {
            t += sampler.sample(&mut rng);
            offsets.push(t);
        }
        if let Some(&last) = offsets.last() {
            if self.rate.is_finite() && last > 0.0 {
                let factor = (n as f64 / self.rate) / last;
                offsets.iter_mut().for_each(|o| *o *= factor);
            }
        }
        Ok(offsets)
    }

    /// Words for the report, e.g. "Poisson process".
    pub fn describe(&self) -> &'static str {
        if self.rate.is_infinite() {
            "all at once"
        } else if self.burstiness.is_infinite() {
            "evenly spaced"
        } else if self.burstiness == 1.0 {
            "Poisson process"
        } else {
            "gamma distribution"
        }
    }
}

impl IntervalSampler {
    /// One interval in seconds.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match &self.kind {
            SamplerKind::Zero => 0.0,
            SamplerKind::Constant(c) => *c,
            SamplerKind::Gamma(g) => g.sample(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_and_cv(process: ArrivalProcess, n: usize, seed: u64) -> (f64, f64) {
        let sampler = process.sampler().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let xs: Vec<f64> = (0..n).map(|_| sampler.sample(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        (mean, var.sqrt() / mean)
    }

    fn within(actual: f64, expected: f64, rel: f64) -> bool {
        ((actual - expected) / expected).abs() <= rel
    }

    #[test]
    fn poisson_intervals_have_the_mean_rate_and_unit_cv() {
        let (mean, cv) = mean_and_cv(ArrivalProcess::new(4.0, 1.0).unwrap(), 10_000, 1);
        assert!(within(mean, 0.25, 0.05), "mean {mean}");
        assert!(within(cv, 1.0, 0.05), "cv {cv}");
    }

    #[test]
    fn gamma_intervals_keep_the_rate_and_have_cv_one_over_sqrt_burstiness() {
        for (burstiness, seed) in [(0.25, 2), (0.5, 3), (4.0, 4)] {
            let (mean, cv) =
                mean_and_cv(ArrivalProcess::new(10.0, burstiness).unwrap(), 10_000, seed);
            assert!(
                within(mean, 0.1, 0.05),
                "burstiness {burstiness}: mean {mean}"
            );
            let expected_cv = 1.0 / f64::sqrt(burstiness);
            assert!(
                within(cv, expected_cv, 0.05),
                "burstiness {burstiness}: cv {cv}, expected {expected_cv}"
            );
        }
    }

    #[test]
    fn infinite_burstiness_is_evenly_spaced_and_infinite_rate_is_all_at_once() {
        let even = ArrivalProcess::new(5.0, f64::INFINITY).unwrap();
        let (mean, cv) = mean_and_cv(even, 100, 0);
        assert!(within(mean, 0.2, 1e-9) && cv < 1e-9);
        let burst = ArrivalProcess::new(f64::INFINITY, 1.0).unwrap();
        assert_eq!(burst.schedule(5, 0).unwrap(), vec![0.0; 5]);
    }

    #[test]
    fn schedules_are_rescaled_to_n_over_rate_and_reproducible() {
        let p = ArrivalProcess::new(2.0, 1.0).unwrap();
        let a = p.schedule(100, 7).unwrap();
        assert!((a[99] - 50.0).abs() < 1e-9, "last {}", a[99]);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(a, p.schedule(100, 7).unwrap());
        assert_ne!(a, p.schedule(100, 8).unwrap());
    }

    #[test]
    fn bad_rates_and_burstiness_are_rejected() {
        assert!(ArrivalProcess::new(0.0, 1.0).is_err());
        assert!(ArrivalProcess::new(-1.0, 1.0).is_err());
        assert!(ArrivalProcess::new(f64::NAN, 1.0).is_err());
        assert!(ArrivalProcess::new(1.0, 0.0).is_err());
    }
}
