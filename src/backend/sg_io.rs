//! The Linux SCSI generic interface (sg v3, `SG_IO`): the request header the kernel takes,
//! the ioctls a passthrough LUN uses (SG_IO itself, the sg driver's version, the largest
//! transfer a device takes, device reset), and opening a passthrough device with the
//! checks that give one-line errors. `SG_IO` works on `/dev/sgN` and on sd block devices
//! (`/dev/sdX`) alike; the sg driver's own write()/read() interface is sg-only.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// `SG_IO`: one command, synchronously.
pub const SG_IO: libc::c_ulong = 0x2285;
/// `SG_GET_VERSION_NUM`: the sg driver's version (e.g. 30536 for 3.5.36).
pub const SG_GET_VERSION_NUM: libc::c_ulong = 0x2282;
/// `SG_GET_RESERVED_SIZE`: the sg file descriptor's reserved buffer, in bytes.
pub const SG_GET_RESERVED_SIZE: libc::c_ulong = 0x2272;
/// `SG_SCSI_RESET`: reset the device (or more), with one of the `SG_SCSI_RESET_*` values.
pub const SG_SCSI_RESET: libc::c_ulong = 0x2284;
/// Reset the logical unit only.
pub const SG_SCSI_RESET_DEVICE: libc::c_int = 1;
/// `BLKSECTGET`: the largest transfer; on a block device in 512-byte sectors (an unsigned
/// short), on an sg device in bytes (an int).
pub const BLKSECTGET: libc::c_ulong = 0x1267;

/// The oldest sg driver version whose SG_IO this code speaks (sg v3).
pub const MIN_SG_VERSION: i32 = 30000;

/// Data direction of a command (`dxfer_direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    None,
    ToDevice,
    FromDevice,
}

impl Direction {
    fn raw(self) -> libc::c_int {
        match self {
            Direction::None => -1,       // SG_DXFER_NONE
            Direction::ToDevice => -2,   // SG_DXFER_TO_DEV
            Direction::FromDevice => -3, // SG_DXFER_FROM_DEV
        }
    }
}

/// `struct sg_io_hdr` of <scsi/sg.h>.
#[repr(C)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut libc::c_void,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: libc::c_int,
    duration: u32,
    info: u32,
}

/// What the kernel reported for a command it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SgReply {
    /// The SCSI status byte.
    pub status: u8,
    /// Linux's DID_* code: 0 when the host delivered the command.
    pub host_status: u16,
    pub driver_status: u16,
    /// Sense bytes written into the sense buffer.
    pub sense_len: u8,
    /// Bytes of the transfer that did not happen.
    pub resid: u32,
}

