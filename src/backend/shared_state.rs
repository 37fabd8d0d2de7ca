//! A small state file several daemons share: the reservation state of a disk that several
//! VMs (so several vscsid processes) use at once.
//!
//! Layout: a 4 KiB header page, then two slots of 64 KiB. A change is written to the slot
//! that does not hold the newest state, with a length, a CRC32C and a sequence number, so
//! a write torn by a crash leaves the other slot to read; the file is synced when the
//! caller asks (APTPL). The header holds a change counter that every daemon maps shared:
//! checking whether the state changed is one atomic load, no system call, which is what
//! keeps the I/O path cheap when nothing is reserved.
//!
//! Locks are OFD byte-range locks on the file: byte 0 orders readers and writers (between
//! processes; a mutex orders the threads of one), byte 1 is held shared by every daemon
//! that has the file open (so the first one in knows it is first: for the LUN that is a
//! power-on), and byte `NEXUS_BASE + hash` by the daemon serving a nexus while it runs (so
//! others can tell a live nexus from one whose daemon is gone).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::ofd_lock::{self, LockKind};

const HEADER: u64 = 4096;
const SLOT: u64 = 64 * 1024;
const SLOT_HEAD: usize = 24;
/// Largest state a slot holds.
pub const MAX_PAYLOAD: usize = SLOT as usize - SLOT_HEAD;
const MAGIC: &[u8; 8] = b"VSCSIST1";
const SLOT_MAGIC: u32 = 0x5653_5331;
/// Offset of the change counter in the header page.
const COUNTER_AT: usize = 64;
const ORDER_BYTE: i64 = 0;
const PRESENT_BYTE: i64 = 1;
const NEXUS_BASE: i64 = 1 << 32;

/// One open state file.
pub struct SharedState {
    file: File,
    path: PathBuf,
    /// The header page, mapped shared.
    header: *mut u8,
    /// Orders this process's threads (OFD locks do not: they share the description).
    local: Mutex<()>,
    /// The newest slot's sequence number as last read or written.
    seq: AtomicU64,
}

// SAFETY: the mapping is only read through the atomic counter and written through it or
// under the locks; the pointer stays valid until Drop unmaps it.
unsafe impl Send for SharedState {}
// SAFETY: as above; every access to the shared page is atomic or under `local`.
unsafe impl Sync for SharedState {}

/// Whether the caller was the first to open the file (the others had all closed it).
pub struct Opened {
    pub state: SharedState,
    pub first: bool,
}

fn nexus_byte(nexus: &str) -> i64 {
    NEXUS_BASE + i64::from(crc32c::crc32c(nexus.as_bytes()))
}

impl SharedState {
    /// Opens (creating) `path`, and marks `nexus` as served by this process while the file
    /// is open. `init` sees the newest payload when this process is the first to have the
    /// file open and returns what to store instead (None: keep it).
    pub fn open(
        path: &Path,
        nexus: &str,
        init: impl FnOnce(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> io::Result<Opened> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let want = HEADER + 2 * SLOT;
        if file.metadata()?.len() < want {
            file.set_len(want)?;
        }
        // SAFETY: a new shared mapping of the file's first page, which exists (set_len
        // above); it is unmapped in Drop.
        let header = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                HEADER as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if header == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let state = SharedState {
            file,
            path: path.to_path_buf(),
            header: header.cast(),
            local: Mutex::new(()),
            seq: AtomicU64::new(0),
        };
        let first = state.join(nexus, init)?;
        Ok(Opened { state, first })
    }

    /// Marks this process present and `nexus` served, under the write lock; runs `init`
    /// when nobody else has the file open.
    fn join(
        &self,
        nexus: &str,
        init: impl FnOnce(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> io::Result<bool> {
        let state = self;
        let _order = state.lock(LockKind::Write)?;
        let mut magic = [0u8; 8];
        state.file.read_exact_at(&mut magic, 0)?;
        if &magic != MAGIC {
            state.file.write_all_at(MAGIC, 0)?;
        }
        // Alone if the presence byte can be taken for writing.
        let first = ofd_lock::set(&state.file, LockKind::Write, PRESENT_BYTE).is_ok();
        ofd_lock::set(&state.file, LockKind::Read, PRESENT_BYTE)?;
        ofd_lock::set(&state.file, LockKind::Read, nexus_byte(nexus))?;
        if first {
            let current = state.read_newest()?;
            if let Some(new) = init(current.as_ref().map(|(_, p)| p.as_slice())) {
                state.write_slot(&new, true)?;
            }
        }
        Ok(first)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn counter(&self) -> &AtomicU64 {
        // SAFETY: the header page is mapped for the life of self; COUNTER_AT is 8-byte
        // aligned within a page-aligned mapping, and the word is only accessed atomically.
        unsafe { &*self.header.add(COUNTER_AT).cast::<AtomicU64>() }
    }

    /// Counts the changes any daemon made; a different value than last time means the
    /// state must be read again. One atomic load.
    pub fn changes(&self) -> u64 {
        self.counter().load(Ordering::Acquire)
    }

    fn lock(&self, kind: LockKind) -> io::Result<Ordered<'_>> {
        let guard = self.local.lock().unwrap_or_else(|e| e.into_inner());
        ofd_lock::wait(&self.file, kind, ORDER_BYTE)?;
        Ok(Ordered {
            file: &self.file,
            _guard: guard,
        })
    }

    /// Reads the newest state: (the change count it belongs to, its payload; empty when
    /// nothing was ever stored).
    pub fn read(&self) -> io::Result<(u64, Vec<u8>)> {
        let _order = self.lock(LockKind::Read)?;
        let changes = self.changes();
        let payload = self.read_newest()?.map(|(_, p)| p).unwrap_or_default();
        Ok((changes, payload))
    }

    /// Reads the newest state, lets `f` change it, and stores what `f` returns (with a
    /// sync when `durable`), all under the write lock. Returns `f`'s result and the change
    /// count after.
    pub fn update<R>(
        &self,
        f: impl FnOnce(&[u8]) -> (Option<(Vec<u8>, bool)>, R),
    ) -> io::Result<(R, u64)> {
        let _order = self.lock(LockKind::Write)?;
        let current = self.read_newest()?.map(|(_, p)| p).unwrap_or_default();
        let (new, r) = f(&current);
        if let Some((payload, durable)) = new {
            self.write_slot(&payload, durable)?;
        }
        Ok((r, self.changes()))
    }

    /// Whether a process serving `nexus` has the file open.
    pub fn nexus_alive(&self, nexus: &str) -> bool {
        ofd_lock::taken_by_other(&self.file, nexus_byte(nexus)).unwrap_or(false)
    }

    fn read_newest(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let mut best: Option<(u64, Vec<u8>)> = None;
        for slot in 0..2u64 {
            if let Some((seq, payload)) = self.read_slot(slot)? {
                if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                    best = Some((seq, payload));
                }
            }
        }
        if let Some((seq, _)) = &best {
            self.seq.store(*seq, Ordering::Relaxed);
        }
        Ok(best)
    }

    fn read_slot(&self, slot: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
        let at = HEADER + slot * SLOT;
        let mut head = [0u8; SLOT_HEAD];
        self.file.read_exact_at(&mut head, at)?;
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let len = word(4) as usize;
        if word(0) != SLOT_MAGIC || len > MAX_PAYLOAD {
            return Ok(None);
        }
        let mut payload = vec![0u8; len];
        self.file
            .read_exact_at(&mut payload, at + SLOT_HEAD as u64)?;
        if crc32c::crc32c(&payload) != word(8) {
            return Ok(None); // torn: the other slot holds the state
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&head[16..24]);
        Ok(Some((u64::from_le_bytes(seq), payload)))
    }

    fn write_slot(&self, payload: &[u8], durable: bool) -> io::Result<()> {
        if payload.len() > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the state is larger than a slot of the state file",
            ));
        }
        let seq = self.seq.load(Ordering::Relaxed) + 1;
        let mut buf = Vec::with_capacity(SLOT_HEAD + payload.len());
        buf.extend_from_slice(&SLOT_MAGIC.to_le_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(payload);
        self.file.write_all_at(&buf, HEADER + (seq % 2) * SLOT)?;
        if durable {
            self.file.sync_data()?;
        }
        self.seq.store(seq, Ordering::Relaxed);
        self.counter().fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Holds byte 0's lock (and the threads' mutex) until dropped.
struct Ordered<'a> {
    file: &'a File,
    _guard: MutexGuard<'a, ()>,
}

