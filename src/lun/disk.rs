//! The emulated disk LUN: SCSI emulation ([`EmulatedDisk`]) on a file, partition or block
//! device ([`Backing`]), its medium reached through the worker's block I/O ([`medium`]),
//! COMPARE AND WRITE kept atomic by the LUN's [`WriteGate`].

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::gate::WriteGate;
use super::identity::{backing_identity, disk_properties};
use super::medium::{self, DiskMedium};
use super::reservations::{LunReservations, PrStep, ReservationSetup};
use super::{answer_emulated, Answer, Command, IoContext, LunDevice, Step, Task};
use crate::backend::guest::DataBuffers;
use crate::backend::image_lock::{self, LockMode};
use crate::backend::{Backing, CacheMode};
use crate::config::LunConfig;
use crate::scsi::disk::{DiskProperties, EmulatedDisk, UsedBlocks};
use crate::scsi::task::ScsiCompletion;
use crate::scsi::{reservation, status, Outcome, Sense};

pub struct DiskLun {
    disk: EmulatedDisk,
    medium: DiskMedium,
    lock: LockMode,
    reservations: Arc<LunReservations>,
}

/// Opens the backing store of a disk LUN and checks it fits the configured block size.
/// With `lock_now`, the image lock is taken here (and a conflict fails the open);
/// otherwise at [`LunDevice::activate`].
pub fn open(
    l: &LunConfig,
    path: &Path,
    cache: CacheMode,
    lock_now: bool,
    setup: &ReservationSetup,
) -> Result<Box<dyn LunDevice>, String> {
    let where_ = format!("target {} LUN {}", l.target, l.lun);
    let backing = Backing::open(path, cache, l.readonly).map_err(|e| format!("{where_}: {e}"))?;
    let lock = LockMode {
        writable: !l.readonly,
        shared: l.shared,
    };
    if lock_now {
        image_lock::lock(&backing.file, path, lock).map_err(|e| format!("{where_}: {e}"))?;
    }
    let bs = u64::from(l.block_size);
    if backing.size < bs {
        return Err(format!(
            "{where_}: {} is smaller than one {bs}-byte block",
            path.display()
        ));
    }
    if backing.dio_align > bs {
        return Err(format!(
            "{where_}: block-size {bs} is smaller than the {}-byte alignment O_DIRECT needs on {}; use block-size=4096 or another cache mode",
            backing.dio_align,
            path.display()
        ));
    }
    let identity = backing_identity(path);
    let props = disk_properties(
        l,
        backing.size / bs,
        identity.as_os_str().as_encoded_bytes(),
        cache.write_cache_enabled(),
        "VIRTUAL-DISK",
        backing.unmapped_blocks_read_zeroes(),
        backing.rotational(),
    );
    let unmap_zeroes = props.unmap_zeroes;
    let reservations = LunReservations::open(setup, &props.naa.to_string(), l.shared)
        .map_err(|e| format!("{where_}: {e}"))?;
    let mut disk = EmulatedDisk::new(props);
    if let Some(count) = allocated_blocks(&backing, bs) {
        disk = disk.with_used_blocks(count);
    }
    Ok(Box::new(DiskLun {
        reservations,
        disk,
        medium: DiskMedium::new(backing, WriteGate::default(), unmap_zeroes),
        lock,
    }))
}

impl DiskLun {
    /// PERSISTENT RESERVE IN/OUT, RESERVE and RELEASE.
    fn reservation_command(
        &self,
        cmd: &Command<'_>,
        task: &mut Task,
        io: &mut IoContext<'_>,
    ) -> Step {
        let pr = &self.reservations;
        if self.disk.properties().readonly && cmd.cdb[0] != reservation::PERSISTENT_RESERVE_IN {
            // A read-only LUN's guest may read the reservations, not take part in them.
            return Step::Done(Answer::Check(Sense::write_protected()));
        }
        match pr.execute(cmd.cdb, &io.data.out, io.scratch) {
            Some(PrStep::Done(Answer::Good { data_in })) => Step::Done(answer_emulated(
                Outcome::Good {
                    data_in_len: usize::try_from(data_in).unwrap_or(0),
                },
                io.scratch,
                io.data.inn,
            )),
            Some(PrStep::Done(answer)) => Step::Done(answer),
            Some(PrStep::WaitForAborts { id, victims }) => {
                io.hold(task);
                // Answered like a forwarded command, through the worker's callback.
                task.remote_id = Some(id);
                pr.wait_for(id, victims, io.reply.callback(io.id));
                Step::Forwarded
            }
            None => Step::Done(Answer::Check(Sense::invalid_opcode())),
        }
    }
}

/// Counts the `block_size` blocks a file holds on the host (holes excluded), for the
/// provisioning log page. A block device cannot say which of its blocks are mapped.
fn allocated_blocks(backing: &Backing, block_size: u64) -> Option<UsedBlocks> {
    use std::os::unix::fs::MetadataExt;
    if backing.is_block_device {
        return None;
    }
    let file = backing.file.try_clone().ok()?;
    // st_blocks counts 512-byte units whatever the file system's block size.
    Some(Box::new(move || {
        file.metadata()
            .ok()
            .map(|m| m.blocks().saturating_mul(512) / block_size)
    }))
}

