//! A target that logs in correctly and then breaks the protocol (a Data-In longer than the
//! negotiated MaxRecvDataSegmentLength, an R2T outside the command's data) must not start
//! a reconnect storm: the daemon backs off after protocol errors, fails the guest's command
//! after a bounded number of reissues with the error a lost LUN gives (CHECK CONDITION,
//! HARDWARE ERROR, LOGICAL UNIT COMMUNICATION FAILURE), logs in a bounded number of times,
//! does not spin, and keeps its log short. A target that ends every connection right after
//! its login and the initiator's INQUIRY (a path that flaps without ever carrying a guest's
//! command) must not keep `no_path_retry` from running out. Data-In goes straight into
//! guest memory, so a target sending more of it than asked for, or at offsets past the
//! buffer, must not write a byte outside the guest's buffer; and a frontend that leaves
//! while its READs wait at a frozen target must not have them written into its memory when
//! the target answers later, nor hurt the daemon. Counts have generous limits; no timing
//! is asserted beyond the frontend's own timeout.

mod common;
mod iscsi_common;

use std::time::{Duration, Instant};

use common::*;
use iscsi_common::hostile_target::{
    HostileTarget, Misbehaviour, HELD_READ_BYTE, PAST_THE_BUFFER_BYTE,
};
use vm_memory::{Bytes, GuestAddress};
use vscsid::frontend::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vscsid::iscsi::multipath::MAX_REISSUES;

/// Logins beyond the first one and the reissues: the login after the last failure, and
/// one or two more if the machine is slow enough for a path to drop for silence.
const LOGIN_SLACK: usize = 4;
/// Logins a target that ends every connection may see over the test: the back-off's ramp
/// (about eight in the first five seconds), then one every two seconds at most.
const MAX_FLAPPING_LOGINS: usize = 25;
/// `no_path_retry` of the flapping path's LUN, in seconds: longer than the longest
/// reconnect back-off (2 s), so that only an outage clock that a login does not reset runs
/// out.
const FLAPPING_NO_PATH_RETRY: u32 = 5;
/// How long the test watches the daemon after the command failed.
const QUIET_WINDOW: Duration = Duration::from_secs(3);
/// Log lines the daemon may write over the whole test (a storm wrote hundreds of
/// thousands).
const MAX_LOG_LINES: usize = 60;

fn command_fails_without_a_storm(misbehaviour: Misbehaviour) {
    let target = HostileTarget::start(misbehaviour);
    let flapping = misbehaviour == Misbehaviour::DropsAfterInquiry;
    let url = if flapping {
        format!("{},no-path-retry={FLAPPING_NO_PATH_RETRY}", target.url())
    } else {
        target.url()
    };
    let d = Daemon::start_logged(
        &[],
        &["--iscsi", &url, "--num-queues", "1"],
        &[("VSCSID_LOG", "info")],
    );
    let mut fe = d.connect(1);
    let started = Instant::now();
    let cpu_before = d.cpu_time();
    let data = pattern(5, 8 * 512);
    let r = match misbehaviour {
        Misbehaviour::R2tOutsideData => fe.command(&cmd(0, &write16(0, 8), &data, 0)),
        _ => fe.command(&cmd(0, &read16(0, 8), &[], 8 * 512)),
    }
    .expect("the command completes within the frontend's timeout");
    let failed_after = started.elapsed();
    assert_eq!(
        sense(&r),
        (0x04, 0x08, 0x00),
        "LOGICAL UNIT COMMUNICATION FAILURE"
    );
    let logins_at_failure = target.logins();
    std::thread::sleep(QUIET_WINDOW);
    let logins = target.logins();
    let bound = if flapping {
        MAX_FLAPPING_LOGINS
    } else {
        1 + MAX_REISSUES as usize + LOGIN_SLACK
    };
    assert!(
        logins <= bound,
        "{logins} logins ({logins_at_failure} when the command failed), at most {bound} expected"
    );
    // Backed off, not spinning: a storm kept a core 40 % busy.
    let cpu = d.cpu_time().saturating_sub(cpu_before);
    let wall = started.elapsed();
    assert!(cpu < wall / 5, "the daemon used {cpu:?} of CPU in {wall:?}");
    if !flapping {
        // The LUN still answers what the target answers properly.
        let r = fe.command(&cmd(0, &inquiry(96), &[], 96)).expect("INQUIRY");
        good(&r);
        assert_eq!(&r.data_in[8..16], b"HOSTILE ");
    }
    let log = d.log();
    let lines = log.lines().count();
    assert!(lines <= MAX_LOG_LINES, "{lines} log lines:\n{log}");
    eprintln!(
        "{misbehaviour:?}: failed after {failed_after:?}, {logins} logins, {lines} log lines, \
         {cpu:?} CPU in {wall:?}"
    );
}

