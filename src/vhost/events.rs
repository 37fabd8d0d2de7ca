//! The event queue: telling the guest that LUNs came, went or changed size (virtio-scsi
//! TRANSPORT_RESET with RESCAN or REMOVED, PARAM_CHANGE with CAPACITY DATA HAS CHANGED).
//!
//! The guest posts empty event buffers; each pending change of the LUN table
//! ([`LiveLuns`]) fills one. Without buffers the changes wait (bounded: past that they are
//! dropped and the next event carries EVENTS_MISSED, after which a guest rescans). A
//! buffer too short for an event is returned unused. Served by the thread that owns the
//! control and event queues, when the guest posts buffers and when a change wakes it.

use vm_memory::GuestAddressSpace;

use super::queue::{avail_ring_is_corrupt, signal, Vring};
use super::shared::{Shared, EVENT_QUEUE};
use crate::lun::{LiveLuns, LunChange};
use crate::virtio::layout::event;
use crate::virtio::ParsedChain;

/// The 16 bytes of one event.
pub fn encode(change: Option<LunChange>, missed: bool) -> [u8; event::LEN] {
    let (kind, target, lun, reason) = match change {
        None => (event::NO_EVENT, 0, 0, 0),
        Some(LunChange::Added { target, lun }) => {
            (event::TRANSPORT_RESET, target, lun, event::RESET_RESCAN)
        }
        Some(LunChange::Removed { target, lun }) => {
            (event::TRANSPORT_RESET, target, lun, event::RESET_REMOVED)
        }
        // ASC 2Ah, ASCQ 09h: CAPACITY DATA HAS CHANGED.
        Some(LunChange::CapacityChanged { target, lun }) => {
            (event::PARAM_CHANGE, target, lun, 0x2a | (0x09 << 8))
        }
    };
    let mut e = [0u8; event::LEN];
    let kind = if missed {
        kind | event::EVENTS_MISSED
    } else {
        kind
    };
    e[0..4].copy_from_slice(&kind.to_le_bytes());
    if change.is_some() {
        // The LUN as REPORT LUNS gives it: flat space addressing from 256 on.
        e[4] = 1;
        e[5] = target;
        e[6] = if lun >= 256 {
            0x40 | (lun >> 8) as u8
        } else {
            0
        };
        e[7] = (lun & 0xff) as u8;
    }
    e[12..16].copy_from_slice(&reason.to_le_bytes());
    e
}

/// Puts as many pending changes as the guest gave buffers for into the event queue
/// (`vpos`: its position in this thread's `vrings`).
pub fn deliver(sh: &Shared, luns: &LiveLuns, vrings: &[Vring], vpos: usize) {
    if !luns.has_changes() || sh.is_broken(EVENT_QUEUE) {
        return;
    }
    let Some(vring) = vrings.get(vpos).filter(|v| v.is_ready()) else {
        return;
    };
    let mem = sh.mem.memory();
    let mut changes = luns.changes();
    let mut used_any = false;
    while !changes.is_empty() || changes.missed {
        let mut chain = ParsedChain::new();
        if !vring.pop_chain(&mem, &mut chain) {
            if avail_ring_is_corrupt(vring, &mem) {
                sh.mark_broken(EVENT_QUEUE);
            }
            break;
        }
        used_any = true;
        if chain.error.is_some() || chain.writable.total() < event::LEN as u64 {
            let _ = vring.add_used(chain.head, 0);
            continue;
        }
        let bytes = encode(changes.front(), changes.missed);
        let n = chain.writable.write_from(&*mem, 0, &bytes);
        let _ = vring.add_used(chain.head, n as u32);
        changes.pop_front();
        changes.missed = false;
    }
    luns.changes_taken(&changes);
    drop(changes);
    if used_any {
        signal(vring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_encoded_as_the_spec_and_linux_read_them() {
        let e = encode(Some(LunChange::Added { target: 2, lun: 5 }), false);
        assert_eq!(&e[0..4], &1u32.to_le_bytes());
        assert_eq!(&e[4..12], &[1, 2, 0, 5, 0, 0, 0, 0]);
        assert_eq!(&e[12..16], &1u32.to_le_bytes());
        let e = encode(
            Some(LunChange::Removed {
                target: 0,
                lun: 300,
            }),
            true,
        );
        assert_eq!(&e[0..4], &(0x8000_0001u32).to_le_bytes());
        assert_eq!(&e[4..8], &[1, 0, 0x41, 44]);
        assert_eq!(&e[12..16], &2u32.to_le_bytes());
        let e = encode(
            Some(LunChange::CapacityChanged { target: 0, lun: 1 }),
            false,
        );
        assert_eq!(&e[0..4], &3u32.to_le_bytes());
        assert_eq!(&e[12..16], &[0x2a, 0x09, 0, 0]);
        let e = encode(None, true);
        assert_eq!(&e[0..4], &0x8000_0000u32.to_le_bytes());
        assert_eq!(&e[4..16], &[0; 12]);
    }
}
