//! Fuzz target: a logged-in iSCSI session reading what a target sends. A scripted target on
//! 127.0.0.1 logs the session in through the real initiator (`IscsiLun::connect`) and
//! answers its own commands after login (TEST UNIT READY, which takes a new nexus's unit
//! attention, ITT 1; the ALUA probe, ITT 2); the session then sends READ(10) (ITT 3),
//! WRITE(10) with 512 bytes of immediate data and 3584 to be asked for by R2T (ITT 4) and
//! TEST UNIT READY (ITT 5); the input is everything the target sends after that (its
//! StatSN continues from 0x104, the commands' CmdSN are 3 to 5), then the target closes. Every command must complete, whatever the input.
#![no_main]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vscsid::iscsi::{IscsiLun, IscsiOptions, IscsiUrl};
use vscsid::scsi::task::{ScsiCommand, TaskAttr};
use vscsid_fuzz::iscsi_target::ScriptedTarget;
use vscsid_fuzz::HANG_BOUND;

static SESSIONS: AtomicU64 = AtomicU64::new(0);

fn command(cdb: &[u8], data_out: Vec<u8>, data_in_len: u32) -> ScsiCommand {
    let mut c = [0u8; 32];
    c[..cdb.len()].copy_from_slice(cdb);
    ScsiCommand {
        cdb: c,
        cdb_len: cdb.len(),
        data_out,
        data_in_len,
        task_attr: TaskAttr::Simple,
        guest: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let initiator_name = format!("iqn.2024-01.io.vscsid:fuzz-{}-{n}", std::process::id());
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("port").port();
    let commands = vec![
        command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], Vec::new(), 4096),
        command(&[0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0], vec![0x5a; 4096], 0),
        command(&[0, 0, 0, 0, 0, 0], Vec::new(), 0),
    ];
    let target = ScriptedTarget {
        listener,
        initiator_name: initiator_name.clone(),
        commands: commands.len(),
    };
    let stream = data.to_vec();
    let target = std::thread::spawn(move || target.serve(&stream));

    let url = IscsiUrl::parse(&format!(
        "iscsi://127.0.0.1:{port}/iqn.2024-01.io.vscsid:fuzz/0"
    ))
    .expect("url");
    let opts = IscsiOptions {
        initiator_name,
        first_burst_length: 512,
        nop_interval: Duration::from_secs(60),
        nop_timeout: Duration::from_secs(60),
        recovery_timeout: Duration::ZERO,
        connect_timeout: Duration::from_secs(1),
        login_timeout: Duration::from_secs(5),
        ..IscsiOptions::default()
    };
    let lun = IscsiLun::connect(&url, &opts).expect("login to the scripted target");
    let (tx, rx) = mpsc::channel();
    let total = commands.len();
    let data_in_lens: Vec<u32> = commands.iter().map(|c| c.data_in_len).collect();
    for (i, c) in commands.into_iter().enumerate() {
        let tx = tx.clone();
        lun.submit(
            c,
            Box::new(move |done| {
                let _ = tx.send((i, done));
            }),
        );
    }
    let deadline = Instant::now() + HANG_BOUND;
    for _ in 0..total {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, done)) => assert!(
                done.data_in.len() <= data_in_lens[i] as usize,
                "command {i} got {} bytes of data-in for {}",
                done.data_in.len(),
                data_in_lens[i]
            ),
            Err(e) => panic!(
                "hang: a command never completed ({e}); outstanding {}",
                lun.outstanding()
            ),
        }
    }
    lun.close(std::time::Duration::ZERO);
    drop(lun);
    target.join().expect("scripted target");
});