#[test]
fn oversized_data_in_fails_the_read_after_bounded_reissues() {
    command_fails_without_a_storm(Misbehaviour::OversizedDataIn);
}

#[test]
fn r2t_outside_the_data_fails_the_write_after_bounded_reissues() {
    command_fails_without_a_storm(Misbehaviour::R2tOutsideData);
}

#[test]
fn a_path_that_drops_every_connection_after_login_lets_no_path_retry_run_out() {
    command_fails_without_a_storm(Misbehaviour::DropsAfterInquiry);
}

/// Guest memory around a READ's data-in buffer: the buffer, then a canary.
const DATA_IN: u32 = 4096;
const CANARY: usize = 16384;
const CANARY_BYTE: u8 = 0x5a;

#[test]
fn data_in_past_the_buffer_never_leaves_the_guests_buffer() {
    let target = HostileTarget::start(Misbehaviour::DataInPastTheBuffer);
    let _d = Daemon::start(&[], &["--iscsi", &target.url(), "--num-queues", "2"]);
    let mut fe = _d.connect(2);
    let base = fe.conn.alloc(64 * 1024, 4096).expect("guest memory");
    let (hdr, resp, data) = (base, base + 1024, base + 8192);
    let mut h = [0u8; 51];
    h[0] = 1;
    h[19..35].copy_from_slice(&read16(0, DATA_IN / 512));
    let mem = &fe.conn.mem;
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    mem.write_slice(&[0xffu8; 108], GuestAddress(resp)).unwrap();
    mem.write_slice(&[CANARY_BYTE; CANARY], GuestAddress(data))
        .unwrap();
    let (w, n) = (VRING_DESC_F_WRITE, VRING_DESC_F_NEXT);
    let descs = [
        (hdr, 51, n, 1),
        (resp, 108, w | n, 2),
        (data, DATA_IN, w, 0),
    ];
    let (_, used) = raw_chain(&mut fe, 3, &descs).expect("answered");
    let mut r = [0u8; 108];
    fe.conn.mem.read_slice(&mut r, GuestAddress(resp)).unwrap();
    assert_eq!((r[11], r[10]), (0, 0), "response and status");
    assert_eq!(used, 108 + DATA_IN);
    let mut back = vec![0u8; CANARY];
    fe.conn
        .mem
        .read_slice(&mut back, GuestAddress(data))
        .unwrap();
    let (inside, past) = back.split_at(DATA_IN as usize);
    assert!(inside.iter().all(|&b| b == PAST_THE_BUFFER_BYTE));
    assert!(
        past.iter().all(|&b| b == CANARY_BYTE),
        "Data-In landed past the guest's buffer"
    );
    assert_serving_iscsi(&mut fe);
}

/// The LUN still answers what the target answers properly.
fn assert_serving_iscsi(fe: &mut vscsid::frontend::ScsiFrontend) {
    let r = fe.command(&cmd(0, &inquiry(96), &[], 96)).expect("INQUIRY");
    good(&r);
    assert_eq!(&r.data_in[8..16], b"HOSTILE ");
}

#[test]
fn a_frontend_leaving_with_reads_at_a_frozen_target_does_not_hurt_the_daemon() {
    const READS: usize = 8;
    const LEN: u32 = 128 * 1024;
    let target = HostileTarget::start(Misbehaviour::HoldsReads);
    let mut d = Daemon::start_logged(
        &[],
        &["--iscsi", &target.url(), "--num-queues", "1", "--reconnect"],
        &[("VSCSID_LOG", "info")],
    );
    let mut fe = d.connect(1);
    for i in 0..READS {
        let blocks = LEN / 512;
        let cdb = read16(i as u64 * u64::from(blocks), blocks);
        fe.submit(2, &cmd(0, &cdb, &[], LEN)).expect("submit");
    }
    wait_until(
        "the target holds every READ",
        Duration::from_secs(20),
        || target.held_reads() >= READS,
    );
    // The frontend goes away (its memory with it) while the reads are at the target; then
    // the target answers them all: the daemon's session writes nothing into memory that
    // is gone, and serves the next frontend.
    drop(fe);
    wait_until(
        "the daemon saw the frontend go",
        Duration::from_secs(20),
        || d.log().contains("frontend disconnected"),
    );
    target.release_reads();
    let mut fe = d.connect(1);
    let r = guest_command(&mut fe, &cmd(0, &read16(0, LEN / 512), &[], LEN));
    good(&r);
    assert_eq!(r.data_in.len(), LEN as usize);
    assert!(r.data_in.iter().all(|&b| b == HELD_READ_BYTE));
    assert!(d.is_running());
}
