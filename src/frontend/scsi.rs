//! A virtio-scsi driver on top of the frontend: command requests with data-out/data-in
//! buffers in guest memory, many in flight per queue, and control-queue requests.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::connection::{ConnectOptions, Connection, FrontendError};

const REQ_LEN: u64 = 51;
const RESP_LEN: u64 = 108;
/// Guest memory set aside per request slot (headers plus data).
pub const SLOT_DATA: u64 = 1 << 20;
const SLOT_SIZE: u64 = 4096 + SLOT_DATA;
/// Requests in flight per request queue.
pub const SLOTS_PER_QUEUE: usize = 32;

/// The 8-byte virtio-scsi LUN address of (target, lun).
pub fn lun_address(target: u8, lun: u16) -> [u8; 8] {
    let [hi, lo] = crate::scsi::LunId::new(lun).unwrap_or_default().to_be16();
    [1, target, hi, lo, 0, 0, 0, 0]
}

/// One command to send.
#[derive(Debug, Clone, Copy)]
pub struct VirtioScsiRequest<'a> {
    pub lun: [u8; 8],
    pub tag: u64,
    pub cdb: &'a [u8],
    pub data_out: &'a [u8],
    pub data_in_len: u32,
}

/// The device's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdResponse {
    /// virtio-scsi response code (0 = OK).
    pub response: u8,
    pub status: u8,
    pub sense: Vec<u8>,
    pub resid: u32,
    pub data_in: Vec<u8>,
    /// Length the device put in the used ring.
    pub used_len: u32,
}

impl CmdResponse {
    /// (sense key, ASC, ASCQ) of fixed-format sense, if any.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        (self.sense.len() >= 14).then(|| (self.sense[2] & 0x0f, self.sense[12], self.sense[13]))
    }
}

struct QueueSlots {
    free: Vec<u64>,
    busy: HashMap<u16, (u64, u32)>,
}

/// A virtio-scsi device driven through a vhost-user connection. Queue 0 is the control
/// queue, 1 the event queue, 2.. the request queues.
pub struct ScsiFrontend {
    pub conn: Connection,
    slots: Vec<QueueSlots>,
    ctrl_buf: u64,
    /// Event buffers posted on queue 1, by descriptor head.
    event_bufs: HashMap<u16, u64>,
    pub timeout: Duration,
}

impl ScsiFrontend {
    pub fn connect(socket: &Path, opts: &ConnectOptions) -> Result<ScsiFrontend, FrontendError> {
        let mut conn = Connection::connect(socket, opts)?;
        let ctrl_buf = conn.alloc(4096, 4096)?;
        let mut slots = Vec::new();
        for q in 0..conn.queues.len() {
            let n = if q >= 2 { SLOTS_PER_QUEUE } else { 0 };
            let mut free = Vec::with_capacity(n);
            for _ in 0..n {
                free.push(conn.alloc(SLOT_SIZE, 4096)?);
            }
            slots.push(QueueSlots {
                free,
                busy: HashMap::new(),
            });
        }
        Ok(ScsiFrontend {
            conn,
            slots,
            ctrl_buf,
            event_bufs: HashMap::new(),
            timeout: Duration::from_secs(30),
        })
    }

    /// Queues a command on request queue `q` (2..); returns its descriptor head.
    pub fn submit(&mut self, q: usize, req: &VirtioScsiRequest) -> Result<u16, FrontendError> {
        let bad = |m: &str| FrontendError::Protocol(m.to_string());
        if req.data_out.len() as u64 > SLOT_DATA || u64::from(req.data_in_len) > SLOT_DATA {
            return Err(bad("data larger than a request slot"));
        }
        let slots = self.slots.get_mut(q).ok_or_else(|| bad("no such queue"))?;
        let base = slots
            .free
            .pop()
            .ok_or_else(|| bad("all request slots busy"))?;
        let mem = &self.conn.mem;
        let mut hdr = [0u8; REQ_LEN as usize];
        hdr[0..8].copy_from_slice(&req.lun);
        hdr[8..16].copy_from_slice(&req.tag.to_le_bytes());
        let n = req.cdb.len().min(32);
        hdr[19..19 + n].copy_from_slice(&req.cdb[..n]);
        let write = |data: &[u8], at: u64| mem.write_slice(data, GuestAddress(at));
        let resp_at = base + 512;
        let data_at = base + 4096;
        write(&hdr, base).map_err(|e| FrontendError::Memory(e.to_string()))?;
        write(&[0u8; RESP_LEN as usize], resp_at)
            .map_err(|e| FrontendError::Memory(e.to_string()))?;
        let mut bufs = vec![(base, REQ_LEN as u32, false)];
        if !req.data_out.is_empty() {
            write(req.data_out, data_at).map_err(|e| FrontendError::Memory(e.to_string()))?;
            bufs.push((data_at, req.data_out.len() as u32, false));
        }
        bufs.push((resp_at, RESP_LEN as u32, true));
        if req.data_in_len > 0 {
            bufs.push((data_at, req.data_in_len, true));
        }
        let queue = &mut self.conn.queues[q];
        let Some(head) = queue.add_chain(mem, &bufs, None) else {
            slots.free.push(base);
            return Err(bad("virtqueue full"));
        };
        slots.busy.insert(head, (base, req.data_in_len));
        queue.kick();
        Ok(head)
    }

