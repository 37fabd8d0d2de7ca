//! The LUN interface driven directly, without virtio: a disk LUN on a temporary file, guest
//! memory from vm-memory, a real io_uring. These show what a worker relies on: commands
//! go Pending and finish through `continue_task`, writes park behind a COMPARE AND WRITE,
//! in-flight counts drop when commands end, task management waits for them.

use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tmf::{TaskManagement, TmfAnswer, TmfRequest};
use super::*;
use crate::backend::guest::{Mem, SegList, Segment};
use crate::backend::CacheMode;
use crate::config::{Config, LunConfig, LunKind};
use crate::scsi::cdb;

const OUT_AT: u64 = 0x10000;
const IN_AT: u64 = 0x40000;
const BUF: u32 = 0x20000;

/// Forwarded commands are not expected here.
struct NoReply;

impl ReplyLater for NoReply {
    fn callback(&self, _id: usize) -> Completer {
        Completer::new(|_| {})
    }
}

struct Harness {
    dir: tempfile::TempDir,
    /// Block I/O completions handled so far.
    completions: usize,
    lun: Arc<Lun>,
    block: BlockIo,
    mem: GuestMemoryAtomic<Mem>,
    out: SegList,
    inn: SegList,
}

/// One command id's buffers in guest memory: data-out and data-in of `BUF` bytes each,
/// the second command's right after the first's.
fn segs(at: u64) -> SegList {
    let mut l = SegList::with_capacity(1);
    l.push(Segment {
        addr: GuestAddress(at),
        len: BUF,
    });
    l
}

fn harness(kind: Option<LunKind>) -> Harness {
    harness_with(|l| {
        if let Some(k) = kind {
            l.kind = k;
        }
    })
}

/// A LUN on a fresh 1 MiB image, its configuration adjusted by `edit`.
fn harness_with(edit: impl FnOnce(&mut LunConfig)) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("d.img");
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(1 << 20))
        .expect("img");
    let mut l = LunConfig::disk(0, 0, p);
    edit(&mut l);
    let mut cfg = Config::default();
    cfg.luns.push(l);
    let table = build_lun_table(&cfg).expect("table");
    let lun = table.luns().next().map(|(_, _, l)| l.clone()).expect("lun");
    let mem = GuestMemoryAtomic::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem"),
    );
    Harness {
        dir,
        completions: 0,
        lun,
        block: BlockIo::new(4, 1).expect("ring"),
        mem,
        out: segs(OUT_AT),
        inn: segs(IN_AT),
    }
}

