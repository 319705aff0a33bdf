//! What [`EmbeddedStorage::open`](super::EmbeddedStorage::open) can be told: durability and
//! the size of redb's page cache.

/// [`EmbeddedOptions::cache_bytes`] by default: a quarter of the default 256 MiB budget, as
/// [`CacheBudget::split`] gives.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Smallest page cache [`CacheBudget::split`] gives redb out of a budget that allows it.
pub const MIN_PAGE_CACHE_BYTES: usize = 4 << 20;

/// Options of [`EmbeddedStorage::open`](super::EmbeddedStorage::open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// `true` (the default): every acknowledged commit has been `fsync`ed. `false`: commits are
    /// acknowledged once applied, and flushed within
    /// [`NON_DURABLE_FLUSH_INTERVAL`](super::NON_DURABLE_FLUSH_INTERVAL) (like Redis's
    /// `appendfsync everysec`).
    pub fsync: bool,
    /// Bytes of redb's page cache ([`redb::Builder::set_cache_size`]): pages read, and pages
    /// written but not yet on disk (at most half of it), are held in memory up to this size.
    /// redb's own default is 1 GiB; this one is [`DEFAULT_CACHE_BYTES`]. See [`CacheBudget`]
    /// for sharing one budget with the engine's value cache.
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    /// `fsync: true`, `cache_bytes:` [`DEFAULT_CACHE_BYTES`].
    fn default() -> Self {
        EmbeddedOptions {
            fsync: true,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// One memory budget (the `cache_mb` setting) shared by redb's page cache and the engine's
/// value cache, so that the two together stay within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheBudget {
    /// Bytes for redb's page cache: [`EmbeddedOptions::cache_bytes`].
    pub page_cache: usize,
    /// Bytes for the engine's value cache: `EngineConfig::cache_bytes`.
    pub value_cache: usize,
}

impl CacheBudget {
    /// Splits `total` bytes: a quarter goes to redb's page cache, but at least
    /// [`MIN_PAGE_CACHE_BYTES`] (all of `total` if it is smaller); the rest goes to the
    /// value cache. The two always add up to `total`.
    ///
    /// The engine caches the values it serves, so redb's cache mostly holds the pages of the
    /// tree above them and the pages being written: a quarter is plenty.
    pub fn split(total: usize) -> CacheBudget {
        let page_cache = (total / 4).max(MIN_PAGE_CACHE_BYTES).min(total);
        CacheBudget {
            page_cache,
            value_cache: total - page_cache,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_budget_gives_redb_a_quarter() {
        let split = |total| {
            let b = CacheBudget::split(total);
            assert_eq!(b.page_cache + b.value_cache, total);
            (b.page_cache, b.value_cache)
        };
        assert_eq!(split(256 << 20), (64 << 20, 192 << 20));
        assert_eq!(split(256 << 20).0, DEFAULT_CACHE_BYTES);
        assert_eq!(split(8 << 20), (MIN_PAGE_CACHE_BYTES, 4 << 20));
        assert_eq!(split(1 << 20), (1 << 20, 0));
        assert_eq!(split(0), (0, 0));
    }
}
