//! The iSCSI passthrough path allocates nothing per command once warm: a daemon serving a
//! tgtd LUN runs in this process (its worker, session reader and keepalive threads), the
//! in-process vhost-user frontend drives READs and WRITEs of 4 KiB and 128 KiB at queue
//! depth 32, and a counting global allocator counts every allocation made while the
//! measured commands run, on every thread except the frontend's own (the test thread:
//! the frontend builds its requests and answers in fresh buffers, which is not the
//! daemon's cost). The daemon's threads and anything else in the process are counted.

mod common;
mod iscsi_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use iscsi_common::*;
use vscsid::config::Config;
use vscsid::frontend::{ConnectOptions, ScsiFrontend, VirtioScsiRequest};
use vscsid::heartbeat::Heartbeats;
use vscsid::lun::{build_lun_table, open_options, LiveLuns};
use vscsid::sandbox::SandboxMode;
use vscsid::vhost::{serve, CurrentDevice, VhostSocket};

/// Counts allocations while `COUNTING`, except on a thread that set `NOT_COUNTED`.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static NOT_COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.load(Ordering::Relaxed) && !NOT_COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; counting touches only an
// atomic and a const thread-local without destructor (neither allocates).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const MIB: u64 = 1 << 20;
/// Blocks (512 bytes) the commands spread over.
const SPAN_BLOCKS: u64 = 16 * MIB / 512;
const QUEUE_DEPTH: usize = 32;
const WARM_UP: usize = 3_000;
const MEASURED: usize = 10_000;

/// Starts a daemon in this process serving `url` as LUN 0; returns its socket.
fn daemon_in_process(url: &str, dir: &std::path::Path) -> PathBuf {
    let mut cfg = Config::default();
    cfg.add_iscsi(url).expect("iscsi LUN");
    cfg.sandbox = SandboxMode::Off;
    let table = build_lun_table(&cfg).expect("LUN table");
    let luns = LiveLuns::new(table, open_options(&cfg), true);
    let path = dir.join("vscsid.sock");
    let socket = VhostSocket::bind(&path, &cfg.socket_access).expect("socket");
    std::thread::Builder::new()
        .name("daemon".into())
        .spawn(move || {
            let current = CurrentDevice::default();
            let heartbeats = Heartbeats::new(None);
            let _ = serve(&cfg, luns, socket, &current, &heartbeats);
        })
        .expect("daemon thread");
    path
}

/// The `i`th command of the load: READs and WRITEs in turn, every fourth one 128 KiB, the
/// others 4 KiB, at LBAs that walk the span.
fn nth(i: usize, payload: &[u8]) -> (Vec<u8>, usize, u32) {
    let blocks: u32 = if i % 4 == 3 { 256 } else { 8 };
    let lba = (i as u64 * 257) % (SPAN_BLOCKS - 256);
    let bytes = blocks as usize * 512;
    if i.is_multiple_of(2) {
        (read16(lba, blocks).to_vec(), 0, bytes as u32)
    } else {
        (write16(lba, blocks).to_vec(), bytes.min(payload.len()), 0)
    }
}

/// Runs `n` commands starting with the `first`th at queue depth [`QUEUE_DEPTH`].
fn run_load(fe: &mut ScsiFrontend, first: usize, n: usize, payload: &[u8]) {
    let submit = |fe: &mut ScsiFrontend, i: usize| {
        let (cdb, out, inn) = nth(i, payload);
        let req = VirtioScsiRequest {
            lun: lun(0),
            tag: i as u64,
            cdb: &cdb,
            data_out: &payload[..out],
            data_in_len: inn,
        };
        fe.submit(2, &req).expect("submit");
    };
    let mut next = first;
    for _ in 0..QUEUE_DEPTH.min(n) {
        submit(fe, next);
        next += 1;
    }
    for done in 0..n {
        let (_, r) = fe.complete(2).expect("completion");
        assert_eq!((r.response, r.status), (0, 0), "command {done}: {r:?}");
        if next < first + n {
            submit(fe, next);
            next += 1;
        }
    }
}

#[test]
fn passthrough_reads_and_writes_allocate_nothing_per_command() {
    let t = Tgtd::start(32 * MIB, Accounts::default());
    let dir = tempfile::tempdir().unwrap();
    let socket = daemon_in_process(&t.url(), dir.path());
    NOT_COUNTED.with(|c| c.set(true));
    let opts = ConnectOptions {
        queues: 3,
        memory_size: 48 << 20,
        ..ConnectOptions::default()
    };
    let mut fe = ScsiFrontend::connect(&socket, &opts).expect("connect");
    fe.timeout = Duration::from_secs(30);
    guest_command(&mut fe, &cmd(0, &test_unit_ready(), &[], 0));
    let payload = pattern(5, 128 * 1024);
    run_load(&mut fe, 0, WARM_UP, &payload);

    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    run_load(&mut fe, WARM_UP, MEASURED, &payload);
    COUNTING.store(false, Ordering::Relaxed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);

    // The data went where it should: a write read back through the same path.
    let data = pattern(9, 128 * 1024);
    good(&fe.command(&cmd(0, &write16(4096, 256), &data, 0)).unwrap());
    let r = fe
        .command(&cmd(0, &read16(4096, 256), &[], data.len() as u32))
        .unwrap();
    good(&r);
    assert_eq!(r.data_in, data);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in {MEASURED} passthrough commands"
    );
}