    /// Waits (bounded) for one completion on queue `q`; returns its head and response.
    pub fn complete(&mut self, q: usize) -> Option<(u16, CmdResponse)> {
        let timeout = self.timeout;
        let (head, used_len) = self
            .conn
            .queues
            .get_mut(q)?
            .wait_used(&self.conn.mem, timeout)?;
        let slots = self.slots.get_mut(q)?;
        let (base, data_in_len) = slots.busy.remove(&head)?;
        slots.free.push(base);
        let mem = &self.conn.mem;
        let mut resp = [0u8; RESP_LEN as usize];
        mem.read_slice(&mut resp, GuestAddress(base + 512)).ok()?;
        let sense_len = u32::from_le_bytes([resp[0], resp[1], resp[2], resp[3]]).min(96) as usize;
        let mut data_in = vec![0u8; data_in_len as usize];
        mem.read_slice(&mut data_in, GuestAddress(base + 4096))
            .ok()?;
        let resid = u32::from_le_bytes([resp[4], resp[5], resp[6], resp[7]]);
        let got = used_len.saturating_sub(RESP_LEN as u32).min(data_in_len) as usize;
        data_in.truncate(got);
        Some((
            head,
            CmdResponse {
                response: resp[11],
                status: resp[10],
                sense: resp[12..12 + sense_len].to_vec(),
                resid,
                data_in,
                used_len,
            },
        ))
    }

    /// Sends one command on request queue 2 and waits for its answer.
    pub fn command(&mut self, req: &VirtioScsiRequest) -> Result<CmdResponse, FrontendError> {
        self.command_on(2, req)
    }

    pub fn command_on(
        &mut self,
        q: usize,
        req: &VirtioScsiRequest,
    ) -> Result<CmdResponse, FrontendError> {
        let head = self.submit(q, req)?;
        match self.complete(q) {
            Some((h, r)) if h == head => Ok(r),
            Some(_) => Err(FrontendError::Protocol("unexpected completion".into())),
            None => Err(FrontendError::Protocol(
                "no completion within the timeout".into(),
            )),
        }
    }

    /// A control queue request: writes `req`, offers `resp_len` writable bytes, waits.
    /// Returns the response bytes and the used length.
    pub fn control(&mut self, req: &[u8], resp_len: u32) -> Result<(Vec<u8>, u32), FrontendError> {
        let mem = &self.conn.mem;
        let at = self.ctrl_buf;
        mem.write_slice(req, GuestAddress(at))
            .map_err(|e| FrontendError::Memory(e.to_string()))?;
        mem.write_slice(&vec![0xffu8; resp_len as usize], GuestAddress(at + 2048))
            .map_err(|e| FrontendError::Memory(e.to_string()))?;
        let q = &mut self.conn.queues[0];
        q.add_chain(
            mem,
            &[(at, req.len() as u32, false), (at + 2048, resp_len, true)],
            None,
        )
        .ok_or_else(|| FrontendError::Protocol("control queue full".into()))?;
        q.kick();
        let (_, used) = q.wait_used(mem, self.timeout).ok_or_else(|| {
            FrontendError::Protocol("no control answer within the timeout".into())
        })?;
        let mut resp = vec![0u8; resp_len as usize];
        mem.read_slice(&mut resp, GuestAddress(at + 2048))
            .map_err(|e| FrontendError::Memory(e.to_string()))?;
        Ok((resp, used))
    }

    /// Posts `n` empty event buffers of `len` writable bytes on the event queue (1), as a
    /// driver does for hotplug and parameter change events.
    pub fn post_event_buffers(&mut self, n: usize, len: u32) -> Result<(), FrontendError> {
        for _ in 0..n {
            let at = self.conn.alloc(u64::from(len.max(1)), 64)?;
            let q = &mut self.conn.queues[1];
            let head = q
                .add_chain(&self.conn.mem, &[(at, len, true)], None)
                .ok_or_else(|| FrontendError::Protocol("event queue full".into()))?;
            self.event_bufs.insert(head, at);
        }
        self.conn.queues[1].kick();
        Ok(())
    }

    /// Waits (at most `timeout`) for the device to return an event buffer; returns its
    /// used length and its first 16 bytes (`struct virtio_scsi_event`).
    pub fn wait_event(&mut self, timeout: Duration) -> Option<(u32, [u8; 16])> {
        let (head, used) = self.conn.queues[1].wait_used(&self.conn.mem, timeout)?;
        let at = self.event_bufs.remove(&head)?;
        let mut e = [0u8; 16];
        let _ = self.conn.mem.read_slice(&mut e, GuestAddress(at));
        Some((used, e))
    }

    /// A task management function; returns the virtio response code.
    pub fn tmf(&mut self, subtype: u32, lun: [u8; 8], tag: u64) -> Result<u8, FrontendError> {
        let mut req = [0u8; 24];
        req[4..8].copy_from_slice(&subtype.to_le_bytes());
        req[8..16].copy_from_slice(&lun);
        req[16..24].copy_from_slice(&tag.to_le_bytes());
        Ok(self.control(&req, 1)?.0[0])
    }
}
