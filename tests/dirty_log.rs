//! Dirty-page logging for live migration: with VHOST_F_LOG_ALL on and a log handed over
//! (SET_LOG_BASE), every guest page the daemon writes is marked: the data a READ brings in
//! (written by the kernel through io_uring), the response, the used ring. Pages it only
//! reads are not; with logging off nothing is.

mod common;

use std::os::unix::io::{AsRawFd, FromRawFd};

use common::*;
use vhost::{VhostBackend, VhostUserDirtyLogRegion};
use vm_memory::{Bytes, GuestAddress};
use vscsid::frontend::{ScsiFrontend, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

const PAGE: u64 = 4096;
const LOG_ALL: u64 = 1 << 26;
const Q: usize = 2;

fn memfd(len: u64) -> std::fs::File {
    // SAFETY: a valid C string name; no other preconditions.
    let fd = unsafe { libc::memfd_create(c"dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor owned by nothing else.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(len).expect("size the log");
    f
}

fn marked(log: &std::fs::File, page: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    log.read_exact_at(&mut b, page / 8).expect("read the log");
    b[0] & (1 << (page % 8)) != 0
}

fn all_marked(log: &std::fs::File, pages: u64) -> Vec<u64> {
    (0..pages).filter(|&p| marked(log, p)).collect()
}

/// A READ of 16 pages with every buffer at a known guest address: header, response, data.
fn read_at_known_addresses(fe: &mut ScsiFrontend) -> (u64, u64, u64) {
    let hdr = fe.conn.alloc(PAGE, PAGE).expect("header");
    let resp = fe.conn.alloc(PAGE, PAGE).expect("response");
    let data = fe.conn.alloc(16 * PAGE, PAGE).expect("data");
    let mut h = [0u8; 51];
    h[0] = 1;
    h[19..35].copy_from_slice(&read16(0, 128));
    fe.conn
        .mem
        .write_slice(&h, GuestAddress(hdr))
        .expect("write header");
    let used = raw_chain(
        fe,
        Q,
        &[
            (hdr, 51, VRING_DESC_F_NEXT, 1),
            (resp, 108, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
            (data, 16 * PAGE as u32, VRING_DESC_F_WRITE, 0),
        ],
    );
    assert!(used.is_some(), "the READ completed");
    (hdr, resp, data)
}

#[test]
fn pages_the_daemon_writes_are_logged_while_logging_is_on() {
    let d = Daemon::start(
        &[Disk {
            name: "a.img",
            size: 1 << 20,
            opts: "",
        }],
        &["--num-queues", "1"],
    );
    let mut fe = d.connect(1);
    let pages = fe.conn.memory_size() / PAGE;
    let log = memfd(pages.div_ceil(8));
    let region = VhostUserDirtyLogRegion {
        mmap_size: pages.div_ceil(8),
        mmap_offset: 0,
        mmap_handle: log.as_raw_fd(),
    };
    fe.conn
        .frontend
        .set_log_base(0, Some(region))
        .expect("SET_LOG_BASE");
    let features = fe.conn.features;

    // Logging off: nothing is marked.
    read_at_known_addresses(&mut fe);
    assert!(
        all_marked(&log, pages).is_empty(),
        "marked with logging off"
    );

    fe.conn
        .frontend
        .set_features(features | LOG_ALL)
        .expect("LOG_ALL on");
    // SET_FEATURES has no reply: a request that has one makes sure the daemon took it
    // before the READ below (QEMU waits for a reply when it turns logging on, too).
    fe.conn.frontend.get_features().expect("GET_FEATURES");
    let (hdr, resp, data) = read_at_known_addresses(&mut fe);
    for p in data / PAGE..data / PAGE + 16 {
        assert!(marked(&log, p), "data-in page {p} not logged");
    }
    assert!(marked(&log, resp / PAGE), "response page not logged");
    assert!(!marked(&log, hdr / PAGE), "a page only read was logged");
    let used_ring = fe.conn.queues[Q].used;
    assert!(marked(&log, used_ring / PAGE), "used ring not logged");
    let expected = 16 + 1 + 1;
    let n = all_marked(&log, pages).len();
    assert!(n <= expected + 1, "{n} pages logged, {expected} written");

    // Logging off again: the next READ marks nothing new.
    fe.conn
        .frontend
        .set_features(features)
        .expect("LOG_ALL off");
    fe.conn.frontend.get_features().expect("GET_FEATURES");
    // Cleared in place: truncating a file the daemon maps would take its pages away.
    {
        use std::os::unix::fs::FileExt;
        log.write_all_at(&vec![0u8; pages.div_ceil(8) as usize], 0)
            .expect("clear the log");
    }
    read_at_known_addresses(&mut fe);
    assert!(
        all_marked(&log, pages).is_empty(),
        "marked after logging was turned off"
    );
}
