//! LUNs added, resized and removed while a frontend uses the daemon, through the control
//! socket (`vscsid ctl` and raw protocol lines): the event queue receives RESCAN, REMOVED
//! and PARAM_CHANGE events, REPORT LUNS follows, the unit attentions come once, I/O to the
//! other LUN goes on, a hot-added disk reads and writes, a removed one answers LOGICAL
//! UNIT NOT SUPPORTED; bad requests get one-line errors and change nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use vscsid::frontend::ScsiFrontend;

const MIB: u64 = 1 << 20;
const EVENT_WAIT: Duration = Duration::from_secs(10);

fn raw(control: &Path, line: &[u8]) -> String {
    let mut s = UnixStream::connect(control).expect("connect control");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(line).expect("send");
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).expect("reply");
    answer
}

fn report_luns_of(fe: &mut ScsiFrontend, l: u16) -> Vec<u16> {
    let r = fe.command(&cmd(l, &report_luns(4096), &[], 4096)).unwrap();
    good(&r);
    let n = u32::from_be_bytes([r.data_in[0], r.data_in[1], r.data_in[2], r.data_in[3]]) / 8;
    (0..n as usize)
        .map(|i| u16::from_be_bytes([r.data_in[8 + i * 8], r.data_in[9 + i * 8]]) & 0x3fff)
        .collect()
}

/// (event, target, lun, reason) of an event buffer.
fn event(e: &[u8; 16]) -> (u32, u8, u16, u32) {
    let kind = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
    let lun = u16::from_be_bytes([e[6], e[7]]) & 0x3fff;
    let reason = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
    (kind, e[5], lun, reason)
}

fn start() -> (Daemon, std::path::PathBuf) {
    let d = Daemon::start(
        &[Disk {
            name: "a.img",
            size: 16 * MIB,
            opts: "cache=none",
        }],
        &["--num-queues", "1", "--control", "{dir}/control.sock"],
    );
    let control = d.control_socket();
    (d, control)
}

