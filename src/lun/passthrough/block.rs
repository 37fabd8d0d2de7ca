//! The block-passthrough LUN (QEMU's `scsi-block`): a SCSI disk's block device
//! (`/dev/sdX`) behind the LUN. READ and WRITE (6/10/12/16) go through the worker's
//! io_uring with the LUN's cache mode, as on an emulated disk ([`crate::lun::medium`]),
//! checked against the device's size and transfer limit; every other CDB goes to the
//! device with SG_IO ([`super::Forwarder`]), so the guest sees the device's own INQUIRY,
//! VPD pages, mode pages and reservations. While the device is gone, READ and WRITE go
//! the SG_IO way too: that path answers NOT READY and opens the device again, and its
//! reopen also replaces the descriptor io_uring uses.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::pool::{DeviceSpec, Engine, Pool};
use super::reply::DeviceFacts;
use super::{refuse_on_readonly, Forwarder};
use crate::backend::guest::DataBuffers;
use crate::backend::image_lock::{self, LockMode};
use crate::backend::sg_io::{self, DeviceKind};
use crate::backend::{Backing, CacheMode};
use crate::config::LunConfig;
use crate::lun::gate::WriteGate;
use crate::lun::medium::{self, DiskMedium};
use crate::lun::{Answer, Command, IoContext, LunDevice, Step, Task, MAX_TRANSFER_BYTES};
use crate::scsi::cdb::{decode_rw, Rw};
use crate::scsi::task::{ScsiCompletion, TmfFunction, TransportError};
use crate::scsi::{IoRequest, Sense};

/// SG_IO's timeout on a disk: longer than any guest's command timeout, so the guest's
/// task management acts first; it only bounds a device that never answers.
pub const BLOCK_TIMEOUT_MS: u32 = 600_000;

/// Transfer limit when BLKSECTGET says nothing: Linux's default max_sectors (1280 KiB)
/// rounded down.
const FALLBACK_MAX_TRANSFER: u64 = 1 << 20;

pub struct BlockPassthroughLun {
    // Declared (so dropped) before `medium`: the pool stops using the medium's descriptor
    // number before it closes.
    fwd: Forwarder,
    medium: DiskMedium,
    block_size: u64,
    lock: LockMode,
}

/// Opens a SCSI disk's block device; errors are one line naming the LUN and the field.
pub fn open(
    l: &LunConfig,
    path: &Path,
    cache: CacheMode,
    lock_now: bool,
) -> Result<Box<dyn LunDevice>, String> {
    let where_ = format!("target {} LUN {}", l.target, l.lun);
    let shown = path.display();
    // The block device check first (without O_DIRECT, which a character device refuses),
    // for the error an sg or regular path deserves.
    let file = sg_io::open_device(path, DeviceKind::Block, l.readonly, 0)
        .map_err(|e| format!("{where_}: path: {e}"))?;
    if sg_io::sg_version(&file).is_err() {
        return Err(format!(
            "{where_}: path: {shown} does not take SG_IO (not a SCSI disk; use --disk without passthrough)"
        ));
    }
    drop(file);
    let backing = Backing::open(path, cache, l.readonly).map_err(|e| format!("{where_}: {e}"))?;
    if !backing
        .file
        .metadata()
        .is_ok_and(|m| m.file_type().is_block_device())
    {
        return Err(format!("{where_}: path: {shown} is not a block device"));
    }
    let lock = LockMode {
        writable: !l.readonly,
        shared: false,
    };
    if lock_now {
        image_lock::lock(&backing.file, path, lock).map_err(|e| format!("{where_}: {e}"))?;
    }
    let block_size = backing.logical_block_size().unwrap_or(512);
    let max_transfer = sg_io::block_max_transfer(&backing.file)
        .unwrap_or(FALLBACK_MAX_TRANSFER)
        .min(MAX_TRANSFER_BYTES);
    let sg_file = backing
        .file
        .try_clone()
        .map_err(|e| format!("{where_}: {shown}: {e}"))?;
    let spec = DeviceSpec {
        path: path.to_path_buf(),
        kind: DeviceKind::Block,
        readonly: l.readonly,
        extra_flags: cache.open_flags(),
        timeout_ms: BLOCK_TIMEOUT_MS,
    };
    let facts = DeviceFacts::new(
        max_transfer,
        u32::try_from(block_size).unwrap_or(512),
        backing.size / block_size,
    );
    let pool = Pool::start(
        spec,
        sg_file,
        facts,
        Some(backing.file.as_raw_fd()),
        Engine::Threads,
    )
    .map_err(|e| format!("{where_}: {e}"))?;
    tracing::info!(
        "{where_}: block passthrough {shown} cache={cache}, {} blocks of {block_size} bytes, max transfer {max_transfer} bytes",
        backing.size / block_size
    );
    Ok(Box::new(BlockPassthroughLun {
        fwd: Forwarder {
            pool,
            readonly: l.readonly,
        },
        medium: DiskMedium::new(backing, WriteGate::default(), false),
        block_size,
        lock,
    }))
}

/// Why a READ or WRITE is answered without I/O: None when it may go.
fn check_read_write(rw: &Rw, block_size: u64, max_transfer: u64, capacity: u64) -> Option<Sense> {
    let len = u64::from(rw.blocks) * block_size;
    if len > max_transfer {
        return Some(Sense::invalid_field_in_cdb());
    }
    match rw.lba.checked_add(u64::from(rw.blocks)) {
        Some(end) if end <= capacity => None,
        _ => Some(Sense::lba_out_of_range()),
    }
}

