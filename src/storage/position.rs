//! Positions in a commit log kept in shards (see [`LogPos`]).

use std::fmt;
use std::sync::Arc;

/// A position in a shared backend's commit log, which may be kept in several shards (a
/// Redis Cluster spreads it over its masters): one position per shard, each counting the
/// records created in that shard. A shard the position does not name is at 0.
///
/// Positions are compared shard by shard: `a` [covers](LogPos::covers) `b` when every shard
/// of `a` is at or past the same shard of `b`. Cloning is cheap (a shared slice), so that a
/// snapshot can keep the position it was taken at.
#[derive(Clone, Default)]
pub struct LogPos(Option<Arc<[u64]>>);

impl PartialEq for LogPos {
    /// Equal in every shard (a shard left out is at 0).
    fn eq(&self, other: &LogPos) -> bool {
        self.covers(other) && other.covers(self)
    }
}

impl Eq for LogPos {}

impl LogPos {
    /// The position with these per-shard positions (shard 0 first).
    pub fn new(shards: Vec<u64>) -> LogPos {
        if shards.iter().all(|p| *p == 0) {
            LogPos(None)
        } else {
            LogPos(Some(shards.into()))
        }
    }

    /// A log of one shard at `pos`.
    pub fn single(pos: u64) -> LogPos {
        LogPos::new(vec![pos])
    }

    /// The position in `shard` (0 for a shard it does not name).
    pub fn get(&self, shard: usize) -> u64 {
        self.0
            .as_deref()
            .and_then(|s| s.get(shard))
            .copied()
            .unwrap_or(0)
    }

    /// How many shards it names (trailing shards at 0 may be left out).
    pub fn shards(&self) -> usize {
        self.0.as_deref().map_or(0, <[u64]>::len)
    }

    /// Whether every shard is at 0.
    pub fn is_zero(&self) -> bool {
        self.0.is_none()
    }

    /// The same position with `shard` at `pos`.
    pub fn with(&self, shard: usize, pos: u64) -> LogPos {
        let mut shards: Vec<u64> = (0..self.shards().max(shard + 1))
            .map(|s| self.get(s))
            .collect();
        shards[shard] = pos;
        LogPos::new(shards)
    }

    /// Whether every shard of `self` is at or past the same shard of `other`.
    pub fn covers(&self, other: &LogPos) -> bool {
        (0..self.shards().max(other.shards())).all(|s| self.get(s) >= other.get(s))
    }

    fn zip(&self, other: &LogPos, f: fn(u64, u64) -> u64) -> LogPos {
        LogPos::new(
            (0..self.shards().max(other.shards()))
                .map(|s| f(self.get(s), other.get(s)))
                .collect(),
        )
    }

    /// The greater of the two in every shard.
    pub fn max(&self, other: &LogPos) -> LogPos {
        if self.covers(other) {
            return self.clone();
        }
        self.zip(other, u64::max)
    }

    /// The lesser of the two in every shard.
    pub fn min(&self, other: &LogPos) -> LogPos {
        if other.covers(self) {
            return self.clone();
        }
        self.zip(other, u64::min)
    }

    /// Parses [`LogPos`]'s `Display` form: per-shard positions joined by `.`.
    pub fn parse(text: &str) -> Option<LogPos> {
        text.split('.')
            .map(|p| p.parse::<u64>().ok())
            .collect::<Option<Vec<u64>>>()
            .map(LogPos::new)
    }
}

impl fmt::Display for LogPos {
    /// Per-shard positions joined by `.` (`0` when every shard is at 0): no spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_deref() {
            None => f.write_str("0"),
            Some(shards) => {
                for (i, p) in shards.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for LogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogPos({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::LogPos;

    #[test]
    fn shards_compare_one_by_one() {
        let a = LogPos::new(vec![3, 1]);
        let b = LogPos::new(vec![2, 2]);
        assert!(!a.covers(&b) && !b.covers(&a));
        assert_eq!(a.max(&b), LogPos::new(vec![3, 2]));
        assert_eq!(a.min(&b), LogPos::new(vec![2, 1]));
        assert!(a.covers(&LogPos::default()));
        assert!(!LogPos::default().covers(&a));
        assert!(LogPos::new(vec![3, 1, 0]).covers(&a) && a.covers(&LogPos::new(vec![3, 1, 0])));
        assert_eq!(a.with(3, 7), LogPos::new(vec![3, 1, 0, 7]));
        assert_eq!(a.get(9), 0);
    }

    #[test]
    fn text_form_round_trips() {
        for pos in [
            LogPos::default(),
            LogPos::single(42),
            LogPos::new(vec![0, 5, 0]),
        ] {
            assert_eq!(LogPos::parse(&pos.to_string()).as_ref(), Some(&pos));
        }
        assert_eq!(LogPos::default().to_string(), "0");
        assert_eq!(LogPos::new(vec![1, 2]).to_string(), "1.2");
        assert_eq!(LogPos::parse("1.x"), None);
        assert_eq!(LogPos::parse(""), None);
    }
}