/// The request header of one command. The pointers are the caller's: `data` for
/// `dxfer_len` bytes, the CDB, and `sense_len` bytes at `sense`.
#[allow(clippy::too_many_arguments)]
fn header(
    cdb: &[u8],
    dir: Direction,
    data: &mut [u8],
    sense: *mut u8,
    sense_len: usize,
    timeout_ms: u32,
    pack_id: libc::c_int,
) -> io::Result<SgIoHdr> {
    let dxfer_len =
        u32::try_from(data.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let cmd_len =
        u8::try_from(cdb.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(SgIoHdr {
        interface_id: libc::c_int::from(b'S'),
        dxfer_direction: if data.is_empty() {
            Direction::None.raw()
        } else {
            dir.raw()
        },
        cmd_len,
        mx_sb_len: u8::try_from(sense_len).unwrap_or(u8::MAX),
        iovec_count: 0,
        dxfer_len,
        dxferp: data.as_mut_ptr().cast(),
        cmdp: cdb.as_ptr(),
        sbp: sense,
        timeout: timeout_ms,
        // No SG_FLAG_DIRECT_IO: the kernel copies data in and out of its own pages, so
        // it touches the caller's buffer only inside the calls (see `sg_write`).
        flags: 0,
        pack_id,
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
    })
}

impl SgIoHdr {
    fn reply(&self) -> SgReply {
        SgReply {
            status: self.status,
            host_status: self.host_status,
            driver_status: self.driver_status,
            sense_len: self.sb_len_wr.min(self.mx_sb_len),
            resid: u32::try_from(self.resid).unwrap_or(0).min(self.dxfer_len),
        }
    }
}

/// Runs one command with `SG_IO` (blocks until it completes). `data` is the whole
/// transfer in `dir`; `sense` receives the sense bytes.
pub fn sg_io(
    file: &File,
    cdb: &[u8],
    dir: Direction,
    data: &mut [u8],
    sense: &mut [u8],
    timeout_ms: u32,
) -> io::Result<SgReply> {
    let mut hdr = header(
        cdb,
        dir,
        data,
        sense.as_mut_ptr(),
        sense.len(),
        timeout_ms,
        0,
    )?;
    // SAFETY: SG_IO reads the header and the `cmd_len` CDB bytes, moves at most
    // `dxfer_len` bytes to or from `data` and writes at most `mx_sb_len` sense bytes, all
    // of which are borrowed for the duration of this (blocking) call; it writes the
    // header's output fields.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), SG_IO, &mut hdr as *mut SgIoHdr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(hdr.reply())
}

/// Queues one command on an sg device (the sg driver's asynchronous interface) and
/// returns at once; its answer comes from [`sg_read`] with the same `pack_id`. The kernel
/// copies the CDB and any data-out now; the command's data-in (into `data`) and sense
/// (`sense_len` bytes at `sense`) are copied by the `sg_read` that returns it.
///
/// # Safety contract (checked by the caller, not the compiler)
/// `data` and the sense area must stay valid, and not be moved or freed, until `sg_read`
/// returns this command or the descriptor is closed; a command whose descriptor is
/// closed first is finished by the kernel without writing to them.
#[allow(clippy::too_many_arguments)]
pub fn sg_write(
    file: &File,
    cdb: &[u8],
    dir: Direction,
    data: &mut [u8],
    sense: *mut u8,
    sense_len: usize,
    timeout_ms: u32,
    pack_id: libc::c_int,
) -> io::Result<()> {
    let hdr = header(cdb, dir, data, sense, sense_len, timeout_ms, pack_id)?;
    queue_header(file, &hdr)
}

/// Hands one request header to the sg driver's write().
fn queue_header(file: &File, hdr: &SgIoHdr) -> io::Result<()> {
    let size = std::mem::size_of::<SgIoHdr>();
    // SAFETY: write() reads `size` bytes of the header, which lives for the call; the
    // kernel reads the CDB, the iovec array (if any) and data-out through its pointers
    // during the call and keeps the data and sense pointers for the read() that returns
    // the command (the contract of `sg_write` and `sg_write_iov`).
    let n = unsafe { libc::write(file.as_raw_fd(), (hdr as *const SgIoHdr).cast(), size) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`sg_write`] with the data in scattered buffers (`iov`, `total` bytes in all): the
/// kernel copies data-out from them in this call and data-in to them in the [`sg_read`]
/// that returns the command, under the same contract as `sg_write` for every buffer.
#[allow(clippy::too_many_arguments)]
pub fn sg_write_iov(
    file: &File,
    cdb: &[u8],
    dir: Direction,
    iov: &[libc::iovec],
    total: usize,
    sense: *mut u8,
    sense_len: usize,
    timeout_ms: u32,
    pack_id: libc::c_int,
) -> io::Result<()> {
    let count = u16::try_from(iov.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut hdr = header(cdb, dir, &mut [], sense, sense_len, timeout_ms, pack_id)?;
    if total > 0 {
        hdr.dxfer_direction = dir.raw();
        hdr.dxfer_len =
            u32::try_from(total).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        hdr.iovec_count = count;
        // `struct sg_iovec` is `struct iovec`'s layout (a pointer and a size).
        hdr.dxferp = iov.as_ptr() as *mut libc::c_void;
    }
    // The kernel copies the iovec array in this call.
    queue_header(file, &hdr)
}

/// Takes one finished command of an sg device (any of them: its `pack_id` says which),
/// with its data-in and sense copied where [`sg_write`] pointed. WouldBlock when none is
/// finished (the descriptor is non-blocking).
pub fn sg_read(file: &File) -> io::Result<(libc::c_int, SgReply)> {
    let mut hdr = header(
        &[],
        Direction::None,
        &mut [],
        std::ptr::null_mut(),
        0,
        0,
        -1,
    )?;
    let size = std::mem::size_of::<SgIoHdr>();
    // SAFETY: read() writes at most `size` bytes into the header, which lives for the
    // call; it copies the command's data-in and sense to the pointers given at its
    // sg_write, which the caller keeps valid until now.
    let n = unsafe { libc::read(file.as_raw_fd(), (&mut hdr as *mut SgIoHdr).cast(), size) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((hdr.pack_id, hdr.reply()))
}

/// An ioctl that writes one int.
fn ioctl_int(file: &File, request: libc::c_ulong) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    // SAFETY: the requests passed here write one int to the pointer, which points at `v`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, &mut v as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// The sg driver's version; an error for anything that is not an sg device.
pub fn sg_version(file: &File) -> io::Result<i32> {
    ioctl_int(file, SG_GET_VERSION_NUM)
}

/// The largest transfer in bytes one command may carry on an sg device: the device
/// queue's limit the driver reports (BLKSECTGET, in bytes on sg), else its reserved
/// buffer.
pub fn sg_max_transfer(file: &File) -> Option<u64> {
    ioctl_int(file, BLKSECTGET)
        .ok()
        .or_else(|| ioctl_int(file, SG_GET_RESERVED_SIZE).ok())
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0)
}

/// The largest transfer in bytes one command may carry on a block device (BLKSECTGET,
/// 512-byte sectors in an unsigned short).
pub fn block_max_transfer(file: &File) -> Option<u64> {
    let mut sectors: libc::c_ushort = 0;
    // SAFETY: BLKSECTGET on a block device writes one unsigned short to the pointer,
    // which points at `sectors`.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKSECTGET,
            &mut sectors as *mut libc::c_ushort,
        )
    };
    (rc == 0 && sectors > 0).then(|| u64::from(sectors) * 512)
}

/// Resets the logical unit behind `file` (the kernel needs CAP_SYS_ADMIN and
/// CAP_SYS_RAWIO for it). Blocks until the host's error handler is done.
pub fn reset_device(file: &File) -> io::Result<()> {
    let mut what: libc::c_int = SG_SCSI_RESET_DEVICE;
    // SAFETY: SG_SCSI_RESET reads one int from the pointer, which points at `what`.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            SG_SCSI_RESET,
            &mut what as *mut libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Which kind of device a passthrough LUN opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `/dev/sgN`: a character device of the sg driver.
    ScsiGeneric,
    /// `/dev/sdX`: a SCSI disk's block device.
    Block,
}

/// Opens a passthrough device and checks it is what `kind` needs: an sg character device
/// (SG_GET_VERSION_NUM answers, v3 or later), or a block device that takes SG_IO (checked
/// by the caller with a command). `extra_flags` are added to O_CLOEXEC (O_DIRECT for a
/// block device's reads and writes). The error is one line naming the path (the caller
/// adds the field).
pub fn open_device(
    path: &Path,
    kind: DeviceKind,
    readonly: bool,
    extra_flags: libc::c_int,
) -> Result<File, String> {
    let shown = path.display();
    // O_NONBLOCK: an sg device held with O_EXCL by another program fails at once (EBUSY)
    // instead of waiting; SG_IO itself blocks whatever the flag.
    let nonblock = if kind == DeviceKind::ScsiGeneric {
        libc::O_NONBLOCK
    } else {
        0
    };
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(libc::O_CLOEXEC | nonblock | extra_flags)
        .open(path)
        .map_err(|e| open_error(&shown.to_string(), &e))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect {shown}: {e}"))?;
    match kind {
        DeviceKind::ScsiGeneric => {
            let version = if meta.file_type().is_char_device() {
                sg_version(&file).ok()
            } else {
                None
            };
            match version {
                Some(v) if v >= MIN_SG_VERSION => Ok(file),
                Some(v) => Err(format!(
                    "{shown}: sg driver version {v} is older than 3.0 (SG_IO v3 needed)"
                )),
                None => Err(format!("{shown} is not a SCSI generic device")),
            }
        }
        DeviceKind::Block if meta.file_type().is_block_device() => Ok(file),
        DeviceKind::Block => Err(format!("{shown} is not a block device")),
    }
}

/// One line for a failed open, with what the usual errors mean here.
fn open_error(shown: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "{shown} is busy: another program holds it exclusively (EBUSY)"
        ),
        Some(libc::EACCES | libc::EPERM) => format!(
            "cannot open {shown}: permission denied (the daemon's user needs read and write access to it)"
        ),
        Some(libc::ENOENT) => format!("{shown} does not exist"),
        Some(libc::ENXIO | libc::ENODEV) => format!("{shown}: no device behind it (removed?)"),
        _ => format!("cannot open {shown}: {e}"),
    }
}

