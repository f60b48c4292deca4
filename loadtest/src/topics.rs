//! Which topics each subscriber listens to and each publisher publishes to.
//!
//! Distributions over `K` topics (indices `0..K`, named `<prefix><index>`):
//! - `hot`: a fraction of the subscribers (`--hot-fraction`) take topic 0, the rest spread
//!   evenly over topics 1..K (with K = 1, everyone is on topic 0: pure fan-out);
//! - `uniform`: subscriber i takes topic i mod K (exactly balanced);
//! - `zipf`: topic r is drawn with probability proportional to 1/(r+1)^s (seeded, so a run
//!   is reproducible).
//!
//! A subscriber with several topics (`--topics-per-subscriber`) gets distinct ones. Every
//! publisher cycles through all K topics, starting at its own offset, so each topic gets
//! the same message rate whatever its number of subscribers.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// How subscribers are spread over topics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Distribution {
    Hot { fraction: f64 },
    Uniform,
    Zipf { exponent: f64 },
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hot { fraction } => write!(f, "hot ({:.0}% on topic 0)", fraction * 100.0),
            Self::Uniform => f.write_str("uniform"),
            Self::Zipf { exponent } => write!(f, "zipf (s = {exponent})"),
        }
    }
}

/// The topic name of index `i`.
pub fn name(prefix: &str, i: u32) -> String {
    format!("{prefix}{i}")
}

/// Topic lists for `subscribers` subscribers, each sorted and of `per_sub` distinct topics
/// (fewer only when K < per_sub).
pub fn assign(subscribers: usize, topics: u32, per_sub: usize, dist: Distribution, seed: u64) -> Vec<Vec<u32>> {
    let k = topics.max(1);
    let per_sub = per_sub.clamp(1, k as usize);
    let mut rng = SmallRng::seed_from_u64(seed);
    let cdf = match dist {
        Distribution::Zipf { exponent } => {
            let mut acc = 0.0;
            let v: Vec<f64> = (0..k)
                .map(|r| {
                    acc += 1.0 / ((r + 1) as f64).powf(exponent);
                    acc
                })
                .collect();
            v.into_iter().map(|x| x / acc).collect()
        }
        _ => Vec::new(),
    };
    let hot_count = match dist {
        Distribution::Hot { fraction } if k > 1 => (subscribers as f64 * fraction.clamp(0.0, 1.0)).round() as usize,
        Distribution::Hot { .. } => subscribers,
        _ => 0,
    };
    (0..subscribers)
        .map(|i| {
            let mut mine: Vec<u32> = Vec::with_capacity(per_sub);
            let mut j = 0u64;
            while mine.len() < per_sub {
                let t = match dist {
                    // Unlucky draws or too few topics of the preferred kind: take the next free one.
                    _ if j >= 64 * per_sub as u64 => j % k as u64,
                    Distribution::Uniform => ((i * per_sub) as u64 + j) % k as u64,
                    Distribution::Hot { .. } if mine.is_empty() && i < hot_count => 0,
                    Distribution::Hot { .. } if k == 1 => 0,
                    Distribution::Hot { .. } => 1 + ((i * per_sub) as u64 + j) % (k as u64 - 1),
                    Distribution::Zipf { .. } => {
                        let x: f64 = rng.random();
                        cdf.partition_point(|&c| c < x).min(k as usize - 1) as u64
                    }
                } as u32;
                j += 1;
                if !mine.contains(&t) {
                    mine.push(t);
                }
            }
            mine.sort_unstable();
            mine
        })
        .collect()
}

/// Subscriber count per topic index.
pub fn subscribers_per_topic(assignment: &[Vec<u32>], topics: u32) -> Vec<u64> {
    let mut per = vec![0u64; topics.max(1) as usize];
    for list in assignment {
        for &t in list {
            per[t as usize] += 1;
        }
    }
    per
}

/// The order in which publisher `p` of `publishers` goes through `topics` topics.
pub fn publisher_cycle(p: usize, publishers: usize, topics: u32) -> Vec<u32> {
    let k = topics.max(1) as usize;
    let offset = p * k / publishers.max(1);
    (0..k).map(|i| ((offset + i) % k) as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_balanced_and_distinct() {
        let a = assign(10, 5, 2, Distribution::Uniform, 1);
        assert_eq!(a[0], vec![0, 1]);
        assert_eq!(a[3], vec![1, 2]);
        assert_eq!(subscribers_per_topic(&a, 5), vec![4, 4, 4, 4, 4]);
    }

    #[test]
    fn hot_puts_a_fraction_on_topic_zero() {
        let a = assign(10, 3, 1, Distribution::Hot { fraction: 0.6 }, 1);
        assert_eq!(subscribers_per_topic(&a, 3), vec![6, 2, 2]);
        let all = assign(7, 1, 1, Distribution::Hot { fraction: 0.1 }, 1);
        assert_eq!(subscribers_per_topic(&all, 1), vec![7]);
    }

    #[test]
    fn zipf_favours_low_ranks_and_is_reproducible() {
        let a = assign(2000, 50, 1, Distribution::Zipf { exponent: 1.0 }, 7);
        let per = subscribers_per_topic(&a, 50);
        assert!(per[0] > per[1] && per[1] > per[10], "{per:?}");
        assert_eq!(a, assign(2000, 50, 1, Distribution::Zipf { exponent: 1.0 }, 7));
        let many = assign(5, 3, 3, Distribution::Zipf { exponent: 3.0 }, 7);
        assert!(many.iter().all(|l| l == &vec![0, 1, 2]));
        let tight = assign(3, 2, 2, Distribution::Hot { fraction: 0.0 }, 7);
        assert!(tight.iter().all(|l| l == &vec![0, 1]));
    }

    #[test]
    fn publishers_start_at_their_own_offset() {
        assert_eq!(publisher_cycle(0, 2, 4), vec![0, 1, 2, 3]);
        assert_eq!(publisher_cycle(1, 2, 4), vec![2, 3, 0, 1]);
        assert_eq!(publisher_cycle(3, 4, 1), vec![0]);
    }
}
