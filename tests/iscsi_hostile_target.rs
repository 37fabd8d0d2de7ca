//! A target that logs in correctly and then breaks the protocol (a Data-In longer than the
//! negotiated MaxRecvDataSegmentLength, an R2T outside the command's data) must not start
//! a reconnect storm: the daemon backs off after protocol errors, fails the guest's command
//! after a bounded number of reissues with the error a lost LUN gives (CHECK CONDITION,
//! HARDWARE ERROR, LOGICAL UNIT COMMUNICATION FAILURE), logs in a bounded number of times,
//! does not spin, and keeps its log short. A target that ends every connection right after
//! its login and the initiator's INQUIRY (a path that flaps without ever carrying a guest's
//! command) must not keep `no_path_retry` from running out. Counts have generous limits;
//! no timing is asserted beyond the frontend's own timeout.

mod common;
mod iscsi_common;

use std::time::{Duration, Instant};

use common::*;
use iscsi_common::hostile_target::{HostileTarget, Misbehaviour};
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