fn cdb16(op: u8, lba: u64, blocks: u32) -> [u8; 32] {
    let mut c = [0u8; 32];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

impl Harness {
    /// Starts command `id` (its buffers shifted by `id * BUF`), with `out` as data-out.
    fn start(&mut self, id: usize, task: &mut Task, cdb: &[u8; 32], out: &[u8]) -> Step {
        let guard = self.mem.memory();
        let shift = id as u64 * 2 * u64::from(BUF);
        guard
            .write_slice(out, GuestAddress(OUT_AT + shift))
            .expect("data-out");
        self.out = segs(OUT_AT + shift);
        self.inn = segs(IN_AT + shift);
        let data = DataBuffers {
            out: GuestData::new(&guard, &self.out, 0),
            inn: GuestData::new(&guard, &self.inn, 0),
            guard: &guard,
        };
        let mut scratch = vec![0u8; 4096];
        let cmd = Command {
            cdb,
            task_attr: TaskAttr::Simple,
        };
        let (step, _) = self.lun.start(
            &cmd,
            task,
            id,
            &mut self.block,
            data,
            &mut scratch,
            &NoReply,
            false,
        );
        step
    }

    /// Continues command `id` with a completion or a retry at the gate.
    fn advance(&mut self, id: usize, task: &mut Task, res: Option<i32>) -> Step {
        let guard = self.mem.memory();
        let shift = id as u64 * 2 * u64::from(BUF);
        let (out, inn) = (segs(OUT_AT + shift), segs(IN_AT + shift));
        let data = DataBuffers {
            out: GuestData::new(&guard, &out, 0),
            inn: GuestData::new(&guard, &inn, 0),
            guard: &guard,
        };
        let (step, _) = self
            .lun
            .continue_task(task, res, id, &mut self.block, data, &NoReply);
        step
    }

    /// Runs command `id`'s block I/O to its answer (bounded).
    fn finish(&mut self, id: usize, task: &mut Task, mut step: Step) -> Answer {
        for _ in 0..10_000 {
            match step {
                Step::Done(a) => return a,
                Step::Pending => {
                    self.block.submit();
                    let mut got = Vec::new();
                    self.block.reap(|i, res| got.push((i, res)));
                    match got.first() {
                        Some(&(i, res)) => {
                            assert_eq!(i, id, "completion of another command");
                            self.completions += 1;
                            step = self.advance(id, task, Some(res));
                        }
                        None => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                Step::Parked | Step::Forwarded => panic!("unexpected step"),
            }
        }
        panic!("command did not finish");
    }

    fn run(&mut self, cdb: &[u8; 32], out: &[u8]) -> Answer {
        let mut task = Task::default();
        let step = self.start(0, &mut task, cdb, out);
        let answer = self.finish(0, &mut task, step);
        self.lun.end(&mut task);
        self.block.release(0);
        answer
    }

    fn data_in(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, GuestAddress(IN_AT))
            .expect("data-in");
        v
    }
}

#[test]
fn writes_read_back_through_block_io() {
    let mut h = harness(None);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let w = h.run(&cdb16(cdb::WRITE_16, 8, 2), &data);
    assert_eq!(w, Answer::Good { data_in: 0 });
    let r = h.run(&cdb16(cdb::READ_16, 8, 2), &[]);
    assert_eq!(r, Answer::Good { data_in: 1024 });
    assert_eq!(h.data_in(1024), data);
    assert_eq!(h.lun.inflight(), 0);
    // Past the end: answered at once, nothing in flight.
    let mut task = Task::default();
    let step = h.start(0, &mut task, &cdb16(cdb::READ_16, 2047, 2), &[]);
    assert!(matches!(
        step,
        Step::Done(Answer::Check(s)) if s == Sense::lba_out_of_range()
    ));
    assert!(!task.held);
}

#[test]
fn compare_and_write_compares_then_writes() {
    let mut h = harness(None);
    let old = [0x11u8; 512];
    h.run(&cdb16(cdb::WRITE_16, 4, 1), &old);
    let mut caw = [0u8; 32];
    caw[0] = cdb::COMPARE_AND_WRITE;
    caw[2..10].copy_from_slice(&4u64.to_be_bytes());
    caw[13] = 1;
    // Wrong expectation at byte 100: MISCOMPARE with that offset, nothing written.
    let mut out = [0x11u8; 1024];
    out[100] = 0;
    out[512..].fill(0x22);
    assert_eq!(h.run(&caw, &out), Answer::Check(Sense::miscompare(100)));
    h.run(&cdb16(cdb::READ_16, 4, 1), &[]);
    assert_eq!(h.data_in(512), old.to_vec());
    out[100] = 0x11;
    assert_eq!(h.run(&caw, &out), Answer::Good { data_in: 0 });
    h.run(&cdb16(cdb::READ_16, 4, 1), &[]);
    assert_eq!(h.data_in(512), vec![0x22u8; 512]);
}

#[test]
fn a_write_parks_while_compare_and_write_holds_the_gate() {
    let mut h = harness(None);
    let mut caw = [0u8; 32];
    caw[0] = cdb::COMPARE_AND_WRITE;
    caw[13] = 1;
    let mut caw_task = Task::default();
    let caw_step = h.start(0, &mut caw_task, &caw, &[0u8; 1024]);
    assert!(matches!(caw_step, Step::Pending));
    // A write from another command waits at the closed gate.
    let mut w_task = Task::default();
    let w_step = h.start(1, &mut w_task, &cdb16(cdb::WRITE_16, 0, 1), &[0x33u8; 512]);
    assert!(matches!(w_step, Step::Parked));
    assert!(matches!(h.advance(1, &mut w_task, None), Step::Parked));
    assert_eq!(h.lun.inflight(), 2);
    assert_eq!(
        h.finish(0, &mut caw_task, caw_step),
        Answer::Good { data_in: 0 }
    );
    assert!(
        h.lun.end(&mut caw_task),
        "the gate opened: parked commands must be woken"
    );
    h.block.release(0);
    let step = h.advance(1, &mut w_task, None);
    assert_eq!(h.finish(1, &mut w_task, step), Answer::Good { data_in: 0 });
    assert!(!h.lun.end(&mut w_task));
    assert_eq!(h.lun.inflight(), 0);
    h.run(&cdb16(cdb::READ_16, 0, 1), &[]);
    assert_eq!(h.data_in(512), vec![0x33u8; 512]);
}

#[test]
fn reset_waits_for_commands_in_flight_and_then_reports_it() {
    let mut h = harness(None);
    let wake = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut task = Task::default();
    let step = h.start(0, &mut task, &cdb16(cdb::WRITE_16, 0, 8), &[1u8; 4096]);
    assert!(matches!(step, Step::Pending));
    let reset = TaskManagement::start(
        TmfRequest::LogicalUnitReset,
        vec![h.lun.clone()],
        |_, _| None,
        &wake,
    );
    assert_eq!(reset.poll(|_, _| false), None, "a write is in flight");
    assert_eq!(h.finish(0, &mut task, step), Answer::Good { data_in: 0 });
    h.lun.end(&mut task);
    h.block.release(0);
    assert_eq!(reset.poll(|_, _| false), Some(TmfAnswer::Complete));
    // The reset is reported once, as UNIT ATTENTION.
    let tur = [0u8; 32];
    assert_eq!(h.run(&tur, &[]), Answer::Check(Sense::reset_occurred()));
    assert_eq!(h.run(&tur, &[]), Answer::Good { data_in: 0 });
}

#[test]
fn a_null_lun_answers_reads_with_zeroes_at_once() {
    let mut h = harness(Some(LunKind::Null { size: 1 << 20 }));
    h.mem
        .memory()
        .write_slice(&[0xffu8; 1024], GuestAddress(IN_AT))
        .expect("dirty");
    let mut task = Task::default();
    let step = h.start(0, &mut task, &cdb16(cdb::READ_16, 0, 2), &[]);
    assert!(matches!(step, Step::Done(Answer::Good { data_in: 1024 })));
    assert_eq!(h.data_in(1024), vec![0u8; 1024]);
    assert!(!task.held);
    assert_eq!(h.block.pending(0), 0);
}

fn disk_with_cache(cache: CacheMode) -> Harness {
    harness_with(|l| {
        if let LunKind::Disk { cache: c, .. } = &mut l.kind {
            *c = cache;
        }
    })
}

/// WRITE SAME(16) of one zero block over `blocks` blocks at `lba`, with UNMAP if asked.
fn write_same_zeroes(lba: u64, blocks: u32, unmap: bool) -> [u8; 32] {
    let mut c = cdb16(cdb::WRITE_SAME_16, lba, blocks);
    c[1] = if unmap { 0x08 } else { 0 };
    c
}

#[test]
fn zeroing_and_unmap_are_flushed_when_the_write_cache_is_off() {
    let zero = [0u8; 512];
    let mut unmap = [0u8; 10];
    unmap[0] = cdb::UNMAP;
    unmap[8] = 24;
    let mut list = [0u8; 24];
    list[1] = 22;
    list[3] = 16;
    list[8..16].copy_from_slice(&16u64.to_be_bytes());
    list[16..20].copy_from_slice(&8u32.to_be_bytes());
    let mut unmap_cdb = [0u8; 32];
    unmap_cdb[..10].copy_from_slice(&unmap);
    // Write cache on: the deallocation alone; the guest flushes when it needs to.
    let mut h = disk_with_cache(CacheMode::Writeback);
    let a = h.run(&write_same_zeroes(0, 8, false), &zero);
    assert_eq!((a, h.completions), (Answer::Good { data_in: 0 }, 1));
    // Write cache off (writethrough): O_DSYNC does not cover fallocate, so a flush
    // follows before the answer.
    let mut h = disk_with_cache(CacheMode::Writethrough);
    let a = h.run(&write_same_zeroes(0, 8, false), &zero);
    assert_eq!((a, h.completions), (Answer::Good { data_in: 0 }, 2));
    let a = h.run(&write_same_zeroes(8, 8, true), &zero);
    assert_eq!((a, h.completions), (Answer::Good { data_in: 0 }, 4));
    let a = h.run(&unmap_cdb, &list);
    assert_eq!((a, h.completions), (Answer::Good { data_in: 0 }, 6));
}

/// The descriptor number of the open image file of a harness's disk.
fn image_fd(h: &Harness) -> i32 {
    let image = h.dir.path().join("d.img");
    let fds = std::fs::read_dir("/proc/self/fd").expect("fds");
    fds.filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|p| p == image))
        .and_then(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .expect("image fd")
}

#[test]
fn a_failed_flush_fails_every_later_flush_until_reset() {
    let mut h = disk_with_cache(CacheMode::Writeback);
    let mut sync = [0u8; 32];
    sync[0] = cdb::SYNCHRONIZE_CACHE_10;
    assert_eq!(h.run(&sync, &[]), Answer::Good { data_in: 0 });
    let fd = image_fd(&h);
    let mut pipe = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array it is given; dup duplicates a
    // descriptor this test found open.
    let saved = unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        libc::dup(fd)
    };
    assert!(saved >= 0);
    // The image's descriptor now names a pipe, which cannot be synced: the flush fails,
    // with a write error (acknowledged writes may be lost), not a read error.
    // SAFETY: replaces the image's descriptor with the pipe's read end.
    assert_eq!(unsafe { libc::dup2(pipe[0], fd) }, fd);
    assert_eq!(h.run(&sync, &[]), Answer::Check(Sense::write_error()));
    // The file is back and would sync, but what the failed flush lost is not: every later
    // flush fails too.
    // SAFETY: puts the image's own descriptor back.
    assert_eq!(unsafe { libc::dup2(saved, fd) }, fd);
    assert_eq!(h.run(&sync, &[]), Answer::Check(Sense::write_error()));
    assert_eq!(h.run(&sync, &[]), Answer::Check(Sense::write_error()));
    h.lun.device().reset();
    let tur = [0u8; 32];
    assert_eq!(h.run(&tur, &[]), Answer::Check(Sense::reset_occurred()));
    assert_eq!(h.run(&sync, &[]), Answer::Good { data_in: 0 });
    for d in [saved, pipe[0], pipe[1]] {
        // SAFETY: closes descriptors this test opened.
        unsafe { libc::close(d) };
    }
}