/// Whether an error of SG_IO or of opening the device means the device is gone (removed,
/// offline): the LUN answers NOT READY and opens the path again later.
pub fn device_gone(errno: i32) -> bool {
    matches!(errno, libc::ENODEV | libc::ENXIO | libc::EIO | libc::ENOENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_has_the_kernels_layout() {
        // struct sg_io_hdr is 88 bytes on 64-bit Linux.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
        assert_eq!(Direction::FromDevice.raw(), -3);
    }

    #[test]
    fn a_non_sg_path_is_refused_naming_it() {
        let e = open_device(Path::new("/dev/null"), DeviceKind::ScsiGeneric, true, 0)
            .expect_err("/dev/null");
        assert_eq!(e, "/dev/null is not a SCSI generic device");
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        let e = open_device(f.path(), DeviceKind::ScsiGeneric, true, 0).expect_err("file");
        assert!(e.ends_with("is not a SCSI generic device"), "{e}");
        let e = open_device(f.path(), DeviceKind::Block, true, 0).expect_err("file");
        assert!(e.ends_with("is not a block device"), "{e}");
        let e = open_device(
            Path::new("/dev/nonexistent-sg"),
            DeviceKind::ScsiGeneric,
            true,
            0,
        )
        .expect_err("missing");
        assert_eq!(e, "/dev/nonexistent-sg does not exist");
    }

    #[test]
    fn open_errors_say_what_they_mean() {
        let busy = open_error("/dev/sg3", &io::Error::from_raw_os_error(libc::EBUSY));
        assert!(busy.contains("busy") && busy.contains("/dev/sg3"), "{busy}");
        let denied = open_error("/dev/sg3", &io::Error::from_raw_os_error(libc::EACCES));
        assert!(denied.contains("permission denied"), "{denied}");
        assert!(!busy.contains('\n') && !denied.contains('\n'));
    }

    #[test]
    fn ioctls_on_something_else_fail_cleanly() {
        let f = File::open("/dev/null").expect("/dev/null");
        assert!(sg_version(&f).is_err());
        assert_eq!(block_max_transfer(&f), None);
        assert_eq!(sg_max_transfer(&f), None);
        let mut sense = [0u8; 32];
        assert!(sg_io(&f, &[0u8; 6], Direction::None, &mut [], &mut sense, 1000).is_err());
        assert!(reset_device(&f).is_err());
    }

    #[test]
    fn which_errors_mean_the_device_is_gone() {
        for e in [libc::ENODEV, libc::ENXIO, libc::EIO] {
            assert!(device_gone(e), "{e}");
        }
        for e in [libc::EINVAL, libc::EPERM, libc::ENOMEM, libc::EBUSY] {
            assert!(!device_gone(e), "{e}");
        }
    }
}
