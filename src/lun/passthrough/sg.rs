//! The SCSI generic LUN (QEMU's `scsi-generic`): a `/dev/sgN` behind the LUN, for tape
//! drives, changers, and disks whose vendor tools need the real device. Every CDB goes to
//! the device (REPORT LUNS excepted: the target answers it from its own table before the
//! LUN sees it); status, sense, data and residual come back unchanged, but for VPD 0xB0's
//! transfer limit (see [`super::reply`]).

use std::path::{Path, PathBuf};

use super::pool::{DeviceSpec, Engine, Pool};
use super::reply::DeviceFacts;
use super::sg_async;
use super::Forwarder;
use crate::backend::guest::DataBuffers;
use crate::backend::sg_io::{self, DeviceKind};
use crate::config::LunConfig;
use crate::lun::{Answer, Command, IoContext, LunDevice, Step, Task, MAX_TRANSFER_BYTES};
use crate::scsi::task::{ScsiCompletion, TmfFunction, TransportError};

/// SG_IO's timeout on an sg device: a tape's ERASE or a full-length rewind takes hours
/// (Linux's st driver allows 14000 s for its long commands). The guest's own timeouts and
/// task management come first; this only bounds a device that never answers.
pub const SG_TIMEOUT_MS: u32 = 14_400_000;

/// Transfer limit when the driver reports none: the sg driver's default reserved buffer.
const FALLBACK_MAX_TRANSFER: u64 = 32 * 1024;

pub struct SgLun {
    fwd: Forwarder,
    path: PathBuf,
}

/// Opens an sg device; errors are one line naming the LUN and the field.
pub fn open(l: &LunConfig, path: &Path) -> Result<Box<dyn LunDevice>, String> {
    let where_ = format!("target {} LUN {}", l.target, l.lun);
    let file = sg_io::open_device(path, DeviceKind::ScsiGeneric, l.readonly, 0)
        .map_err(|e| format!("{where_}: path: {e}"))?;
    let max_transfer = sg_io::sg_max_transfer(&file)
        .unwrap_or(FALLBACK_MAX_TRANSFER)
        .min(MAX_TRANSFER_BYTES);
    let spec = DeviceSpec {
        path: path.to_path_buf(),
        kind: DeviceKind::ScsiGeneric,
        readonly: l.readonly,
        extra_flags: 0,
        timeout_ms: SG_TIMEOUT_MS,
    };
    // Block size and capacity are learnt from READ CAPACITY (a tape has neither).
    let (engine, how) = if sg_async::chosen() {
        (Engine::SgAsync, "asynchronous sg interface")
    } else {
        (Engine::Threads, "SG_IO helper threads")
    };
    let pool = Pool::start(
        spec,
        file,
        DeviceFacts::new(max_transfer, 0, 0),
        None,
        engine,
    )
    .map_err(|e| format!("{where_}: {e}"))?;
    tracing::info!(
        "{where_}: SCSI generic {} (max transfer {max_transfer} bytes, {how})",
        path.display()
    );
    Ok(Box::new(SgLun {
        fwd: Forwarder {
            pool,
            readonly: l.readonly,
        },
        path: path.to_path_buf(),
    }))
}

impl LunDevice for SgLun {
    fn start(&self, cmd: &Command<'_>, task: &mut Task, io: &mut IoContext<'_>) -> Step {
        self.fwd.start(cmd, task, io)
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

    fn describe(&self) -> String {
        format!(
            "SCSI generic {}{}",
            self.path.display(),
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
        Some(self.path.clone())
    }

    fn writable(&self) -> bool {
        !self.fwd.readonly()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sg_config(path: &str) -> LunConfig {
        let mut l = LunConfig::disk(0, 2, PathBuf::new());
        l.kind = crate::config::LunKind::Sg { path: path.into() };
        l
    }

    #[test]
    fn only_an_sg_device_opens() {
        let e = open(&sg_config("/dev/null"), Path::new("/dev/null"))
            .err()
            .expect("/dev/null");
        assert_eq!(
            e,
            "target 0 LUN 2: path: /dev/null is not a SCSI generic device"
        );
        let f = tempfile::NamedTempFile::new().expect("tmp");
        let e = open(&sg_config("x"), f.path()).err().expect("a file");
        assert!(
            e.starts_with("target 0 LUN 2: path: ") && e.ends_with("is not a SCSI generic device"),
            "{e}"
        );
        let e = open(&sg_config("x"), Path::new("/nonexistent/sg0"))
            .err()
            .expect("missing");
        assert_eq!(e, "target 0 LUN 2: path: /nonexistent/sg0 does not exist");
    }
}
