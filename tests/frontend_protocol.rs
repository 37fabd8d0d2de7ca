//! Hostile frontends (not guests): vhost-user set-ups that break the protocol. The daemon
//! must refuse them by dropping that connection, survive, and serve the next frontend.

mod common;

use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use vhost::vhost_user::Frontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

const MIB: u64 = 1 << 20;

fn daemon() -> Daemon {
    Daemon::start_with_env(
        &[Disk {
            name: "a.img",
            size: 16 * MIB,
            opts: "",
        }],
        &["--num-queues", "1", "--reconnect"],
        &[("VSCSID_LOG", "warn")],
    )
}

/// Waits (bounded) until the daemon has closed `frontend`'s connection: a request then
/// fails instead of being answered.
fn closed_by_daemon(frontend: &mut Frontend) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if frontend.get_features().is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// After the hostile connection: the daemon lives and serves a well-behaved frontend.
fn still_serves(d: &mut Daemon) {
    assert!(d.is_running(), "the daemon ended (a SIGBUS is exit 135)");
    let mut fe = d.connect(1);
    assert_serving(&mut fe);
}

fn memfd(len: u64) -> std::fs::File {
    use std::os::unix::io::FromRawFd;
    // SAFETY: a valid C string name; no other preconditions.
    let fd = unsafe { libc::memfd_create(c"hostile-frontend".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh descriptor owned by nothing else.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(len).expect("size memfd");
    f
}

#[test]
fn a_memory_region_larger_than_its_file_is_refused() {
    let mut d = daemon();
    let mut frontend = Frontend::connect(&d.socket, 3).expect("connect");
    let features = frontend.get_features().expect("features");
    frontend.set_owner().expect("owner");
    frontend
        .set_features(features & (1 << 32))
        .expect("set features");
    let file = memfd(MIB);
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 8 * MIB,
        userspace_addr: 0x7000_0000,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    // No REPLY_ACK: the refusal is the daemon closing the connection.
    let _ = frontend.set_mem_table(&[region]);
    assert!(
        closed_by_daemon(&mut frontend),
        "a region 8 times its memfd was taken"
    );
    still_serves(&mut d);
}

#[test]
fn guest_memory_truncated_under_a_request_drops_the_connection() {
    let mut d = daemon();
    let mut fe = d.connect(1);
    let q = 2;
    // Rings sit at the bottom of guest memory; the request goes 8 MiB up, past the cut.
    fe.conn.alloc(8 * MIB, 4096).expect("padding");
    let hdr = fe.conn.alloc(4096, 4096).expect("header");
    let resp = fe.conn.alloc(4096, 4096).expect("response");
    let mut h = [0u8; 51];
    h[0] = 1;
    h[19..25].copy_from_slice(&inquiry(96));
    use vm_memory::Bytes;
    fe.conn
        .mem
        .write_slice(&h, vm_memory::GuestAddress(hdr))
        .expect("header");
    // A request with a reply: the daemon has taken the whole set-up (which has no replies)
    // before the memory shrinks.
    fe.conn.frontend.get_features().expect("round trip");
    let region = fe.conn.mem.iter().next().expect("one region");
    let file = region.file_offset().expect("memfd").file();
    // From here on the test touches only the rings (below 4 MiB).
    file.set_len(4 * MIB).expect("truncate guest memory");
    let _ = raw_chain(
        &mut fe,
        q,
        &[
            (hdr, 51, vscsid::frontend::VRING_DESC_F_NEXT, 1),
            (resp, 108, vscsid::frontend::VRING_DESC_F_WRITE, 0),
        ],
    );
    assert!(
        closed_by_daemon(&mut fe.conn.frontend),
        "the connection stayed up after its memory was truncated"
    );
    drop(fe);
    still_serves(&mut d);
}

#[test]
fn a_queue_size_that_is_not_a_power_of_two_is_refused() {
    let mut d = daemon();
    let mut fe = d.connect(1);
    let q = 2;
    fe.timeout = Duration::from_secs(2);
    fe.conn
        .frontend
        .set_vring_num(q, 100)
        .expect("SET_VRING_NUM");
    // The daemon notices at the queue's next kick.
    let _ = fe.command_on(q, &cmd(0, &inquiry(96), &[], 96));
    assert!(
        closed_by_daemon(&mut fe.conn.frontend),
        "a ring of 100 entries was served"
    );
    drop(fe);
    still_serves(&mut d);
}
