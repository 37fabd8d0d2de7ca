//! One SCSI command run on a LUN through the LUN interface, as a worker runs it but
//! without virtio: the LUN table answers REPORT LUNS and missing LUNs, the LUN (emulated
//! disk on a memfd image, or the null LUN) decodes the CDB and runs its block I/O on a real
//! io_uring until it answers.
//!
//! Input: byte 0 picks the LUN (low two bits index [`crate::luns::LUNS`], bit 2 addresses
//! a LUN the target lacks); bytes 1-2 are the data-in buffer length (little-endian); bytes
//! 3-34 the CDB; the rest is the data-out buffer.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use vscsid::backend::guest::{DataBuffers, GuestData, Mem, SegList, Segment};
use vscsid::backend::BlockIo;
use vscsid::lun::{
    answer_emulated, build_lun_table, Command, Lun, LunTable, ReplyLater, Route, Step, Task,
};
use vscsid::scsi::task::{Completer, TaskAttr};
use vscsid::scsi::DATA_IN_SCRATCH;

use crate::{wait_readable, HANG_BOUND};

/// Header bytes before the data-out.
pub const HEADER: usize = 35;
const OUT_AT: u64 = 0;
const IN_AT: u64 = 0x10_0000;
const MEM_BYTES: usize = 0x20_0000;

/// Builds an input: LUN selector, data-in length, CDB (padded to 32 bytes), data-out.
pub fn input(lun: u8, data_in: u16, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
    let mut v = vec![lun];
    v.extend_from_slice(&data_in.to_le_bytes());
    let mut c = [0u8; 32];
    let n = cdb.len().min(32);
    c[..n].copy_from_slice(&cdb[..n]);
    v.extend_from_slice(&c);
    v.extend_from_slice(data_out);
    v
}

/// Emulated LUNs never forward.
struct NoRemote;

impl ReplyLater for NoRemote {
    fn callback(&self, _id: usize) -> Completer {
        Completer::new(|_| panic!("an emulated LUN forwarded a command"))
    }
}

/// The LUN table, a worker's block I/O and guest memory, built once per process.
pub struct CdbHarness {
    table: LunTable<Lun>,
    block: BlockIo,
    mem: GuestMemoryAtomic<Mem>,
    scratch: Vec<u8>,
    _images: Vec<OwnedFd>,
}

fn one_segment(at: u64, len: usize) -> SegList {
    let mut l = SegList::with_capacity(1);
    if len > 0 {
        l.push(Segment {
            addr: GuestAddress(at),
            len: len as u32,
        });
    }
    l
}

impl CdbHarness {
    pub fn new() -> CdbHarness {
        let (cfg, images) = crate::luns::config(1, 16);
        let table = build_lun_table(&cfg).expect("LUN table");
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_BYTES)]).expect("memory"),
        );
        CdbHarness {
            table,
            block: BlockIo::new(4, 1).expect("io_uring"),
            mem,
            scratch: vec![0u8; DATA_IN_SCRATCH],
            _images: images,
        }
    }

    /// Runs one input's command to its answer; panics on a hang or a leaked count.
    pub fn run(&mut self, data: &[u8]) {
        if data.len() < HEADER {
            return;
        }
        let pick = data[0];
        let data_in_len = usize::from(u16::from_le_bytes([data[1], data[2]]));
        let mut cdb = [0u8; 32];
        cdb.copy_from_slice(&data[3..HEADER]);
        let data_out = &data[HEADER..];
        let (target, lun) = crate::luns::LUNS[usize::from(pick & 3)];
        let lun = if pick & 4 != 0 { lun + 7 } else { lun };
        let addr = crate::luns::lun_address(target, lun);

        let guard = self.mem.memory();
        let out_len = data_out.len().min(IN_AT as usize);
        guard
            .write_slice(&data_out[..out_len], GuestAddress(OUT_AT))
            .expect("data-out");
        let out = one_segment(OUT_AT, out_len);
        let inn = one_segment(IN_AT, data_in_len);
        let buffers = || DataBuffers {
            out: GuestData::new(&guard, &out, 0),
            inn: GuestData::new(&guard, &inn, 0),
            guard: &guard,
        };

        let route = self.table.route(&addr);
        let room = data_in_len.min(DATA_IN_SCRATCH);
        let scratch = &mut self.scratch[..room];
        if let Some(outcome) = self.table.target_command(&route, &cdb, scratch) {
            let _ = answer_emulated(outcome, scratch, buffers().inn);
            return;
        }
        let Route::Lun { lun, .. } = route else {
            return;
        };
        let lun = lun.clone();
        let mut task = Task::default();
        let cmd = Command {
            cdb: &cdb,
            task_attr: TaskAttr::Simple,
        };
        let (mut step, _) = lun.start(
            &cmd,
            &mut task,
            0,
            &mut self.block,
            buffers(),
            scratch,
            &NoRemote,
            false,
        );
        let deadline = Instant::now() + HANG_BOUND;
        let mut reaped: Vec<i32> = Vec::new();
        loop {
            match step {
                Step::Done(_) => break,
                Step::Pending => {
                    self.block.submit();
                    reaped.clear();
                    self.block.reap(|_, res| reaped.push(res));
                    if reaped.is_empty() {
                        assert!(
                            Instant::now() < deadline,
                            "hang: block I/O of {:#04x} never completed",
                            cdb[0]
                        );
                        wait_readable(self.block.eventfd(), Duration::from_millis(5));
                        continue;
                    }
                    // Every completion goes back to the command, as a worker hands them.
                    for &res in &reaped {
                        step = lun
                            .continue_task(
                                &mut task,
                                Some(res),
                                0,
                                &mut self.block,
                                buffers(),
                                &NoRemote,
                            )
                            .0;
                        if !matches!(step, Step::Pending) {
                            break;
                        }
                    }
                }
                Step::Parked => panic!("a lone command {:#04x} parked at the write gate", cdb[0]),
                Step::Forwarded => panic!("an emulated LUN forwarded {:#04x}", cdb[0]),
            }
        }
        assert_eq!(
            self.block.pending(0),
            0,
            "command {:#04x} answered with block I/O still in the kernel",
            cdb[0]
        );
        lun.end(&mut task);
        self.block.release(0);
        assert_eq!(
            lun.inflight(),
            0,
            "command {:#04x} left the LUN counting it in flight",
            cdb[0]
        );
    }
}

impl Default for CdbHarness {
    fn default() -> Self {
        Self::new()
    }
}
