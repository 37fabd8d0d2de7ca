//! What a SCSI command is and how it ended, independent of the transport that carries it
//! (SAM-5): task attributes, a command to forward with its data-out, the status and sense
//! that came back, residuals, transport failures and task management functions. The iSCSI
//! initiator and the passthrough LUNs share these.

/// SAM task attribute of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskAttr {
    Untagged = 0,
    #[default]
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

/// One SCSI command to forward.
#[derive(Debug, Clone)]
pub struct ScsiCommand {
    pub cdb: [u8; 32],
    pub cdb_len: usize,
    pub data_out: Vec<u8>,
    pub data_in_len: u32,
    pub task_attr: TaskAttr,
}

/// Status and raw sense bytes of a completed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiStatus {
    pub status: u8,
    pub sense: Vec<u8>,
}

/// The target's residual report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Residual {
    pub overflow: bool,
    pub underflow: bool,
    pub count: u32,
}

/// Why a command got no status from the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("the target could not be reached within the recovery time")]
    Timeout,
    #[error("the session is closed")]
    Closed,
    #[error("aborted by task management")]
    Aborted,
    #[error("the path failed while the command was at the target, and it is not safe to reissue")]
    Disrupted,
    #[error("the path failed every time the command was sent, up to the reissue limit")]
    ReissueLimit,
    #[error("{0}")]
    Protocol(String),
}

/// What became of a command.
#[derive(Debug, Clone)]
pub struct ScsiCompletion {
    pub result: Result<ScsiStatus, TransportError>,
    pub data_in: Vec<u8>,
    pub residual: Residual,
}

impl ScsiCompletion {
    pub fn failed(e: TransportError) -> ScsiCompletion {
        ScsiCompletion {
            result: Err(e),
            data_in: Vec::new(),
            residual: Residual::default(),
        }
    }
}

/// Task management functions (RFC 7143 11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask = 1,
    AbortTaskSet = 2,
    ClearAca = 3,
    ClearTaskSet = 4,
    LogicalUnitReset = 5,
    TargetWarmReset = 6,
}

/// Builds a command from CDB bytes.
pub fn command(cdb: &[u8], data_out: Vec<u8>, data_in_len: u32) -> ScsiCommand {
    let mut c = [0u8; 32];
    let n = cdb.len().min(32);
    c[..n].copy_from_slice(&cdb[..n]);
    ScsiCommand {
        cdb: c,
        cdb_len: n,
        data_out,
        data_in_len,
        task_attr: TaskAttr::Simple,
    }
}
