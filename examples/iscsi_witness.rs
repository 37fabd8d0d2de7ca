//! A second initiator for the iSCSI persistent reservation test
//! (tests/qemu/run-iscsi-reservations-e2e.sh): an initiator name of its own, one session
//! straight to the target, so it sees the reservation as any other host would. It sends
//! the steps it is given, one command each, and prints what the target answered.
//!
//! Usage: iscsi_witness <iscsi:// URL> <initiator name> <step>...
//! Steps: `write:<lba>` (WRITE(16) of one 512-byte block), `read:<lba>` (READ(16) of one
//! block), `keys` (PERSISTENT RESERVE IN, READ KEYS). Prints one line per step:
//! `witness write:<lba> status=0x18`, `witness keys status=0x00 keys=0x1,0x1`. A UNIT
//! ATTENTION (a new nexus sees one first) is retried, at most 5 times. Exits 0 when every
//! step got an answer from the target, 2 on a login or transport error or a bad argument.

use std::process::ExitCode;

use vscsid::iscsi::{IscsiLun, IscsiOptions, IscsiUrl};
use vscsid::scsi::task::{command, ScsiCompletion};

const BLOCK: usize = 512;
/// READ KEYS' allocation length: the header and up to 63 keys.
const KEYS_LEN: u16 = 8 + 8 * 63;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: iscsi_witness <iscsi:// URL> <initiator name> <step>...");
        return ExitCode::from(2);
    }
    match run(&args[0], &args[1], &args[2..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iscsi_witness: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(url: &str, initiator: &str, steps: &[String]) -> Result<(), String> {
    let url = IscsiUrl::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let opts = IscsiOptions {
        initiator_name: initiator.to_string(),
        ..IscsiOptions::default()
    };
    let lun = IscsiLun::connect(&url, &opts).map_err(|e| format!("login: {e}"))?;
    for step in steps {
        let (cdb, out, in_len): (Vec<u8>, Vec<u8>, u32) = match step.split_once(':') {
            Some(("write", lba)) => (cdb16(0x8a, lba_of(lba)?), vec![0x5a; BLOCK], 0),
            Some(("read", lba)) => (cdb16(0x88, lba_of(lba)?), Vec::new(), BLOCK as u32),
            None if step == "keys" => {
                let [hi, lo] = KEYS_LEN.to_be_bytes();
                (
                    vec![0x5e, 0, 0, 0, 0, 0, 0, hi, lo, 0],
                    Vec::new(),
                    u32::from(KEYS_LEN),
                )
            }
            _ => return Err(format!("unknown step '{step}'")),
        };
        let c = execute(&lun, &cdb, out, in_len)?;
        let status = c.result.as_ref().map(|s| s.status).unwrap_or_default();
        if step == "keys" && status == 0 {
            let keys: Vec<String> = keys(&c.data_in).iter().map(|k| format!("{k:#x}")).collect();
            println!(
                "witness {step} status={status:#04x} keys={}",
                keys.join(",")
            );
        } else {
            println!("witness {step} status={status:#04x}");
        }
    }
    lun.close(std::time::Duration::from_secs(2));
    Ok(())
}

fn lba_of(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not a block number"))
}

/// READ(16) or WRITE(16) of one block at `lba`.
fn cdb16(op: u8, lba: u64) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&1u32.to_be_bytes());
    c
}

/// The command's answer, sent again after a UNIT ATTENTION (at most 5 times).
fn execute(
    lun: &IscsiLun,
    cdb: &[u8],
    out: Vec<u8>,
    in_len: u32,
) -> Result<ScsiCompletion, String> {
    let mut last = None;
    for _ in 0..5 {
        let c = lun.execute(command(cdb, out.clone(), in_len));
        let st = c.result.as_ref().map_err(|e| format!("{e:?}"))?;
        let unit_attention = st.status == 2 && st.sense.get(2).is_some_and(|k| k & 0x0f == 6);
        if !unit_attention {
            return Ok(c);
        }
        last = Some(c);
    }
    last.ok_or_else(|| "no answer".to_string())
}

/// The keys of READ KEYS parameter data (as far as the data goes).
fn keys(data: &[u8]) -> Vec<u64> {
    let len = data
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0) as usize;
    data.get(8..)
        .unwrap_or_default()
        .chunks_exact(8)
        .take(len / 8)
        .filter_map(|k| k.try_into().ok().map(u64::from_be_bytes))
        .collect()
}