impl LunDevice for DiskLun {
    fn start(&self, cmd: &Command<'_>, task: &mut Task, io: &mut IoContext<'_>) -> Step {
        let pr = &self.reservations;
        if !task.reservation_counted {
            task.reservation_counted = true;
            pr.active.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(answer) = pr.check(cmd.cdb) {
            return Step::Done(answer);
        }
        if matches!(
            cmd.cdb[0],
            reservation::PERSISTENT_RESERVE_IN
                | reservation::PERSISTENT_RESERVE_OUT
                | reservation::RESERVE_6
                | reservation::RELEASE_6
                | reservation::RESERVE_10
                | reservation::RELEASE_10
        ) {
            return self.reservation_command(cmd, task, io);
        }
        match self.disk.execute(cmd.cdb, &io.data.out, io.scratch) {
            Outcome::Io(req) => {
                let write_cache_off = !self.disk.write_cache_enabled();
                medium::start(&self.medium, req, write_cache_off, task, io)
            }
            done => Step::Done(answer_emulated(done, io.scratch, io.data.inn)),
        }
    }

    fn io_done(&self, task: &mut Task, res: i32, io: &mut IoContext<'_>) -> Step {
        medium::on_completion(&self.medium, task, res, io)
    }

    fn resume(&self, task: &mut Task, io: &mut IoContext<'_>) -> Step {
        medium::resume(&self.medium, task, io)
    }

    fn end(&self, task: &mut Task) -> bool {
        if std::mem::take(&mut task.reservation_counted) {
            self.reservations.active.fetch_sub(1, Ordering::AcqRel);
        }
        medium::leave_gate(&self.medium, task)
    }

    /// A PREEMPT AND ABORT that waited for other daemons' drains is answered.
    fn remote_done(&self, _task: &mut Task, c: ScsiCompletion, _data: DataBuffers<'_>) -> Answer {
        match c.result {
            Ok(st) if st.status == status::GOOD => Answer::Good { data_in: 0 },
            _ => Answer::Check(Sense::internal_target_failure()),
        }
    }

    fn reset(&self) {
        self.disk.reset();
        self.medium.reset();
        self.reservations.reset();
    }

    fn shut_down(&self, _within: std::time::Duration) {
        self.reservations.close();
    }

    fn make_durable(&self) {
        if self.medium.backing.cache.honours_flush() && !self.medium.backing.readonly {
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
        let p = self.disk.properties();
        let state = match self.reservations.state_file() {
            Some(f) => format!(", reservations in {}", f.display()),
            None => String::new(),
        };
        format!(
            "disk {} cache={} {} blocks of {} bytes{}{state}",
            self.medium.backing.path.display(),
            self.medium.backing.cache,
            self.disk.capacity_blocks(),
            p.block_size,
            if p.readonly { ", read-only" } else { "" }
        )
    }

    fn reservations(&self) -> Option<super::ReservationReport> {
        Some(self.reservations.report())
    }

    fn disk_properties(&self) -> Option<&DiskProperties> {
        Some(self.disk.properties())
    }

    fn backing_path(&self) -> Option<std::path::PathBuf> {
        Some(self.medium.backing.path.clone())
    }

    fn writable(&self) -> bool {
        !self.medium.backing.readonly
    }

    fn capacity(&self) -> Option<(u64, u32)> {
        let bs = self.disk.properties().block_size;
        Some((self.disk.capacity_blocks() * u64::from(bs), bs))
    }

    fn resize(&self, new_size: Option<u64>, force: bool) -> Result<(u64, u64), String> {
        let b = &self.medium.backing;
        let bs = u64::from(self.disk.properties().block_size);
        let old = self.disk.capacity_blocks();
        let shown = b.path.display();
        if let Some(bytes) = new_size {
            if b.readonly {
                return Err(format!(
                    "{shown} is read-only: it cannot be given a new size"
                ));
            }
            if bytes % bs != 0 || bytes < bs {
                return Err(format!("{bytes} is not a whole number of {bs}-byte blocks"));
            }
            if bytes / bs < old && !force {
                return Err(format!(
                    "{bytes} bytes is smaller than the LUN's {} bytes: shrinking drops the guest's data past it; refused without force",
                    old * bs
                ));
            }
            b.set_file_size(bytes)
                .map_err(|e| format!("cannot resize {shown}: {e}"))?;
        }
        let size = b
            .current_size()
            .map_err(|e| format!("cannot read the size of {shown}: {e}"))?;
        let new = size / bs;
        if new == 0 {
            return Err(format!("{shown} is smaller than one {bs}-byte block"));
        }
        if new < old && !force {
            return Err(format!(
                "{shown} shrank to {size} bytes, below the LUN's {} bytes; refused without force",
                old * bs
            ));
        }
        self.disk.set_capacity_blocks(new);
        Ok((old, new))
    }
}