impl Drop for Ordered<'_> {
    fn drop(&mut self) {
        let _ = ofd_lock::set(self.file, LockKind::Unlock, ORDER_BYTE);
    }
}

impl Drop for SharedState {
    fn drop(&mut self) {
        // SAFETY: unmaps the page mapped in open, which nothing uses any more.
        unsafe {
            libc::munmap(self.header.cast(), HEADER as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path, nexus: &str) -> Opened {
        SharedState::open(path, nexus, |_| None).expect("open")
    }

    #[test]
    fn the_first_opener_knows_and_the_others_see_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("s.state");
        let a = open(&p, "a");
        assert!(a.first);
        let b = open(&p, "b");
        assert!(!b.first);
        let before = b.state.changes();
        let (_, after) = a
            .state
            .update(|cur| {
                assert!(cur.is_empty());
                (Some((b"one".to_vec(), false)), ())
            })
            .expect("update");
        assert_ne!(b.state.changes(), before);
        assert_eq!(b.state.changes(), after);
        assert_eq!(b.state.read().expect("read").1, b"one");
        // Alternating slots: the newest wins.
        b.state
            .update(|cur| {
                assert_eq!(cur, b"one");
                (Some((b"two".to_vec(), true)), ())
            })
            .expect("update");
        assert_eq!(a.state.read().expect("read").1, b"two");
        assert!(a.state.nexus_alive("b") && b.state.nexus_alive("a"));
        drop(b);
        assert!(!a.state.nexus_alive("b"));
        drop(a);
        // Everyone closed it: the next one is first, and sees the newest payload.
        let c = SharedState::open(&p, "c", |cur| {
            assert_eq!(cur, Some(&b"two"[..]));
            Some(b"reset".to_vec())
        })
        .expect("open");
        assert!(c.first);
        assert_eq!(c.state.read().expect("read").1, b"reset");
    }

    #[test]
    fn a_torn_slot_leaves_the_other() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("s.state");
        let a = open(&p, "a");
        for text in [&b"first"[..], b"second"] {
            a.state
                .update(|_| (Some((text.to_vec(), false)), ()))
                .expect("update");
        }
        // Corrupt the newest slot's payload: the older one is read.
        let seq = a.state.seq.load(Ordering::Relaxed);
        let at = HEADER + (seq % 2) * SLOT + SLOT_HEAD as u64;
        a.state.file.write_all_at(b"XX", at).expect("tear");
        assert_eq!(a.state.read().expect("read").1, b"first");
    }

    #[test]
    fn oversized_states_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = open(&dir.path().join("s.state"), "a");
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(a.state.update(|_| (Some((big, false)), ())).is_err());
    }
}