#[test]
fn hot_add_resize_and_remove_are_seen_by_the_guest() {
    let (d, control) = start();
    let mut fe = d.connect(1);
    fe.post_event_buffers(4, 16).unwrap();
    good(&fe.command(&cmd(0, &test_unit_ready(), &[], 0)).unwrap());
    assert_eq!(report_luns_of(&mut fe, 0), vec![0]);

    // Hot-add a disk at LUN 1.
    let b = d.path("b.img");
    std::fs::File::create(&b)
        .and_then(|f| f.set_len(8 * MIB))
        .unwrap();
    let spec = format!("{},cache=none", b.display());
    let (ok, out, err) = ctl(&control, &["add", "disk", &spec]);
    assert!(ok, "add: {out} {err}");
    assert!(out.contains("lun=1"), "{out}");
    let (used, e) = fe.wait_event(EVENT_WAIT).expect("RESCAN event");
    assert_eq!(used, 16);
    assert_eq!(event(&e), (1, 0, 1, 1), "TRANSPORT_RESET / RESCAN of 0:1");
    // LUN 0 owes REPORTED LUNS DATA HAS CHANGED, once; REPORT LUNS is not held up by it.
    assert_eq!(report_luns_of(&mut fe, 0), vec![0, 1]);
    let r = fe.command(&cmd(0, &test_unit_ready(), &[], 0)).unwrap();
    assert_eq!(sense(&r), (6, 0x3f, 0x0e));
    good(&fe.command(&cmd(0, &test_unit_ready(), &[], 0)).unwrap());
    // The new disk reads and writes, straight to its file.
    write_read_back_flushed(&mut fe, 1, 8, &[0x5a; 4096], &b);

    // Grow it: PARAM_CHANGE 2A/09, then CAPACITY DATA HAS CHANGED once, then the new size.
    let (ok, out, err) = ctl(&control, &["resize", "0:1", "16M"]);
    assert!(ok, "resize: {out} {err}");
    let (_, e) = fe.wait_event(EVENT_WAIT).expect("PARAM_CHANGE event");
    assert_eq!(event(&e), (3, 0, 1, 0x092a));
    let r = fe.command(&cmd(1, &read_capacity16(32), &[], 32)).unwrap();
    assert_eq!(sense(&r), (6, 0x2a, 0x09));
    let r = fe.command(&cmd(1, &read_capacity16(32), &[], 32)).unwrap();
    good(&r);
    let last = u64::from_be_bytes(r.data_in[0..8].try_into().unwrap());
    assert_eq!(last + 1, 16 * MIB / 512);
    assert_eq!(std::fs::metadata(&b).unwrap().len(), 16 * MIB);
    // Shrinking is refused without --force, and changes nothing.
    let (ok, _, err) = ctl(&control, &["resize", "0:1", "4M"]);
    assert!(!ok && err.contains("refused without force"), "{err}");

    // Remove it: REMOVED event, its commands get LOGICAL UNIT NOT SUPPORTED, LUN 0 goes on.
    let (ok, out, err) = ctl(&control, &["remove", "0:1"]);
    assert!(ok, "remove: {out} {err}");
    let (_, e) = fe.wait_event(EVENT_WAIT).expect("REMOVED event");
    assert_eq!(event(&e), (1, 0, 1, 2), "TRANSPORT_RESET / REMOVED of 0:1");
    let r = fe.command(&cmd(1, &test_unit_ready(), &[], 0)).unwrap();
    assert_eq!(sense(&r), (5, 0x25, 0));
    let r = fe.command(&cmd(0, &test_unit_ready(), &[], 0)).unwrap();
    assert_eq!(sense(&r), (6, 0x3f, 0x0e));
    assert_eq!(report_luns_of(&mut fe, 0), vec![0]);
    write_read_back_flushed(&mut fe, 0, 0, &[0xa5; 8192], &d.path("a.img"));

    // A LUN on another target, listed by `luns`.
    let (ok, out, err) = ctl(
        &control,
        &["add", "null", "1G", "--target", "2", "--lun", "5"],
    );
    assert!(ok, "{out} {err}");
    let (_, e) = fe.wait_event(EVENT_WAIT).expect("RESCAN of 2:5");
    assert_eq!(event(&e), (1, 2, 5, 1));
    let (ok, out, _) = ctl(&control, &["luns"]);
    assert!(ok);
    assert!(out.contains("2:5") && out.contains("1.0 GiB"), "{out}");
    assert!(!out.contains("0:1 "), "{out}");
}

#[test]
fn events_wait_for_buffers_and_short_buffers_are_returned_unused() {
    let (d, control) = start();
    let mut fe = d.connect(1);
    // No buffers yet: the change waits.
    let (ok, _, err) = ctl(&control, &["add", "null", "64M"]);
    assert!(ok, "{err}");
    // A buffer too short for an event comes back unused; the next one gets the event.
    fe.post_event_buffers(1, 8).unwrap();
    let (used, _) = fe.wait_event(EVENT_WAIT).expect("short buffer back");
    assert_eq!(used, 0);
    fe.post_event_buffers(1, 16).unwrap();
    let (used, e) = fe.wait_event(EVENT_WAIT).expect("the waiting event");
    assert_eq!((used, event(&e)), (16, (1, 0, 1, 1)));
    // Added and removed before the guest heard of it: never mentioned.
    let (ok, _, _) = ctl(&control, &["add", "null", "64M", "--lun", "7"]);
    assert!(ok);
    let (ok, _, _) = ctl(&control, &["remove", "0:1"]);
    assert!(ok);
    fe.post_event_buffers(1, 16).unwrap();
    let (_, e) = fe.wait_event(EVENT_WAIT).expect("event");
    assert_eq!(event(&e), (1, 0, 7, 1), "the add of 0:7 first");
    let (_, e) = fe
        .wait_event(Duration::from_millis(10))
        .unwrap_or((0, [0; 16]));
    assert_eq!(event(&e), (0, 0, 0, 0), "nothing more yet");
}

