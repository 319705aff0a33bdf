//! What the operating system grants and reports about this process: the open-file limit
//! that `max_clients` must fit in, and the resident memory INFO reports.
//!
//! Every client is a socket, so `max_clients` clients need that many file descriptors plus
//! [`RESERVED_FDS`] for aft itself (the listener, the backend's files and connections, the
//! runtime). Like Redis, [`fit_max_clients`] raises the soft `RLIMIT_NOFILE` at start to what
//! `max_clients` needs, and if it cannot, lowers the effective `max_clients` to the limit minus
//! the reserve, with a warning: clients beyond it are then refused with
//! `-ERR max number of clients reached` instead of waiting in the listen backlog while every
//! `accept` fails. Unlike Redis, aft raises only the soft limit: the hard limit
//! (`ulimit -Hn`, systemd's `LimitNOFILE=`) is the administrator's ceiling, even for root.

/// File descriptors kept for aft itself, beyond one per client (Redis keeps 32 too).
pub const RESERVED_FDS: u64 = 32;

/// How `max_clients` was fitted to the open-file limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimit {
    /// The `max_clients` to enforce: the requested one, or less if the limit is too low.
    pub max_clients: usize,
    /// The soft open-file limit in force afterwards (`u64::MAX` if unlimited or unknown).
    pub open_files: u64,
    /// The soft limit before, if aft raised it.
    pub raised_from: Option<u64>,
    /// Why the limit could not be raised as far as needed, if it could not.
    pub raise_error: Option<String>,
}

/// Fits `requested` clients to the open-file limit (see the module documentation) and logs
/// what it did: raising the limit at info level, lowering `max_clients` as a warning.
///
/// # Errors
///
/// The limit leaves no descriptor for any client (it is at most [`RESERVED_FDS`]) and cannot
/// be raised.
pub fn fit_max_clients(requested: usize) -> Result<ClientLimit, String> {
    let Some((soft, hard)) = sys::open_file_limit() else {
        // Not a Unix, or getrlimit failed: nothing to fit against.
        return Ok(ClientLimit {
            max_clients: requested,
            open_files: u64::MAX,
            raised_from: None,
            raise_error: None,
        });
    };
    let limit = fit(requested, soft, hard, sys::set_soft_open_file_limit)?;
    let needed = needed_fds(requested);
    if let Some(from) = limit.raised_from {
        tracing::info!(
            "raised the open-file limit from {from} to {} for max_clients {requested}",
            limit.open_files
        );
    }
    if limit.max_clients < requested {
        let why = limit
            .raise_error
            .as_deref()
            .map(|e| format!(" (raising it failed: {e})"))
            .unwrap_or_default();
        tracing::warn!(
            "You requested maxclients of {requested} requiring at least {needed} max file \
             descriptors, but the open-file limit is {} (hard limit {}){why}: maxclients \
             has been reduced to {} to compensate for low ulimit. If you need higher \
             maxclients increase 'ulimit -n'.",
            limit.open_files,
            show_limit(hard),
            limit.max_clients,
        );
    }
    Ok(limit)
}

/// A limit as `ulimit` shows it.
fn show_limit(limit: u64) -> String {
    if limit == u64::MAX {
        "unlimited".into()
    } else {
        limit.to_string()
    }
}

/// Descriptors `clients` clients need, the reserve included.
fn needed_fds(clients: usize) -> u64 {
    u64::try_from(clients)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED_FDS)
}

/// The decision of [`fit_max_clients`], given the soft and hard limits (`u64::MAX`:
/// unlimited) and a way to set the soft limit.
fn fit(
    requested: usize,
    soft: u64,
    hard: u64,
    mut set_soft: impl FnMut(u64) -> std::io::Result<()>,
) -> Result<ClientLimit, String> {
    let needed = needed_fds(requested);
    let mut limit = ClientLimit {
        max_clients: requested,
        open_files: soft,
        raised_from: None,
        raise_error: None,
    };
    if soft >= needed {
        return Ok(limit);
    }
    let target = needed.min(hard);
    if target > soft {
        match set_soft(target) {
            Ok(()) => limit.open_files = target,
            Err(e) => {
                limit.raise_error = Some(e.to_string());
                // The system may allow less than the hard limit says (macOS caps the soft
                // limit at kern.maxfilesperproc): find the highest value it accepts. `low`
                // is in force throughout, as failed attempts change nothing.
                let (mut low, mut high) = (soft, target);
                while high - low > 1 {
                    let mid = low + (high - low) / 2;
                    if set_soft(mid).is_ok() {
                        low = mid;
                    } else {
                        high = mid;
                    }
                }
                limit.open_files = low;
            }
        }
        if limit.open_files > soft {
            limit.raised_from = Some(soft);
        }
    }
    if limit.open_files >= needed {
        return Ok(limit);
    }
    if limit.open_files <= RESERVED_FDS {
        return Err(format!(
            "the open-file limit ({}, hard limit {}) leaves no room for clients: aft keeps \
             {RESERVED_FDS} descriptors for itself and max_clients {requested} needs {needed}; \
             raise 'ulimit -n'",
            limit.open_files,
            show_limit(hard),
        ));
    }
    // Less than `requested`, which is a usize: the conversion cannot fail.
    limit.max_clients =
        usize::try_from(limit.open_files - RESERVED_FDS).unwrap_or(requested.saturating_sub(1));
    Ok(limit)
}

