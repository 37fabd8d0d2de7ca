//! The null LUN: a disk with no medium. Reads return zeroes, writes are dropped, and every
//! command ends at once; it measures the daemon's own overhead.

use super::identity::disk_properties;
use super::{answer_emulated, Answer, Command, IoContext, LunDevice, Step, Task};
use crate::config::LunConfig;
use crate::scsi::disk::{DiskProperties, EmulatedDisk};
use crate::scsi::{IoRequest, Outcome, Sense};

pub struct NullLun {
    disk: EmulatedDisk,
}

/// A null LUN of `size` bytes.
pub fn open(l: &LunConfig, size: u64) -> Result<Box<dyn LunDevice>, String> {
    let bs = u64::from(l.block_size);
    if size < bs {
        return Err(format!(
            "target {} LUN {}: size {size} is smaller than one {bs}-byte block",
            l.target, l.lun
        ));
    }
    let id = format!("null:{}:{}", l.target, l.lun);
    // Nothing rotates behind a null disk.
    let props = disk_properties(
        l,
        size / bs,
        id.as_bytes(),
        true,
        "NULL-DISK",
        true,
        Some(false),
    );
    Ok(Box::new(NullLun {
        disk: EmulatedDisk::new(props),
    }))
}

impl LunDevice for NullLun {
    fn start(&self, cmd: &Command<'_>, _task: &mut Task, io: &mut IoContext<'_>) -> Step {
        let answer = match self.disk.execute(cmd.cdb, &io.data.out, io.scratch) {
            Outcome::Io(IoRequest::Read { len, .. }) => read_zeroes(len, io),
            Outcome::Io(_) => Answer::Good { data_in: 0 },
            done => answer_emulated(done, io.scratch, io.data.inn),
        };
        Step::Done(answer)
    }

    fn reset(&self) {
        self.disk.reset();
    }

    fn describe(&self) -> String {
        let p = self.disk.properties();
        format!(
            "null disk, {} blocks of {} bytes",
            self.disk.capacity_blocks(),
            p.block_size
        )
    }

    fn disk_properties(&self) -> Option<&DiskProperties> {
        Some(self.disk.properties())
    }

    fn capacity(&self) -> Option<(u64, u32)> {
        let bs = self.disk.properties().block_size;
        Some((self.disk.capacity_blocks() * u64::from(bs), bs))
    }

    /// A null disk has no backing to read: it takes the size it is given.
    fn resize(&self, new_size: Option<u64>, force: bool) -> Result<(u64, u64), String> {
        let bs = u64::from(self.disk.properties().block_size);
        let old = self.disk.capacity_blocks();
        let Some(bytes) = new_size else {
            return Err("a null LUN has no backing store to read a size from: give a size".into());
        };
        if bytes % bs != 0 || bytes < bs {
            return Err(format!("{bytes} is not a whole number of {bs}-byte blocks"));
        }
        if bytes / bs < old && !force {
            return Err(format!(
                "{bytes} bytes is smaller than the LUN's {} bytes; refused without force",
                old * bs
            ));
        }
        self.disk.set_capacity_blocks(bytes / bs);
        Ok((old, bytes / bs))
    }
}

/// Fills `len` bytes of data-in with zeroes.
fn read_zeroes(len: u64, io: &IoContext<'_>) -> Answer {
    static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
    if len > io.data.inn.len() {
        return Answer::overrun();
    }
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZEROES.len() as u64) as usize;
        if io.data.inn.write_at(done, &ZEROES[..n]) < n {
            return Answer::Check(Sense::internal_target_failure());
        }
        done += n as u64;
    }
    Answer::Good { data_in: len }
}
