//! Power loss: what vscsid acknowledged as durable is there after the power is cut.
//!
//! Each LUN's image lives on a loop-mounted ext4. Once the frontend has its answers, the
//! file system is shut down without writing back its page cache or journal
//! (EXT4_IOC_SHUTDOWN, NOLOGFLUSH), the daemon is killed, the file system is mounted again
//! and the image read back. For every cache mode, each way of making data durable must
//! have kept its data; a plain write under `writeback` that was never flushed is expected
//! to be gone, which shows the method can see a loss at all. README "Durability" lists the
//! guarantees this checks. Needs root, mkfs.ext4 and mount.

mod common;

use common::ext4::{write_durably, Ext4};
use common::*;
use vscsid::frontend::{ScsiFrontend, VirtioScsiRequest};

const BLOCK: usize = 512;
/// Blocks each method writes, each at its own LBA range.
const BLOCKS: u32 = 8;
const OLD: u8 = 0xaa;

/// How a method leaves its range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// The new data (or zeroes) must be there.
    Durable,
    /// The old data must be back: nothing made it durable.
    Lost,
    /// Either: the method promised nothing, and the medium may have kept it anyway.
    Unspecified,
}

#[derive(Clone, Copy, Debug)]
enum Method {
    /// WRITE(16), no FUA, no flush.
    PlainWrite,
    FuaWrite,
    WriteThenSync,
    /// WRITE SAME(16) of a zero block, no UNMAP.
    WriteSameZeroes,
    WriteSameZeroesThenSync,
    Unmap,
    UnmapThenSync,
    CompareAndWrite,
    CompareAndWriteFua,
}

const METHODS: [Method; 9] = [
    Method::PlainWrite,
    Method::FuaWrite,
    Method::WriteThenSync,
    Method::WriteSameZeroes,
    Method::WriteSameZeroesThenSync,
    Method::Unmap,
    Method::UnmapThenSync,
    Method::CompareAndWrite,
    Method::CompareAndWriteFua,
];

impl Method {
    /// What `cache` promises for this method (QEMU's cache mode semantics).
    fn expect(self, cache: &str) -> Expect {
        let write_cache_off = matches!(cache, "writethrough" | "directsync");
        let flushes = cache != "unsafe";
        let explicit = matches!(
            self,
            Method::FuaWrite
                | Method::WriteThenSync
                | Method::WriteSameZeroesThenSync
                | Method::UnmapThenSync
                | Method::CompareAndWriteFua
        );
        if (explicit && flushes) || write_cache_off {
            Expect::Durable
        } else if cache == "writeback" && matches!(self, Method::PlainWrite) {
            // In the host page cache only: a power cut takes it.
            Expect::Lost
        } else {
            Expect::Unspecified
        }
    }

    /// What the range holds when the method's data survived.
    fn new_data(self, lba: u64) -> Vec<u8> {
        match self {
            Method::WriteSameZeroes
            | Method::WriteSameZeroesThenSync
            | Method::Unmap
            | Method::UnmapThenSync => vec![0u8; BLOCKS as usize * BLOCK],
            Method::CompareAndWrite | Method::CompareAndWriteFua => {
                let mut d = vec![OLD; BLOCKS as usize * BLOCK];
                d[..BLOCK].copy_from_slice(&pattern(lba, BLOCK));
                d
            }
            _ => pattern(lba, BLOCKS as usize * BLOCK),
        }
    }

    fn run(self, fe: &mut ScsiFrontend, lba: u64) {
        let data = self.new_data(lba);
        let send = |fe: &mut ScsiFrontend, cdb: &[u8], out: &[u8]| {
            let r = fe
                .command(&VirtioScsiRequest {
                    lun: lun(0),
                    tag: lba,
                    cdb,
                    data_out: out,
                    data_in_len: 0,
                })
                .expect("answer");
            good(&r);
        };
        let sync = |fe: &mut ScsiFrontend| send(fe, &synchronize_cache10(), &[]);
        match self {
            Method::PlainWrite | Method::FuaWrite | Method::WriteThenSync => {
                let mut c = write16(lba, BLOCKS);
                if matches!(self, Method::FuaWrite) {
                    c[1] |= 0x08;
                }
                send(fe, &c, &data);
                if matches!(self, Method::WriteThenSync) {
                    sync(fe);
                }
            }
            Method::WriteSameZeroes | Method::WriteSameZeroesThenSync => {
                send(fe, &write_same16(lba, BLOCKS), &[0u8; BLOCK]);
                if matches!(self, Method::WriteSameZeroesThenSync) {
                    sync(fe);
                }
            }
            Method::Unmap | Method::UnmapThenSync => {
                let (c, list) = unmap(lba, BLOCKS);
                send(fe, &c, &list);
                if matches!(self, Method::UnmapThenSync) {
                    sync(fe);
                }
            }
            Method::CompareAndWrite | Method::CompareAndWriteFua => {
                let mut c = compare_and_write(lba, 1);
                if matches!(self, Method::CompareAndWriteFua) {
                    c[1] |= 0x08;
                }
                let mut out = vec![OLD; BLOCK];
                out.extend_from_slice(&data[..BLOCK]);
                send(fe, &c, &out);
            }
        }
    }
}

/// Runs `method` on a fresh LUN in `cache` mode, cuts the power, and tells whether its
/// range holds the new data and whether it holds the old data afterwards. One file system
/// per method: a journal commit or a flush for one command would make another's metadata
/// durable too and hide a missing one.
fn survives(cache: &str, method: Method) -> (bool, bool) {
    let fs = Ext4::new();
    let image = fs.file("lun.img");
    let size = 4 * BLOCKS as usize * BLOCK;
    write_durably(&image, &vec![OLD; size]);
    let name = image.to_str().unwrap().to_string();
    let opts = format!("cache={cache}");
    let mut d = Daemon::start(
        &[Disk {
            name: &name,
            size: size as u64,
            opts: &opts,
        }],
        &[],
    );
    let mut fe = d.connect(1);
    let lba = u64::from(BLOCKS);
    method.run(&mut fe, lba);
    fs.cut_power();
    let _ = d.child.kill();
    let _ = d.child.wait();
    drop(fe);
    fs.remount();
    let back = std::fs::read(&image).expect("read the image back");
    let at = lba as usize * BLOCK;
    let got = &back[at..at + BLOCKS as usize * BLOCK];
    let untouched = back[..at]
        .iter()
        .chain(&back[at + got.len()..])
        .all(|&b| b == OLD);
    assert!(
        untouched,
        "cache={cache} {method:?}: blocks outside the range changed"
    );
    (
        got == method.new_data(lba).as_slice(),
        got.iter().all(|&b| b == OLD),
    )
}

fn check(cache: &str) {
    let mut wrong = Vec::new();
    for m in METHODS {
        let expect = m.expect(cache);
        let (kept, old) = survives(cache, m);
        let ok = match expect {
            Expect::Durable => kept,
            Expect::Lost => old,
            Expect::Unspecified => kept || old,
        };
        if !ok {
            wrong.push(format!(
                "{m:?}: expected {expect:?}, new data {kept}, old data {old}"
            ));
        }
    }
    assert!(wrong.is_empty(), "cache={cache}:\n{}", wrong.join("\n"));
}

#[test]
fn writeback() {
    check("writeback");
}

#[test]
fn writethrough() {
    check("writethrough");
}

#[test]
fn none() {
    check("none");
}

#[test]
fn directsync() {
    check("directsync");
}

#[test]
fn unsafe_mode_promises_nothing_but_keeps_its_data_consistent() {
    check("unsafe");
}
