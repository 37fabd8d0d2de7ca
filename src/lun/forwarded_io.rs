//! The guest buffers of a forwarded (iSCSI passthrough) command, lent to the initiator so
//! it moves the command's data in place: the session's reader thread writes Data-In
//! straight into the guest's data-in buffers, and the sender encodes Data-Out straight
//! from the guest's data-out buffers, with no per-command copy or allocation. Slots are
//! pooled per LUN and reused.
//!
//! Invariants (what makes writing guest memory from another thread safe):
//! - **The mapping outlives every access.** A slot holds a counted reference to the memory
//!   map the buffers lie in ([`MemGuard`]: vm-memory's regions are reference counted and
//!   unmapped only when the last reference goes), taken when the command starts. The
//!   frontend replacing its memory table, or disconnecting, does not unmap it under a
//!   session thread; the slot lets go of it when the command has ended and nobody else
//!   holds the slot.
//! - **No data-in write after the command ended.** Every write takes the slot's lock and
//!   checks that it is open. The worker closes it, under the same lock, before it answers
//!   the guest ([`GuestIoLease::end`]) and when it drops a command of a connection that
//!   went away (the lease is dropped): once the lock is released, no write lands in those
//!   buffers again, even from a session that still holds the command (a path that is
//!   being failed over, a command abandoned at a frozen target). A command reissued on
//!   another path while open writes the same bytes again into the same buffers, which is
//!   what the guest asked for. On the session's side, a reader starts a Data-In PDU only
//!   while the command is pending on its connection (checked under its session's lock);
//!   a path that loses the command (failed over, aborted) meanwhile may finish that one
//!   PDU, whose data the target sent for this command, and starts no other.
//! - **Never outside the guest's buffers.** A write is clipped to the data-in length the
//!   guest supplied, whatever offset and length the target sends, and each range is
//!   translated through the memory map (a range outside guest memory is not written).
//! - **Data-out is checked before it is sent.** A command whose data-out does not lie
//!   wholly in guest memory is not lent (the LUN copies as before), so the sender never
//!   sends fewer bytes than it announced; reading data-out after close is harmless (it
//!   does not change the guest) and keeps a disrupted write's resend intact.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::guest::{DataBuffers, MemGuard, SegList};
use crate::scsi::task::{GuestBuffers, GuestIo};

/// Most free slots a pool keeps (more would only be commands in flight at once).
const MAX_FREE: usize = 1024;

/// A LUN's free slots.
#[derive(Default)]
pub struct GuestIoPool {
    free: Mutex<Vec<Arc<GuestIoSlot>>>,
}

/// One command's guest buffers, as the initiator sees them.
#[derive(Default)]
pub struct GuestIoSlot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The memory map the buffers lie in; `None` in a free slot.
    mem: Option<MemGuard>,
    /// Data-in may be written (the command has not ended).
    open: bool,
    out: SegList,
    out_base: u64,
    out_len: u64,
    inn: SegList,
    in_base: u64,
    in_len: u64,
    /// End of the data-in written so far (the data-in length the guest is told).
    written: u64,
}

/// The worker's hold on a lent slot: the command's [`crate::lun::Task`] keeps it until
/// the command ends; ending it or dropping it closes the slot.
pub struct GuestIoLease {
    slot: Arc<GuestIoSlot>,
    pool: Arc<GuestIoPool>,
}

fn lock(m: &Mutex<SlotState>) -> MutexGuard<'_, SlotState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GuestIoPool {
    /// Lends a slot for a command's `data`, or `None` when its data-out does not lie
    /// wholly in guest memory (the caller copies then, and fails it as before).
    pub fn lend(self: &Arc<Self>, data: &DataBuffers<'_>) -> Option<(GuestIoLease, GuestIo)> {
        if !data.out.is_empty() && !data.out.is_mapped() {
            return None;
        }
        let slot = self.take_free();
        {
            let mut st = lock(&slot.state);
            let (out, out_base) = data.out.segments();
            let (inn, in_base) = data.inn.segments();
            st.out.copy_from(out);
            st.inn.copy_from(inn);
            st.out_base = out_base;
            st.in_base = in_base;
            st.out_len = data.out.len();
            st.in_len = data.inn.len();
            st.written = 0;
            st.mem = Some(data.guard.clone());
            st.open = true;
        }
        let io = GuestIo {
            buffers: slot.clone(),
            out_len: usize::try_from(data.out.len()).ok()?,
        };
        Some((
            GuestIoLease {
                slot,
                pool: self.clone(),
            },
            io,
        ))
    }

    /// A free slot nobody else holds (a session may still hold a closed one for a while).
    fn take_free(&self) -> Arc<GuestIoSlot> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.iter().position(|s| Arc::strong_count(s) == 1) {
            Some(i) => free.swap_remove(i),
            None => Arc::new(GuestIoSlot::default()),
        }
    }

    /// Takes back a slot only its (ending) lease holds; one still held elsewhere is left
    /// to that holder, and freed with its memory map reference when it lets go.
    fn give_back(&self, lease_slot: &Arc<GuestIoSlot>) {
        if Arc::strong_count(lease_slot) != 1 {
            return;
        }
        lock(&lease_slot.state).mem = None;
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < MAX_FREE {
            free.push(lease_slot.clone());
        }
    }
}

impl GuestIoLease {
    /// Closes the slot (no data-in is written after this returns) and returns the data-in
    /// bytes written into the guest's buffers.
    pub fn end(self) -> u64 {
        let mut st = lock(&self.slot.state);
        st.open = false;
        st.written
        // The lease drops here, giving the slot back.
    }
}

impl Drop for GuestIoLease {
    fn drop(&mut self) {
        lock(&self.slot.state).open = false;
        self.pool.give_back(&self.slot);
    }
}

impl GuestBuffers for GuestIoSlot {
    fn read_out(&self, offset: usize, buf: &mut [u8]) -> usize {
        let st = lock(&self.state);
        let Some(mem) = st.mem.as_ref() else {
            return 0;
        };
        let offset = offset as u64;
        if offset >= st.out_len {
            return 0;
        }
        let n = (buf.len() as u64).min(st.out_len - offset) as usize;
        st.out
            .read_into(&**mem, st.out_base + offset, &mut buf[..n])
    }

    fn write_in(&self, offset: usize, data: &[u8]) -> usize {
        let mut st = lock(&self.state);
        let offset = offset as u64;
        if !st.open || offset >= st.in_len {
            return 0;
        }
        let Some(mem) = st.mem.as_ref() else {
            return 0;
        };
        let n = (data.len() as u64).min(st.in_len - offset) as usize;
        let done = st.inn.write_from(&**mem, st.in_base + offset, &data[..n]);
        st.written = st.written.max(offset + done as u64);
        done
    }
}

#[cfg(test)]
mod tests;