impl BlockPassthroughLun {
    fn read_write(&self, rw: Rw, task: &mut Task, io: &mut IoContext<'_>) -> Step {
        if rw.blocks == 0 {
            return Step::Done(Answer::Good { data_in: 0 });
        }
        let facts = self.fwd.pool().facts();
        let capacity = facts.capacity_blocks().unwrap_or(0);
        if let Some(sense) = check_read_write(&rw, self.block_size, facts.max_transfer, capacity) {
            return Step::Done(Answer::Check(sense));
        }
        let (offset, len) = (
            rw.lba * self.block_size,
            u64::from(rw.blocks) * self.block_size,
        );
        let req = if rw.write {
            IoRequest::Write {
                offset,
                len,
                fua: rw.fua,
            }
        } else {
            IoRequest::Read { offset, len }
        };
        // The device's own cache is the guest's to manage (MODE SELECT, SYNCHRONIZE
        // CACHE through SG_IO); FUA is passed on.
        medium::start(&self.medium, req, false, task, io)
    }
}

impl LunDevice for BlockPassthroughLun {
    fn start(&self, cmd: &Command<'_>, task: &mut Task, io: &mut IoContext<'_>) -> Step {
        if let Some(answer) = refuse_on_readonly(self.fwd.readonly(), cmd.cdb) {
            return Step::Done(answer);
        }
        if self.fwd.pool().present() {
            // What the fast decoder refuses (protection information) goes to the device,
            // which decides.
            if let Ok(Some(rw)) = decode_rw(cmd.cdb) {
                return self.read_write(rw, task, io);
            }
        }
        self.fwd.start(cmd, task, io)
    }

    fn io_done(&self, task: &mut Task, res: i32, io: &mut IoContext<'_>) -> Step {
        if res == -libc::ENODEV || res == -libc::ENXIO {
            // Later commands take the SG_IO way, which answers NOT READY and reopens.
            self.fwd.pool().mark_lost();
        }
        medium::on_completion(&self.medium, task, res, io)
    }

    fn resume(&self, task: &mut Task, io: &mut IoContext<'_>) -> Step {
        medium::resume(&self.medium, task, io)
    }

    fn end(&self, task: &mut Task) -> bool {
        medium::leave_gate(&self.medium, task)
    }

    fn remote_done(&self, task: &mut Task, c: ScsiCompletion, data: DataBuffers<'_>) -> Answer {
        self.fwd.remote_done(c, data, task.direct_data)
    }

    fn forwards_task_management(&self) -> bool {
        true
    }

    fn forward_task_management(
        &self,
        f: TmfFunction,
        remote_id: Option<u64>,
    ) -> Option<Result<u8, TransportError>> {
        Some(self.fwd.task_management(f, remote_id))
    }

    fn make_durable(&self) {
        if !self.medium.backing.readonly {
            let _ = self.medium.backing.file.sync_data();
        }
    }

    fn activate(&self) -> Result<(), String> {
        let b = &self.medium.backing;
        image_lock::lock(&b.file, &b.path, self.lock).map_err(|e| e.to_string())
    }

    fn deactivate(&self) {
        image_lock::unlock(&self.medium.backing.file);
    }

    fn describe(&self) -> String {
        let b = &self.medium.backing;
        format!(
            "block passthrough {} cache={}{}",
            b.path.display(),
            b.cache,
            if self.fwd.readonly() {
                ", read-only"
            } else {
                ""
            }
        )
    }

    fn detail_lines(&self) -> Vec<String> {
        vec![self.fwd.detail()]
    }

    fn backing_path(&self) -> Option<PathBuf> {
        Some(self.medium.backing.path.clone())
    }

    fn writable(&self) -> bool {
        !self.fwd.readonly()
    }

    fn capacity(&self) -> Option<(u64, u32)> {
        let blocks = self.fwd.pool().facts().capacity_blocks()?;
        let bs = u32::try_from(self.block_size).ok()?;
        Some((blocks * self.block_size, bs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_are_checked_against_the_device() {
        let rw = |lba, blocks| Rw {
            lba,
            blocks,
            fua: false,
            write: false,
        };
        // 1 MiB limit, 512-byte blocks, 1000 blocks.
        let check = |r: Rw| check_read_write(&r, 512, 1 << 20, 1000);
        assert_eq!(check(rw(0, 1000)), None);
        assert_eq!(check(rw(999, 1)), None);
        assert_eq!(check(rw(999, 2)), Some(Sense::lba_out_of_range()));
        assert_eq!(check(rw(u64::MAX, 1)), Some(Sense::lba_out_of_range()));
        assert_eq!(check_read_write(&rw(0, 2048), 512, 1 << 20, 1 << 30), None);
        assert_eq!(
            check_read_write(&rw(0, 2049), 512, 1 << 20, 1 << 30),
            Some(Sense::invalid_field_in_cdb()),
            "beyond the transfer limit: refused, not split"
        );
    }

    fn config() -> LunConfig {
        LunConfig::disk(0, 1, PathBuf::new())
    }

    #[test]
    fn only_a_scsi_disks_block_device_opens() {
        let e = open(&config(), Path::new("/dev/null"), CacheMode::None, false)
            .err()
            .expect("/dev/null");
        assert_eq!(e, "target 0 LUN 1: path: /dev/null is not a block device");
        let f = tempfile::NamedTempFile::new().expect("tmp");
        let e = open(&config(), f.path(), CacheMode::None, false)
            .err()
            .expect("a file");
        assert!(e.ends_with("is not a block device"), "{e}");
        let e = open(
            &config(),
            Path::new("/nonexistent/sdz"),
            CacheMode::None,
            false,
        )
        .err()
        .expect("missing");
        assert_eq!(e, "target 0 LUN 1: path: /nonexistent/sdz does not exist");
    }
}