/// The process's resident memory in bytes, if the system tells (Linux: `/proc/self/statm`).
pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(sys::page_size()?)
}

#[cfg(unix)]
// `rlim_t` is `u64` on Linux and macOS but signed on some BSDs: the conversions stay.
#[allow(clippy::useless_conversion)]
mod sys {
    use std::sync::OnceLock;

    /// `(soft, hard)` `RLIMIT_NOFILE`, `u64::MAX` standing for unlimited.
    pub fn open_file_limit() -> Option<(u64, u64)> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        Some((to_u64(limit.rlim_cur), to_u64(limit.rlim_max)))
    }

    /// Sets the soft `RLIMIT_NOFILE` to `soft`, keeping the hard limit.
    pub fn set_soft_open_file_limit(soft: u64) -> std::io::Result<()> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `open_file_limit`.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = libc::rlim_t::try_from(soft).unwrap_or(limit.rlim_max);
        // SAFETY: `limit` is a valid `rlimit`, only read by the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn to_u64(value: libc::rlim_t) -> u64 {
        if value == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            u64::try_from(value).unwrap_or(u64::MAX)
        }
    }

    /// The memory page size in bytes.
    pub fn page_size() -> Option<u64> {
        static PAGE_SIZE: OnceLock<Option<u64>> = OnceLock::new();
        *PAGE_SIZE.get_or_init(|| {
            // SAFETY: sysconf takes no pointer and has no precondition.
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            u64::try_from(size).ok().filter(|&s| s > 0)
        })
    }
}

#[cfg(not(unix))]
mod sys {
    pub fn open_file_limit() -> Option<(u64, u64)> {
        None
    }

    pub fn set_soft_open_file_limit(_soft: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }

    pub fn page_size() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_set(_: u64) -> std::io::Result<()> {
        panic!("the limit needed no change")
    }

    #[test]
    fn a_limit_high_enough_is_left_alone() {
        let limit = fit(10_000, 20_000, 20_000, unreachable_set).unwrap();
        assert_eq!(limit.max_clients, 10_000);
        assert_eq!(limit.open_files, 20_000);
        assert_eq!(limit.raised_from, None);
        let limit = fit(10_000, 10_032, 10_032, unreachable_set).unwrap();
        assert_eq!(limit.max_clients, 10_000);
    }

    #[test]
    fn the_soft_limit_is_raised_up_to_the_hard_limit() {
        let mut asked = None;
        let limit = fit(10_000, 1_024, u64::MAX, |n| {
            asked = Some(n);
            Ok(())
        })
        .unwrap();
        assert_eq!(asked, Some(10_032));
        assert_eq!(limit.max_clients, 10_000);
        assert_eq!(limit.open_files, 10_032);
        assert_eq!(limit.raised_from, Some(1_024));
        // Only up to the hard limit; max_clients is lowered to fit it.
        let mut asked = None;
        let limit = fit(10_000, 1_024, 4_096, |n| {
            asked = Some(n);
            Ok(())
        })
        .unwrap();
        assert_eq!(asked, Some(4_096));
        assert_eq!(limit.max_clients, 4_096 - 32);
        assert_eq!(limit.open_files, 4_096);
    }

    #[test]
    fn max_clients_is_lowered_when_the_limit_cannot_be_raised() {
        let limit = fit(10_000, 64, 64, unreachable_set).unwrap();
        assert_eq!(limit.max_clients, 32);
        assert_eq!(limit.raise_error, None);
        let limit = fit(10_000, 256, 20_000, |_| {
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        })
        .unwrap();
        assert_eq!(limit.max_clients, 256 - 32);
        assert_eq!(limit.open_files, 256);
        assert_eq!(limit.raised_from, None);
        assert!(limit.raise_error.is_some());
    }

    #[test]
    fn the_limit_is_raised_as_far_as_the_system_allows() {
        // Like macOS: an unlimited hard limit, but no soft limit above 5000.
        let mut attempts = 0;
        let limit = fit(10_000, 256, u64::MAX, |n| {
            attempts += 1;
            if n <= 5_000 {
                Ok(())
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::InvalidInput))
            }
        })
        .unwrap();
        assert_eq!(limit.open_files, 5_000);
        assert_eq!(limit.max_clients, 5_000 - 32);
        assert_eq!(limit.raised_from, Some(256));
        assert!(attempts < 20, "{attempts} attempts");
    }

    #[test]
    fn a_limit_that_leaves_no_room_for_clients_is_an_error() {
        let error = fit(10, 32, 32, unreachable_set).unwrap_err();
        assert!(error.contains("leaves no room for clients"), "{error}");
        assert!(fit(10, 33, 33, unreachable_set).unwrap().max_clients == 1);
        // A limit that is enough anyway is not an error.
        assert_eq!(fit(1, 33, 33, unreachable_set).unwrap().max_clients, 1);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn resident_memory_is_known_on_linux() {
        let rss = resident_memory().unwrap();
        assert!(rss > 1 << 20, "{rss}");
    }
}
