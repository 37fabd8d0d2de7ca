//! The in-guest probe of the local SCSI passthrough test (tests/qemu/run-passthrough-e2e.sh).
//! It runs inside a TCG guest next to a vscsid that passes a `scsi_debug` device through,
//! drives that vscsid with the project's own vhost-user frontend, and sends the same
//! commands straight to the device with SG_IO, so every check compares what the guest of
//! vscsid would see with what the device itself answers: status, sense and data unchanged.
//!
//! Usage: `passthrough_check --socket <vscsid socket> --device </dev/sgN or /dev/sdX>
//! --mode disk|tape [--delete-after [--rescan-after]]`. Prints `VSCSID-CHECK <name> PASS|FAIL <detail>` per
//! check (the guest's init script and the host script count them); exit status 1 when one
//! failed.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vscsid::frontend::{lun_address, CmdResponse, ConnectOptions, ScsiFrontend, VirtioScsiRequest};

/// The kernel's `struct sg_io_hdr` (include/scsi/sg.h), interface 'S'.
#[repr(C)]
struct SgIoHdr {
    interface_id: i32,
    dxfer_direction: i32,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut libc::c_void,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: i32,
    usr_ptr: *mut libc::c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: i32,
    duration: u32,
    info: u32,
}

const SG_IO: libc::c_ulong = 0x2285;
const SG_DXFER_NONE: i32 = -1;
const SG_DXFER_TO_DEV: i32 = -2;
const SG_DXFER_FROM_DEV: i32 = -3;

/// What the device answered directly.
#[derive(Debug)]
struct Direct {
    status: u8,
    sense: Vec<u8>,
    data: Vec<u8>,
}

