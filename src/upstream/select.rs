//! Node schedules: which node index comes next. Built once per membership change, then
//! read by many callers through one atomic cursor.

/// A cyclic sequence of node indices.
#[derive(Clone, Debug, Default)]
pub struct Schedule(Vec<u16>);

impl Schedule {
    /// Every node once.
    pub fn round_robin(nodes: usize) -> Schedule {
        Schedule((0..nodes as u16).collect())
    }

    /// nginx's smooth weighted round-robin, unrolled: each node appears `weight` times per
    /// cycle, interleaved rather than in runs.
    pub fn smooth_weighted(weights: &[u32]) -> Schedule {
        let gcd = weights.iter().copied().fold(0, gcd);
        if gcd == 0 {
            return Schedule::default();
        }
        let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / gcd)).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += w;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best as u16);
        }
        Schedule(order)
    }

    /// The whole cycle once, starting at position `start` (modulo its length).
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        let len = self.0.len().max(1);
        (0..self.0.len()).map(move |i| usize::from(self.0[(start + i) % len]))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_is_proportional_and_interleaved() {
        let s = Schedule::smooth_weighted(&[5, 1, 1]);
        let cycle: Vec<usize> = s.iter_from(0).collect();
        assert_eq!(cycle.len(), 7);
        assert_eq!(cycle.iter().filter(|&&i| i == 0).count(), 5);
        // nginx's example order for 5,1,1: a a b a c a a
        assert_eq!(cycle, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_reduce_by_gcd() {
        let s = Schedule::smooth_weighted(&[200, 100]);
        assert_eq!(s.iter_from(0).count(), 3);
    }

    #[test]
    fn round_robin_visits_each_once_from_any_start() {
        let s = Schedule::round_robin(3);
        assert_eq!(s.iter_from(4).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(Schedule::round_robin(0).iter_from(9).count(), 0);
    }
}
