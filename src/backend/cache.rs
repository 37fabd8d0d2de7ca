//! QEMU's cache modes and what each one means for opening and flushing a backing file.

use std::fmt;
use std::str::FromStr;

/// How a LUN's writes reach stable storage, with exactly QEMU's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Host page cache; data is durable after SYNCHRONIZE CACHE (or a FUA write).
    Writeback,
    /// Host page cache with O_DSYNC: every write is durable when acknowledged.
    Writethrough,
    /// O_DIRECT, bypassing the host page cache; the device's own cache is flushed on
    /// SYNCHRONIZE CACHE.
    #[default]
    None,
    /// O_DIRECT | O_DSYNC: every write is durable when acknowledged.
    Directsync,
    /// Host page cache; flushes and FUA are ignored (data may be lost on a host crash).
    Unsafe,
}

impl CacheMode {
    pub const NAMES: &'static str = "writeback, writethrough, none, directsync, unsafe";

    /// Extra `open(2)` flags for the backing file.
    pub fn open_flags(self) -> libc::c_int {
        match self {
            CacheMode::Writeback | CacheMode::Unsafe => 0,
            CacheMode::Writethrough => libc::O_DSYNC,
            CacheMode::None => libc::O_DIRECT,
            CacheMode::Directsync => libc::O_DIRECT | libc::O_DSYNC,
        }
    }

    /// The WCE bit the guest sees: a volatile cache exists between its writes and the
    /// medium unless every write is already synchronous.
    pub fn write_cache_enabled(self) -> bool {
        !matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }

    /// Whether SYNCHRONIZE CACHE and FUA must reach the medium.
    pub fn honours_flush(self) -> bool {
        self != CacheMode::Unsafe
    }

    /// Whether every write is already synchronous (O_DSYNC), so FUA needs nothing extra.
    pub fn writes_are_synchronous(self) -> bool {
        self.open_flags() & libc::O_DSYNC != 0
    }

    /// Whether buffers handed to the kernel must honour O_DIRECT alignment.
    pub fn is_direct(self) -> bool {
        self.open_flags() & libc::O_DIRECT != 0
    }
}

impl FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "writeback" => Ok(CacheMode::Writeback),
            "writethrough" => Ok(CacheMode::Writethrough),
            "none" => Ok(CacheMode::None),
            "directsync" => Ok(CacheMode::Directsync),
            "unsafe" => Ok(CacheMode::Unsafe),
            other => Err(format!(
                "unknown cache mode '{other}' (expected one of {})",
                CacheMode::NAMES
            )),
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::None => "none",
            CacheMode::Directsync => "directsync",
            CacheMode::Unsafe => "unsafe",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_follow_qemu() {
        assert_eq!(CacheMode::Writeback.open_flags(), 0);
        assert_eq!(CacheMode::Unsafe.open_flags(), 0);
        assert_eq!(CacheMode::Writethrough.open_flags(), libc::O_DSYNC);
        assert_eq!(CacheMode::None.open_flags(), libc::O_DIRECT);
        assert_eq!(
            CacheMode::Directsync.open_flags(),
            libc::O_DIRECT | libc::O_DSYNC
        );
    }

    #[test]
    fn wce_reports_the_truth() {
        assert!(CacheMode::Writeback.write_cache_enabled());
        assert!(CacheMode::None.write_cache_enabled());
        assert!(CacheMode::Unsafe.write_cache_enabled());
        assert!(!CacheMode::Writethrough.write_cache_enabled());
        assert!(!CacheMode::Directsync.write_cache_enabled());
    }

    #[test]
    fn only_unsafe_ignores_flushes() {
        for m in [
            CacheMode::Writeback,
            CacheMode::Writethrough,
            CacheMode::None,
            CacheMode::Directsync,
        ] {
            assert!(m.honours_flush(), "{m}");
        }
        assert!(!CacheMode::Unsafe.honours_flush());
    }

    #[test]
    fn parse_round_trips_and_rejects_unknown() {
        for name in ["writeback", "writethrough", "none", "directsync", "unsafe"] {
            let m: CacheMode = name.parse().expect("known mode");
            assert_eq!(m.to_string(), name);
        }
        let err = "fast".parse::<CacheMode>().unwrap_err();
        assert!(err.contains("fast") && err.contains("writeback"));
        assert_eq!(CacheMode::default(), CacheMode::None);
    }
}
