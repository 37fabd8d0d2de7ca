//! A guest-side check for live migration (tests/qemu/run-migration-e2e.sh): does every
//! page the device writes by DMA reach the destination?
//!
//! A page that only the device writes (the guest's CPU never touches it after QEMU first
//! copied it) is copied again only if the device marks it in the dirty log. Kernel buffers
//! are a poor probe for that: the page allocator hands out pages the CPU wrote a moment
//! before, and the migration copies those again anyway. This program holds its own buffer
//! instead: it fills it with a pattern long before the migration (one CPU write per page),
//! locks it, then reads the disk into it with O_DIRECT, one MiB at a time at a steady pace
//! over the migration, so the device alone writes those pages. When told to verify (a file
//! appears), it reads the same range again into a second buffer and compares: a page still
//! holding the pattern, or old data, on the destination is a page the device wrote but
//! did not log.
//!
//! Usage: guest_dma_hold <device> <offset MiB> <MiB> <pace ms> <go file> <verify file>
//! Prints `dma-hold: ...` lines; exits 0 when every page matches, 1 on a mismatch, 2 on
//! an error. Every wait is bounded (10 minutes).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
const PATTERN: u8 = 0x5a;
const WAIT_BOUND: Duration = Duration::from_secs(600);

/// Anonymous memory, page-aligned (O_DIRECT needs it), locked, never merged into huge
/// pages (a collapse would copy it with the CPU).
struct Buffer {
    ptr: *mut u8,
    len: usize,
}

impl Buffer {
    fn new(len: usize) -> io::Result<Buffer> {
        // SAFETY: an anonymous private mapping with no address hint; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ptr/len are the mapping just made. Failures only weaken the check.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE);
        }
        Ok(Buffer {
            ptr: ptr.cast(),
            len,
        })
    }

    fn lock(&self) -> io::Result<()> {
        // SAFETY: the range is this buffer's mapping.
        if unsafe { libc::mlock(self.ptr.cast(), self.len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is len bytes, readable and writable, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmaps this buffer's own mapping once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

fn wait_for(path: &Path) -> io::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > WAIT_BOUND {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} never appeared", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn read_range(dev: &File, buf: &mut [u8], offset: u64, pace: Duration) -> io::Result<()> {
    for (i, chunk) in buf.chunks_mut(MIB).enumerate() {
        dev.read_exact_at(chunk, offset + (i * MIB) as u64)?;
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    Ok(())
}

fn run(args: &[String]) -> io::Result<bool> {
    let [dev, offset_mib, mib, pace_ms, go, verify] = args else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: guest_dma_hold <device> <offset MiB> <MiB> <pace ms> <go file> <verify file>",
        ));
    };
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{s}: {e}")))
    };
    let offset = number(offset_mib)? * MIB as u64;
    let len = usize::try_from(number(mib)?).unwrap_or(usize::MAX / 2) * MIB;
    let pace = Duration::from_millis(number(pace_ms)?);
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;

    let mut held = Buffer::new(len)?;
    held.as_mut_slice().fill(PATTERN);
    held.lock()?;
    println!(
        "dma-hold: {} MiB filled and locked; waiting for {go}",
        len / MIB
    );
    wait_for(Path::new(go))?;
    read_range(&dev, held.as_mut_slice(), offset, pace)?;
    println!("dma-hold: read done; waiting for {verify}");
    wait_for(Path::new(verify))?;

    let mut fresh = Buffer::new(len)?;
    read_range(&dev, fresh.as_mut_slice(), offset, Duration::ZERO)?;
    let (mut bad, mut pattern) = (0usize, 0usize);
    for (h, f) in held
        .as_slice()
        .chunks(PAGE)
        .zip(fresh.as_slice().chunks(PAGE))
    {
        if h != f {
            bad += 1;
            if h.iter().all(|&b| b == PATTERN) {
                pattern += 1;
            }
        }
    }
    println!(
        "dma-hold: {bad} of {} pages differ from the disk ({pattern} still hold the fill pattern)",
        len / PAGE
    );
    Ok(bad == 0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            println!("dma-hold: error: {e}");
            std::process::exit(2);
        }
    }
}
