//! Guest memory a frontend can pull from under the daemon. Each region the frontend hands
//! over (SET_MEM_TABLE) is a mapping of a file it owns; a page past the end of that file
//! raises SIGBUS when touched, which by default ends the daemon. Two defences:
//! - [`check_regions`]: a region larger than its file is refused when it arrives;
//! - [`install`] / [`watch`]: if the file is truncated later, a SIGBUS on a page of a
//!   watched region replaces that page with an anonymous zero page, so the access completes,
//!   and counts the fault ([`faults`]); the vhost layer then drops the connection, since
//!   nothing that frontend sends can be trusted any more. A SIGBUS anywhere else goes to the
//!   handler installed before (Rust's), so real faults still end the process.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// How many mappings are watched: a memory table has at most 8 regions (vhost-user without
/// CONFIGURE_MEM_SLOTS), plus the in-flight region; the oldest are forgotten first, and by
/// then they are unmapped.
const WATCHED: usize = 64;

/// Watched mappings as `[start, end)` host addresses; `end == 0` marks a free or changing slot.
static STARTS: [AtomicUsize; WATCHED] = [const { AtomicUsize::new(0) }; WATCHED];
static ENDS: [AtomicUsize; WATCHED] = [const { AtomicUsize::new(0) }; WATCHED];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
/// Guest pages replaced after a SIGBUS, since the process started.
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// The SIGBUS action before ours, for faults that are not on guest memory.
static PREVIOUS: OnceLock<SavedAction> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

struct SavedAction(libc::sigaction);

// SAFETY: a sigaction is plain data (a handler address, a signal mask and flags); it is
// written once before the handler that reads it is installed, and never changed.
unsafe impl Sync for SavedAction {}
// SAFETY: as above: plain data with no thread affinity.
unsafe impl Send for SavedAction {}

/// Why a memory table is refused.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error(
        "memory region at guest address {gpa:#x} ({len} bytes at file offset {offset}) \
         extends past the end of its file ({file_len} bytes)"
    )]
    PastEndOfFile {
        gpa: u64,
        len: u64,
        offset: u64,
        file_len: u64,
    },
    #[error("memory region at guest address {gpa:#x}: cannot read its file's size: {err}")]
    Stat { gpa: u64, err: io::Error },
}

/// Refuses a memory table with a region that maps past the end of a regular file (memfd,
/// tmpfs, hugetlbfs): touching such a page raises SIGBUS. Other files (device memory)
/// have no meaningful size and are taken as they are.
pub fn check_regions(mem: &GuestMemoryMmap<()>) -> Result<(), RegionError> {
    for region in mem.iter() {
        let Some(fo) = region.file_offset() else {
            continue;
        };
        let gpa = region.start_addr().0;
        let meta = fo
            .file()
            .metadata()
            .map_err(|err| RegionError::Stat { gpa, err })?;
        if !meta.file_type().is_file() {
            continue;
        }
        let len = region.len();
        let offset = fo.start();
        if offset.checked_add(len).is_none_or(|end| end > meta.len()) {
            return Err(RegionError::PastEndOfFile {
                gpa,
                len,
                offset,
                file_len: meta.len(),
            });
        }
    }
    Ok(())
}

/// Installs the SIGBUS handler (once per process; later calls return the first result).
pub fn install() -> io::Result<()> {
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags);
        // sigaction(2) writes the current action into it and reads nothing else.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries the current one into `old`.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
            return Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL));
        }
        let _ = PREVIOUS.set(SavedAction(old));
        // SAFETY: as above, an all-zero sigaction is valid; the fields are then set.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigbus
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `act` is fully initialised; the handler only does async-signal-safe work
        // (atomics, mmap, sigaction, calling the previous handler).
        if unsafe { libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL));
        }
        Ok(())
    });
    result.map_err(io::Error::from_raw_os_error)
}

/// Watches every region of `mem` (call before the daemon touches them).
pub fn watch(mem: &GuestMemoryMmap<()>) {
    for region in mem.iter() {
        if let Ok(len) = usize::try_from(region.len()) {
            watch_range(region.as_ptr() as usize, len);
        }
    }
}

/// Watches one shared mapping of a file the frontend owns, `len` bytes at `start`.
pub fn watch_range(start: usize, len: usize) {
    let Some(end) = start.checked_add(len) else {
        return;
    };
    let slot = NEXT_SLOT.fetch_add(1, Ordering::AcqRel) % WATCHED;
    // A reader sees the slot empty (end 0) or whole, never a start with a stale end.
    ENDS[slot].store(0, Ordering::Release);
    STARTS[slot].store(start, Ordering::Release);
    ENDS[slot].store(end, Ordering::Release);
}

/// How many guest pages were replaced after a SIGBUS since the process started.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Acquire)
}

fn watched_range(addr: usize) -> Option<(usize, usize)> {
    (0..WATCHED).find_map(|i| {
        let end = ENDS[i].load(Ordering::Acquire);
        let start = STARTS[i].load(Ordering::Acquire);
        (end != 0 && start <= addr && addr < end).then_some((start, end))
    })
}

/// Maps an anonymous zero page over the faulting page, trying the base page size and the
/// huge page sizes (a hugetlbfs mapping cannot be split below its page size). Only pages
/// wholly inside the watched range are replaced.
fn replace_with_zero_page(addr: usize, start: usize, end: usize) -> bool {
    const SIZES: [usize; 3] = [4096, 2 << 20, 1 << 30];
    SIZES.iter().any(|&size| {
        let page = addr & !(size - 1);
        if page < start || page.checked_add(size).is_none_or(|e| e > end) {
            return false;
        }
        // SAFETY: the range is a page of a guest memory mapping this process made (it lies
        // inside a watched region); replacing it with anonymous memory keeps the address
        // range mapped, so every pointer into it stays valid. The region's own unmap later
        // removes this page with the rest.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        p != libc::MAP_FAILED
    })
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some((start, end)) = watched_range(addr) {
        if replace_with_zero_page(addr, start, end) {
            FAULTS.fetch_add(1, Ordering::AcqRel);
            return;
        }
    }
    forward(sig, info, ctx);
}

/// Hands a fault that is not ours to the previous handler, or restores the default action
/// so that the faulting access, executed again on return, ends the process.
fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let previous = PREVIOUS.get().map(|a| &a.0);
    match previous {
        Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: with SA_SIGINFO the saved address is a three-argument handler.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO the saved address is a one-argument handler.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
            let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: `dfl` is a valid action; sigaction is async-signal-safe.
            unsafe { libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::io::FromRawFd;
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

    fn memfd(len: u64) -> File {
        // SAFETY: a valid C string name; no other preconditions.
        let fd = unsafe { libc::memfd_create(c"guest-fault-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: a fresh descriptor owned by nothing else.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).expect("size memfd");
        f
    }

    fn map(file: &File, len: usize) -> GuestMemoryMmap<()> {
        let fo = FileOffset::new(file.try_clone().expect("dup"), 0);
        GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), len, Some(fo))])
            .expect("map memfd")
    }

    #[test]
    fn a_region_larger_than_its_file_is_refused() {
        let f = memfd(1 << 20);
        let mem = map(&f, 2 << 20);
        let err = check_regions(&mem).expect_err("past end of file");
        assert!(
            err.to_string().contains("past the end of its file"),
            "{err}"
        );
        let ok = map(&f, 1 << 20);
        check_regions(&ok).expect("a region within its file");
    }
}
