//! What a SCSI command is and how it ended, independent of the transport that carries it
//! (SAM-5): task attributes, a command to forward with its data-out, the status and sense
//! that came back, residuals, transport failures and task management functions. The iSCSI
//! initiator and the passthrough LUNs share these.
//!
//! A forwarded command's data either travels in the command (`data_out`, and `data_in` of
//! its completion), or stays in the guest's buffers ([`GuestIo`]): the transport reads
//! data-out from them and writes data-in into them in place, and the completion carries
//! no data. Its answer goes back through a [`Completer`]: a closure, or a shared
//! [`CompletionSink`] and the command's id there, which costs no allocation per command.

use std::sync::Arc;

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
    /// Data-out carried in the command (empty when `guest` holds it).
    pub data_out: Vec<u8>,
    pub data_in_len: u32,
    pub task_attr: TaskAttr,
    /// The guest's buffers, when data moves in place instead of in the command.
    pub guest: Option<GuestIo>,
}

impl ScsiCommand {
    /// Bytes of data-out, wherever they are.
    pub fn out_len(&self) -> usize {
        match &self.guest {
            Some(g) => g.out_len,
            None => self.data_out.len(),
        }
    }
}

/// The guest's buffers of one forwarded command, read and written in place by the
/// transport (from whatever thread it runs on).
pub trait GuestBuffers: Send + Sync {
    /// Copies data-out bytes `[offset, offset + buf.len())` into `buf`; returns the bytes
    /// copied (fewer when the guest's buffers are shorter or the command has ended).
    fn read_out(&self, offset: usize, buf: &mut [u8]) -> usize;
    /// Writes `data` at data-in offset `offset`; returns the bytes written: nothing past
    /// the guest's data-in buffers, nothing once the command has ended.
    fn write_in(&self, offset: usize, data: &[u8]) -> usize;
}

/// A command's guest buffers and its data-out length.
#[derive(Clone)]
pub struct GuestIo {
    pub buffers: Arc<dyn GuestBuffers>,
    pub out_len: usize,
}

impl std::fmt::Debug for GuestIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuestIo {{ out_len: {} }}", self.out_len)
    }
}

/// Receives the answers of many commands, each by its id (a worker's forwarded commands).
pub trait CompletionSink: Send + Sync {
    fn complete(&self, id: usize, c: ScsiCompletion);

    /// Several answers that arrived together: a sink that notifies someone per delivery
    /// (the guest, a worker) does it once for the lot. Unless a sink says otherwise, one
    /// by one.
    fn complete_all(&self, answers: &mut dyn Iterator<Item = (usize, ScsiCompletion)>) {
        for (id, c) in answers {
            self.complete(id, c);
        }
    }
}

/// Where a command's answer goes; used exactly once.
pub enum Completer {
    /// A closure of its own (commands the initiator makes, wrappers of the LUN layer).
    Once(Box<dyn FnOnce(ScsiCompletion) + Send>),
    /// A shared sink and the command's id there: no allocation per command.
    Sink(Arc<dyn CompletionSink>, usize),
}

impl Completer {
    pub fn new(f: impl FnOnce(ScsiCompletion) + Send + 'static) -> Completer {
        Completer::Once(Box::new(f))
    }

    pub fn complete(self, c: ScsiCompletion) {
        match self {
            Completer::Once(f) => f(c),
            Completer::Sink(sink, id) => sink.complete(id, c),
        }
    }

    /// Delivers `answers` in order; consecutive answers for one sink go to it as one
    /// batch ([`CompletionSink::complete_all`]).
    pub fn complete_in_batches(answers: &mut Vec<(Completer, ScsiCompletion)>) {
        let mut rest = answers.drain(..).peekable();
        while let Some((first, c)) = rest.next() {
            match first {
                Completer::Once(f) => f(c),
                Completer::Sink(sink, id) => {
                    let same_sink = |(next, _): &(Completer, ScsiCompletion)| matches!(next, Completer::Sink(s, _) if Arc::ptr_eq(s, &sink));
                    let mut batch = std::iter::once((id, c)).chain(std::iter::from_fn(|| {
                        // `same_sink` admits only this sink's answers.
                        match rest.next_if(same_sink) {
                            Some((Completer::Sink(_, id), c)) => Some((id, c)),
                            _ => None,
                        }
                    }));
                    sink.complete_all(&mut batch);
                }
            }
        }
    }
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
        guest: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Each delivery: the sink's name and the ids handed to it.
    type Log = Arc<Mutex<Vec<(&'static str, Vec<usize>)>>>;

    /// Records what it is handed: each delivery (a batch, or one answer by `complete`)
    /// as the ids in it, in one log shared by every sink of a test.
    struct Recorder {
        name: &'static str,
        log: Log,
        /// Takes at most this many answers of a batch.
        takes: usize,
    }

    impl CompletionSink for Recorder {
        fn complete(&self, id: usize, _: ScsiCompletion) {
            self.log.lock().expect("log").push((self.name, vec![id]));
        }

        fn complete_all(&self, answers: &mut dyn Iterator<Item = (usize, ScsiCompletion)>) {
            let ids = answers.take(self.takes).map(|(id, _)| id).collect();
            self.log.lock().expect("log").push((self.name, ids));
        }
    }

    fn good() -> ScsiCompletion {
        ScsiCompletion {
            result: Ok(ScsiStatus {
                status: 0,
                sense: Vec::new(),
            }),
            data_in: Vec::new(),
            residual: Residual::default(),
        }
    }

    #[test]
    fn answers_go_in_order_in_one_batch_per_run_of_a_sink() {
        let log: Log = Arc::default();
        let sink = |name, takes| -> Arc<dyn CompletionSink> {
            Arc::new(Recorder {
                name,
                log: log.clone(),
                takes,
            })
        };
        let (a, b, short) = (sink("a", 64), sink("b", 64), sink("short", 2));
        let once = {
            let log = log.clone();
            Completer::new(move |_| log.lock().expect("log").push(("once", vec![0])))
        };
        let mut answers = vec![
            (Completer::Sink(a.clone(), 1), good()),
            (Completer::Sink(a.clone(), 2), good()),
            (once, good()),
            (Completer::Sink(a.clone(), 3), good()),
            (Completer::Sink(b.clone(), 4), good()),
            (Completer::Sink(b, 5), good()),
            (Completer::Sink(a, 6), good()),
            // A sink that stops early is handed the rest next.
            (Completer::Sink(short.clone(), 7), good()),
            (Completer::Sink(short.clone(), 8), good()),
            (Completer::Sink(short, 9), good()),
        ];
        Completer::complete_in_batches(&mut answers);
        assert!(answers.is_empty());
        let log = log.lock().expect("log").clone();
        assert_eq!(
            log,
            vec![
                ("a", vec![1, 2]),
                ("once", vec![0]),
                ("a", vec![3]),
                ("b", vec![4, 5]),
                ("a", vec![6]),
                ("short", vec![7, 8]),
                ("short", vec![9]),
            ]
        );
    }
}