#[test]
fn bad_control_requests_get_one_line_errors_and_change_nothing() {
    let (d, control) = start();
    let mut fe = d.connect(1);
    let b = d.path("a.img");
    for (line, why) in [
        (&b"not json\n"[..], "not JSON"),
        (b"{\"command\":\"luns\"}\n", "no \\\"version\\\""),
        (b"{\"version\":1,\"command\":\"explode\"}\n", "bad request"),
        (b"{\"version\":1,\"command\":\"remove\",\"target\":0,\"lun\":9}\n", "no LUN at target 0 LUN 9"),
        (b"{\"version\":1,\"command\":\"add\",\"kind\":\"disk\",\"spec\":\"/nonexistent/x.img\"}\n", "cannot open /nonexistent/x.img"),
        (b"{\"version\":1,\"command\":\"add\",\"kind\":\"tape\",\"spec\":\"x\"}\n", "kind: 'tape'"),
        (b"{\"version\":1,\"command\":\"add\",\"kind\":\"null\",\"spec\":\"12Q\"}\n", "size"),
        (b"{\"version\":1,\"command\":\"add\",\"kind\":\"null\",\"spec\":\"1M\",\"lun\":0}\n", "target 0 LUN 0 is in use"),
        (b"{\"version\":1,\"command\":\"resize\",\"target\":0,\"lun\":0,\"size\":1000}\n", "not a whole number"),
    ] {
        let a = raw(&control, line);
        assert!(a.contains("\"ok\":false") && a.contains(why), "{}: {a}", String::from_utf8_lossy(line));
        assert_eq!(a.lines().count(), 1);
    }
    // An add with a configuration file's [[lun]] fields as JSON: a bad field is named.
    let a = raw(
        &control,
        b"{\"version\":1,\"command\":\"add\",\"lun_config\":{\"kind\":\"null\",\"size\":\"1M\",\"block_size\":1000}}\n",
    );
    assert!(
        a.contains("\"ok\":false") && a.contains("lun.block_size"),
        "{a}"
    );
    let a = raw(
        &control,
        b"{\"version\":1,\"command\":\"add\",\"lun_config\":{\"kind\":\"null\",\"size\":\"1M\",\"colour\":1}}\n",
    );
    assert!(a.contains("\"ok\":false") && a.contains("colour"), "{a}");
    let a = raw(
        &control,
        b"{\"version\":1,\"command\":\"add\",\"lun_config\":{\"kind\":\"null\",\"size\":\"4M\",\"block_size\":4096,\"serial\":\"JSON-1\"}}\n",
    );
    assert!(a.contains("\"ok\":true") && a.contains("\"lun\":1"), "{a}");
    let r = fe.command(&cmd(1, &read_capacity16(32), &[], 32)).unwrap();
    good(&r);
    assert_eq!(
        u32::from_be_bytes(r.data_in[8..12].try_into().unwrap()),
        4096
    );
    let (ok, _, _) = ctl(&control, &["remove", "0:1"]);
    assert!(ok);
    // The same image opened for writing twice is refused with its reason.
    let spec = format!("{},cache=none", b.display());
    let (ok, _, err) = ctl(&control, &["add", "disk", &spec]);
    assert!(
        !ok && err.contains("already open for writing as target 0 LUN 0"),
        "{err}"
    );
    // An oversized request is cut off with an error; the daemon goes on.
    let mut big = vec![b'x'; 200_000];
    big.push(b'\n');
    let a = raw(&control, &big);
    assert!(a.contains("longer than"), "{a}");
    // A client that sends nothing does not hold the guest up.
    let r = fe.command(&cmd(0, &test_unit_ready(), &[], 0)).unwrap();
    assert_eq!(sense(&r), (6, 0x3f, 0x0e), "LUN 1 came and went");
    let idle = UnixStream::connect(&control).expect("idle client");
    assert_serving(&mut fe);
    drop(idle);
    let (ok, out, _) = ctl(&control, &["luns"]);
    assert!(ok && out.lines().count() == 2, "{out}");
}