fn sg_io(dev: &File, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> std::io::Result<Direct> {
    let mut sense = [0u8; 96];
    let mut data = vec![0u8; data_in_len.max(data_out.len())];
    data[..data_out.len()].copy_from_slice(data_out);
    let (dir, len) = if !data_out.is_empty() {
        (SG_DXFER_TO_DEV, data_out.len())
    } else if data_in_len > 0 {
        (SG_DXFER_FROM_DEV, data_in_len)
    } else {
        (SG_DXFER_NONE, 0)
    };
    let mut h = SgIoHdr {
        interface_id: i32::from(b'S'),
        dxfer_direction: dir,
        cmd_len: cdb.len() as u8,
        mx_sb_len: sense.len() as u8,
        iovec_count: 0,
        dxfer_len: len as u32,
        dxferp: data.as_mut_ptr().cast(),
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: 20_000,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: SG_IO reads the header, the CDB, and reads or writes `data` and `sense`
    // within the lengths the header gives; all outlive the call.
    if unsafe { libc::ioctl(dev.as_raw_fd(), SG_IO, &mut h) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let got = if dir == SG_DXFER_FROM_DEV {
        len.saturating_sub(h.resid.max(0) as usize)
    } else {
        0
    };
    data.truncate(got);
    Ok(Direct {
        status: h.status,
        sense: sense[..usize::from(h.sb_len_wr)].to_vec(),
        data,
    })
}

struct Probe {
    fe: ScsiFrontend,
    dev: File,
    failed: bool,
    /// Put before every check's name (one probe per kind of LUN in a run).
    prefix: String,
}

impl Probe {
    fn check(&mut self, name: &str, ok: bool, detail: &str) {
        println!(
            "VSCSID-CHECK {}{name} {} {detail}",
            self.prefix,
            if ok { "PASS" } else { "FAIL" }
        );
        self.failed |= !ok;
    }

    fn via_vscsid(&mut self, cdb: &[u8], data_out: &[u8], data_in_len: u32) -> Option<CmdResponse> {
        let req = VirtioScsiRequest {
            lun: lun_address(0, 0),
            tag: 1,
            cdb,
            data_out,
            data_in_len,
        };
        self.fe.command(&req).ok()
    }

    /// A fresh device owes its first command a unit attention (POWER ON OCCURRED) and
    /// vscsid and this probe reach it as one initiator: take it first (TEST UNIT READY
    /// straight to the device, a few times), so the comparisons compare the commands.
    fn take_unit_attentions(&mut self) {
        for _ in 0..4 {
            match sg_io(&self.dev, &[0, 0, 0, 0, 0, 0], &[], 0) {
                Ok(d) if key_of(&d.sense).is_some_and(|k| k.0 == 6) => continue,
                _ => break,
            }
        }
    }

    /// Sends `cdb` both ways and checks the answers are the same (status, sense key and
    /// codes, data).
    fn same_both_ways(&mut self, name: &str, cdb: &[u8], data_in_len: u32) {
        let direct = sg_io(&self.dev, cdb, &[], data_in_len as usize);
        let through = self.via_vscsid(cdb, &[], data_in_len);
        let (ok, detail) = match (&direct, &through) {
            (Ok(d), Some(t)) => {
                let same_sense = key_of(&d.sense) == key_of(&t.sense);
                // Data is the command's only with GOOD status.
                let same_data = d.status != 0 || d.data == t.data_in;
                let ok = t.response == 0 && d.status == t.status && same_sense && same_data;
                (
                    ok,
                    format!(
                        "device status {:#x} sense {:?} {} bytes; through vscsid status {:#x} sense {:?} {} bytes",
                        d.status,
                        key_of(&d.sense),
                        d.data.len(),
                        t.status,
                        key_of(&t.sense),
                        t.data_in.len()
                    ),
                )
            }
            (Err(e), _) => (false, format!("SG_IO on the device: {e}")),
            (_, None) => (false, "no answer through vscsid".into()),
        };
        self.check(name, ok, &detail);
    }
}

/// (sense key, ASC, ASCQ) of fixed or descriptor sense.
fn key_of(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        Some(0x72 | 0x73) if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn inquiry(evpd: Option<u8>, alloc: u8) -> [u8; 6] {
    match evpd {
        Some(page) => [0x12, 1, page, 0, alloc, 0],
        None => [0x12, 0, 0, 0, alloc, 0],
    }
}

/// scsi_debug's run-time options (its `opts` parameter).
const SCSI_DEBUG_OPTS: &str = "/sys/bus/pseudo/drivers/scsi_debug/opts";
/// `opts` bit: medium errors on reads of a range of LBAs (medium_error_start, 0x1234 by
/// default, and medium_error_count after it).
const OPT_MEDIUM_ERR: u32 = 2;
const MEDIUM_ERROR_LBA: u32 = 0x1234;

fn disk_checks(p: &mut Probe) {
    p.same_both_ways("pt-inquiry-unchanged", &inquiry(None, 96), 96);
    let inq = p.via_vscsid(&inquiry(None, 96), &[], 96);
    let vendor = inq
        .as_ref()
        .map(|r| String::from_utf8_lossy(r.data_in.get(8..32).unwrap_or(&[])).into_owned())
        .unwrap_or_default();
    p.check(
        "pt-inquiry-is-scsi-debug",
        vendor.starts_with("Linux") && vendor.contains("scsi_debug"),
        &vendor,
    );
    for page in [0x00u8, 0x80, 0x83] {
        p.same_both_ways(
            &format!("pt-vpd-{page:02x}-unchanged"),
            &inquiry(Some(page), 252),
            252,
        );
    }
    p.same_both_ways(
        "pt-read-capacity-unchanged",
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        8,
    );
    p.same_both_ways(
        "pt-mode-sense-unchanged",
        &[0x5a, 0, 0x3f, 0, 0, 0, 0, 0x10, 0, 0],
        4096,
    );
    // REPORT LUNS: vscsid's own table (one LUN), not the device's.
    let r = p.via_vscsid(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    let luns = r
        .as_ref()
        .map(|r| u32::from_be_bytes(r.data_in[0..4].try_into().unwrap_or([0; 4])) / 8);
    p.check(
        "pt-report-luns-by-vscsid",
        luns == Some(1),
        &format!("{luns:?} LUNs"),
    );
    // Data both ways: written through vscsid, read back through vscsid and straight from
    // the device.
    let data = pattern(7, 64 * 512);
    let w = p.via_vscsid(&rw10(0x2a, 100, 64), &data, 0);
    let r = p.via_vscsid(&rw10(0x28, 100, 64), &[], data.len() as u32);
    let direct = sg_io(&p.dev, &rw10(0x28, 100, 64), &[], data.len());
    let ok = w.as_ref().is_some_and(|w| w.status == 0)
        && r.as_ref()
            .is_some_and(|r| r.status == 0 && r.data_in == data)
        && direct
            .as_ref()
            .is_ok_and(|d| d.status == 0 && d.data == data);
    p.check(
        "pt-write-read-pattern",
        ok,
        "64 blocks at LBA 100, read back both ways",
    );
    // An error the device injects comes back as the device's sense.
    let armed = std::fs::write(SCSI_DEBUG_OPTS, OPT_MEDIUM_ERR.to_string()).is_ok();
    let cdb = rw10(0x28, MEDIUM_ERROR_LBA, 1);
    let r = p.via_vscsid(&cdb, &[], 512);
    let _ = std::fs::write(SCSI_DEBUG_OPTS, "0");
    let sense = r.as_ref().and_then(|r| key_of(&r.sense));
    p.check(
        "pt-injected-medium-error",
        armed
            && r.as_ref().is_some_and(|r| r.status == 2)
            && sense.is_some_and(|s| s.0 == 3 && s.1 == 0x11),
        &format!("sense {sense:?}"),
    );
    // A vendor-specific opcode the device does not know: its own answer, unchanged.
    p.same_both_ways("pt-unknown-opcode-unchanged", &[0xc5, 0, 0, 0, 0, 0], 0);
}

fn tape_checks(p: &mut Probe) {
    let r = p.via_vscsid(&inquiry(None, 96), &[], 96);
    let ptype = r.as_ref().and_then(|r| r.data_in.first()).map(|b| b & 0x1f);
    p.check(
        "pt-tape-inquiry",
        ptype == Some(1),
        &format!("peripheral type {ptype:?}"),
    );
    // What the device makes of tape commands, through vscsid as straight: REWIND, WRITE
    // FILEMARKS(6) (1 filemark), READ POSITION (short form).
    p.same_both_ways("pt-tape-rewind", &[0x01, 0, 0, 0, 0, 0], 0);
    p.same_both_ways("pt-tape-write-filemarks", &[0x10, 0, 0, 0, 1, 0], 0);
    p.same_both_ways(
        "pt-tape-read-position",
        &[0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        20,
    );
    p.same_both_ways("pt-tape-rewind-again", &[0x01, 0, 0, 0, 0, 0], 0);
}

/// Removes the device from the kernel and checks that vscsid answers its commands (with
/// some error) instead of hanging, and keeps serving.
fn removal_check(p: &mut Probe, device: &std::path::Path) {
    let name = device
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let class = if name.starts_with("sg") {
        "scsi_generic"
    } else {
        "block"
    };
    let delete = PathBuf::from(format!("/sys/class/{class}/{name}/device/delete"));
    let deleted = std::fs::write(&delete, "1").is_ok();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    p.fe.timeout = Duration::from_secs(20);
    let r = p.via_vscsid(&rw10(0x28, 0, 1), &[], 512);
    let took = start.elapsed();
    let answered = r.as_ref().is_some_and(|r| r.response != 0 || r.status != 0);
    p.check(
        "pt-removed-device-answered",
        deleted && answered,
        &format!(
            "deleted {deleted}, answer {:?} after {} ms",
            r.as_ref().map(|r| (r.response, r.status, key_of(&r.sense))),
            took.as_millis()
        ),
    );
    let r = p.via_vscsid(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    p.check(
        "pt-daemon-serves-after-removal",
        r.is_some_and(|r| r.response == 0 && r.status == 0),
        "REPORT LUNS answered",
    );
}

/// The SCSI host a device hangs off, from its sysfs link (`.../hostN/targetN:0:0/...`).
fn scsi_host_of(device: &std::path::Path) -> Option<String> {
    let name = device.file_name()?.to_str()?;
    let class = if name.starts_with("sg") {
        "scsi_generic"
    } else {
        "block"
    };
    let link = std::fs::canonicalize(format!("/sys/class/{class}/{name}/device")).ok()?;
    link.components()
        .filter_map(|c| c.as_os_str().to_str())
        .find(|c| c.starts_with("host") && c[4..].chars().all(|d| d.is_ascii_digit()))
        .map(String::from)
}

/// After [`removal_check`]: the host is scanned again, the device comes back under the
/// same path, and vscsid serves it again on its own (it opens the path again at most once
/// a second): a READ through vscsid is GOOD (unit attentions of the new device taken)
/// and returns what the device itself returns.
fn return_check(p: &mut Probe, device: &std::path::Path, host: Option<String>) {
    let Some(host) = host else {
        p.check("pt-device-back", false, "no SCSI host found for the device");
        return;
    };
    // The kernel gives the device's name to the returning device only once nobody holds
    // the old one open: the probe lets go of it (vscsid did when it saw it gone).
    match File::open("/dev/null") {
        Ok(f) => p.dev = f,
        Err(e) => {
            p.check("pt-device-back", false, &format!("/dev/null: {e}"));
            return;
        }
    }
    // The sg driver frees the name in a work item after the last close: let it run.
    std::thread::sleep(Duration::from_secs(1));
    let scanned = std::fs::write(format!("/sys/class/scsi_host/{host}/scan"), "- - -").is_ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reopened = None;
    while Instant::now() < deadline {
        if let Ok(f) = OpenOptions::new().read(true).write(true).open(device) {
            reopened = Some(f);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(dev) = reopened else {
        let present: Vec<String> = std::fs::read_dir("/sys/class/scsi_generic")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        p.check(
            "pt-device-back",
            false,
            &format!(
                "scan of {host} written {scanned}; {} never came back (sg devices now: {present:?})",
                device.display()
            ),
        );
        return;
    };
    p.dev = dev;
    let start = Instant::now();
    let mut last = None;
    let mut good = false;
    for _ in 0..100 {
        let r = p.via_vscsid(&rw10(0x28, 0, 1), &[], 512);
        good = r.as_ref().is_some_and(|r| r.response == 0 && r.status == 0);
        last = r.map(|r| (r.response, r.status, key_of(&r.sense)));
        if good {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    p.check(
        "pt-device-back",
        good,
        &format!(
            "{} back after a scan of {host}; vscsid READ {last:?} after {} ms",
            device.display(),
            start.elapsed().as_millis()
        ),
    );
    if good {
        p.same_both_ways("pt-read-after-return", &rw10(0x28, 0, 8), 8 * 512);
    }
}

/// How many 4 KiB reads at random offsets a way of sending them completes in `for`.
struct Rate {
    name: &'static str,
    ios: u64,
    secs: f64,
}

impl Rate {
    fn iops(&self) -> f64 {
        self.ios as f64 / self.secs
    }
}

fn random_read(lba_range: u32, rng: &mut u64) -> [u8; 10] {
    // xorshift: reproducible, no dependency.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    rw10(0x28, ((*rng % u64::from(lba_range.max(1))) as u32) & !7, 8)
}

/// The sg driver's asynchronous interface (write() queues a command, read() returns a
/// finished one), `depth` commands in flight, each with its own buffer.
fn sg_async_rate(dev: &File, lba_range: u32, depth: usize, run: Duration) -> std::io::Result<u64> {
    let mut bufs = vec![vec![0u8; 4096]; depth];
    let mut cdbs = vec![[0u8; 10]; depth];
    let mut senses = vec![[0u8; 32]; depth];
    let mut rng = 0x1234_5678_u64;
    let header =
        |i: usize, bufs: &mut [Vec<u8>], cdbs: &[[u8; 10]], senses: &mut [[u8; 32]]| SgIoHdr {
            interface_id: i32::from(b'S'),
            dxfer_direction: SG_DXFER_FROM_DEV,
            cmd_len: 10,
            mx_sb_len: 32,
            iovec_count: 0,
            dxfer_len: 4096,
            dxferp: bufs[i].as_mut_ptr().cast(),
            cmdp: cdbs[i].as_ptr(),
            sbp: senses[i].as_mut_ptr(),
            timeout: 20_000,
            flags: 0,
            pack_id: i as i32,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        };
    let size = std::mem::size_of::<SgIoHdr>();
    let submit = |h: &SgIoHdr| -> std::io::Result<()> {
        // SAFETY: write() hands the sg driver a header whose buffers (bufs, cdbs, senses)
        // live until this function returns, after every command was read back.
        let n = unsafe { libc::write(dev.as_raw_fd(), (h as *const SgIoHdr).cast(), size) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    for i in 0..depth {
        cdbs[i] = random_read(lba_range, &mut rng);
        submit(&header(i, &mut bufs, &cdbs, &mut senses))?;
    }
    let start = Instant::now();
    let mut done = 0u64;
    let mut outstanding = depth;
    while outstanding > 0 {
        let mut h = header(0, &mut bufs, &cdbs, &mut senses);
        // SAFETY: read() fills the header of a finished command (its pack_id tells which).
        let n = unsafe { libc::read(dev.as_raw_fd(), (&mut h as *mut SgIoHdr).cast(), size) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        outstanding -= 1;
        done += 1;
        let i = usize::try_from(h.pack_id).unwrap_or(0).min(depth - 1);
        if start.elapsed() < run {
            cdbs[i] = random_read(lba_range, &mut rng);
            submit(&header(i, &mut bufs, &cdbs, &mut senses))?;
            outstanding += 1;
        }
    }
    Ok(done)
}

/// 4 KiB random reads, `depth` in flight through vscsid.
fn vscsid_rate(p: &mut Probe, lba_range: u32, depth: usize, run: Duration) -> u64 {
    let mut rng = 0x8765_4321_u64;
    let cdbs: Vec<[u8; 10]> = (0..4096)
        .map(|_| random_read(lba_range, &mut rng))
        .collect();
    let mut next = 0usize;
    let mut outstanding = 0;
    let mut done = 0u64;
    let start = Instant::now();
    let deadline = start + run + Duration::from_secs(20);
    for _ in 0..depth {
        let req = VirtioScsiRequest {
            lun: lun_address(0, 0),
            tag: next as u64,
            cdb: &cdbs[next % cdbs.len()],
            data_out: &[],
            data_in_len: 4096,
        };
        next += 1;
        if p.fe.submit(2, &req).is_ok() {
            outstanding += 1;
        }
    }
    while outstanding > 0 && Instant::now() < deadline {
        let Some(_) = p.fe.complete(2) else {
            std::hint::spin_loop();
            continue;
        };
        outstanding -= 1;
        done += 1;
        if start.elapsed() < run {
            let req = VirtioScsiRequest {
                lun: lun_address(0, 0),
                tag: next as u64,
                cdb: &cdbs[next % cdbs.len()],
                data_out: &[],
                data_in_len: 4096,
            };
            next += 1;
            if p.fe.submit(2, &req).is_ok() {
                outstanding += 1;
            }
        }
    }
    done
}

/// What the daemon's SG_IO helper pool costs, against the device's own interfaces from
/// the same guest: 4 KiB random reads of a scsi_debug disk (RAM, so the interfaces' cost
/// is what is measured) at queue depth 1 and 8, synchronous SG_IO and the sg driver's
/// asynchronous write()/read() straight to the device, and through vscsid. Prints one
/// `VSCSID-BENCH <name> <IOPS>` line each.
fn bench(p: &mut Probe, seconds: u64) {
    let run = Duration::from_secs(seconds);
    let cap = p
        .via_vscsid(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8)
        .and_then(|r| {
            r.data_in
                .get(0..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        })
        .unwrap_or(0);
    let range = cap.saturating_sub(8);
    let mut rates = Vec::new();
    let mut rng = 0x55aa_u64;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run {
        if sg_io(&p.dev, &random_read(range, &mut rng), &[], 4096).is_err() {
            break;
        }
        n += 1;
    }
    rates.push(Rate {
        name: "device-sg_io-qd1",
        ios: n,
        secs: start.elapsed().as_secs_f64(),
    });
    for (name, depth) in [("device-sg-async-qd1", 1), ("device-sg-async-qd8", 8)] {
        let start = Instant::now();
        let n = sg_async_rate(&p.dev, range, depth, run).unwrap_or(0);
        rates.push(Rate {
            name,
            ios: n,
            secs: start.elapsed().as_secs_f64(),
        });
    }
    for (name, depth) in [("vscsid-qd1", 1), ("vscsid-qd8", 8)] {
        let start = Instant::now();
        let n = vscsid_rate(p, range, depth, run);
        rates.push(Rate {
            name,
            ios: n,
            secs: start.elapsed().as_secs_f64(),
        });
    }
    for r in &rates {
        println!("VSCSID-BENCH {}{} {:.0}", p.prefix, r.name, r.iops());
    }
    let all_ran = rates.iter().all(|r| r.ios > 0);
    let summary: Vec<String> = rates
        .iter()
        .map(|r| format!("{} {:.0}", r.name, r.iops()))
        .collect();
    p.check("pt-bench-ran", all_ran, &summary.join(", "));
}

fn main() {
    let mut socket = None;
    let mut device = None;
    let mut mode = String::from("disk");
    let mut delete_after = false;
    let mut rescan_after = false;
    let mut bench_secs: Option<u64> = None;
    let mut prefix = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from),
            "--device" => device = args.next().map(PathBuf::from),
            "--mode" => mode = args.next().unwrap_or_default(),
            "--delete-after" => delete_after = true,
            "--rescan-after" => rescan_after = true,
            "--bench" => bench_secs = args.next().and_then(|v| v.parse().ok()),
            "--prefix" => prefix = args.next().unwrap_or_default(),
            other => {
                eprintln!("passthrough_check: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let (Some(socket), Some(device)) = (socket, device) else {
        eprintln!(
            "usage: passthrough_check --socket S --device D --mode disk|tape [--delete-after [--rescan-after]]"
        );
        std::process::exit(2);
    };
    let dev = match OpenOptions::new().read(true).write(true).open(&device) {
        Ok(f) => f,
        Err(e) => {
            println!(
                "VSCSID-CHECK {prefix}pt-device FAIL {}: {e}",
                device.display()
            );
            std::process::exit(1);
        }
    };
    let opts = ConnectOptions {
        memory_size: 64 << 20,
        ..ConnectOptions::default()
    };
    let fe = match ScsiFrontend::connect(&socket, &opts) {
        Ok(fe) => fe,
        Err(e) => {
            println!(
                "VSCSID-CHECK {prefix}pt-connect FAIL {}: {e}",
                socket.display()
            );
            std::process::exit(1);
        }
    };
    let mut p = Probe {
        fe,
        dev,
        failed: false,
        prefix,
    };
    p.fe.timeout = Duration::from_secs(30);
    p.take_unit_attentions();
    match mode.as_str() {
        "tape" => tape_checks(&mut p),
        _ => disk_checks(&mut p),
    }
    if let Some(secs) = bench_secs {
        bench(&mut p, secs);
    }
    if delete_after {
        let host = scsi_host_of(&device);
        removal_check(&mut p, &device);
        if rescan_after {
            return_check(&mut p, &device, host);
        }
    }
    std::process::exit(i32::from(p.failed));
}