#[test]
fn sighup_applies_the_configuration_file_and_leaves_what_cannot_change() {
    let files = tempfile::tempdir().expect("tmp");
    let dir = files.path();
    for (n, size) in [("a.img", 16 * MIB), ("b.img", 8 * MIB)] {
        std::fs::File::create(dir.join(n))
            .and_then(|f| f.set_len(size))
            .unwrap();
    }
    let config = dir.join("vscsid.toml");
    let lun = |n: u16, file: &str, extra: &str| {
        format!(
            "[[lun]]\nlun = {n}\npath = \"{}\"\ncache = \"none\"\n{extra}",
            dir.join(file).display()
        )
    };
    let head = "[daemon]\nnum_queues = 1\n";
    std::fs::write(&config, format!("{head}{}", lun(0, "a.img", ""))).unwrap();
    let cfg_arg = config.display().to_string();
    let d = Daemon::start_logged(&[], &["--config", &cfg_arg], &[("VSCSID_LOG", "info")]);
    let mut fe = d.connect(1);
    fe.post_event_buffers(4, 16).unwrap();
    let hup = |d: &Daemon| {
        // SAFETY: kill(2) with the PID of the daemon this test started.
        unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    };

    // A LUN added to the file: added, and the guest told.
    let two = format!("{head}{}{}", lun(0, "a.img", ""), lun(1, "b.img", ""));
    std::fs::write(&config, &two).unwrap();
    hup(&d);
    let (_, e) = fe.wait_event(EVENT_WAIT).expect("RESCAN after SIGHUP");
    assert_eq!(event(&e), (1, 0, 1, 1));
    assert_eq!(report_luns_of(&mut fe, 1), vec![0, 1]);

    // A file that does not parse changes nothing; a changed LUN and a changed daemon
    // setting are logged and left; a LUN gone from the file is removed.
    std::fs::write(&config, "[daemon]\nnum_queues = \"many\"\n").unwrap();
    hup(&d);
    wait_until(
        "the refused reload in the log",
        Duration::from_secs(10),
        || d.log().contains("reload: the configuration is not valid"),
    );
    let changed = format!(
        "[daemon]\nnum_queues = 2\n{}",
        lun(0, "a.img", "readonly = true\n")
    );
    std::fs::write(&config, changed).unwrap();
    hup(&d);
    let (_, e) = fe.wait_event(EVENT_WAIT).expect("REMOVED after SIGHUP");
    assert_eq!(event(&e), (1, 0, 1, 2));
    wait_until("the reload summary", Duration::from_secs(10), || {
        d.log().contains("1 change(s) applied, 2 left as they were")
    });
    let log = d.log();
    assert!(log.contains("daemon.num_queues changed"), "{log}");
    assert!(log.contains("target 0 LUN 0 changed"), "{log}");
    // LUN 0 owes one REPORTED LUNS DATA HAS CHANGED (for both changes), and is still
    // writable, as it ran.
    let r = fe.command(&cmd(0, &test_unit_ready(), &[], 0)).unwrap();
    assert_eq!(sense(&r), (6, 0x3f, 0x0e));
    write_read_back_flushed(&mut fe, 0, 0, &[7; 4096], &dir.join("a.img"));
}

#[test]
fn two_clients_adding_one_address_at_once_one_wins() {
    let (d, control) = start();
    let line =
        b"{\"version\":1,\"command\":\"add\",\"kind\":\"null\",\"spec\":\"16M\",\"lun\":4}\n";
    let answers: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4).map(|_| s.spawn(|| raw(&control, line))).collect();
        runs.into_iter()
            .map(|r| r.join().expect("client"))
            .collect()
    });
    let won = answers.iter().filter(|a| a.contains("\"ok\":true")).count();
    let lost = answers
        .iter()
        .filter(|a| a.contains("target 0 LUN 4 is in use"))
        .count();
    assert_eq!((won, lost), (1, 3), "{answers:?}");
    let (ok, out, _) = ctl(&control, &["luns"]);
    assert!(ok && out.matches("0:4 ").count() == 1, "{out}");
    drop(d);
}
