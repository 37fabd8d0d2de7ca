//! The LUN behind the scripted ALUA target's two portals (`alua_target.rs`): its data,
//! its two target port groups' states, the unit attentions of each I_T nexus, and the
//! answer to each command as the port it arrives through may give it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

pub const ACTIVE_OPTIMIZED: u8 = 0x0;
pub const ACTIVE_NON_OPTIMIZED: u8 = 0x1;
pub const STANDBY: u8 = 0x2;
pub const UNAVAILABLE: u8 = 0x3;
pub const TRANSITIONING: u8 = 0xf;

pub(super) const BLOCK: usize = 512;

/// Unit attention a nexus has pending.
pub(super) const UA_NONE: u8 = 0;
pub(super) const UA_POWER_ON: u8 = 1;
pub(super) const UA_STATE_CHANGED: u8 = 2;

/// What the test reads of one port.
#[derive(Default)]
pub struct PortCounters {
    /// READs and WRITEs served.
    pub io: AtomicU64,
    /// Commands answered NOT READY for the port's state.
    pub refused: AtomicU64,
    /// ASYMMETRIC ACCESS STATE CHANGED attentions reported.
    pub state_attentions: AtomicU64,
}

/// One I_T nexus (connection) as the LUN sees it.
pub(super) struct Nexus {
    pub(super) port: usize,
    pub(super) attention: AtomicU8,
}

pub(super) struct Lu {
    pub(super) data: Mutex<Vec<u8>>,
    pub(super) states: [AtomicU8; 2],
    /// IMPLICIT TRANSITION TIME reported in RTPG's extended header (seconds).
    pub(super) transition_secs: u8,
    pub(super) nexuses: Mutex<Vec<Arc<Nexus>>>,
    pub(super) ports: [PortCounters; 2],
}

pub(super) fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

/// What a command gets.
pub(super) enum Reply {
    Good(Vec<u8>),
    Check(Vec<u8>),
    /// A WRITE in range: its data comes first.
    Write {
        lba: u64,
        len: usize,
    },
}

impl Lu {
    /// Switches the groups' states; nexuses on ports active afterwards get ASYMMETRIC
    /// ACCESS STATE CHANGED.
    pub(super) fn set_states(&self, states: [u8; 2]) {
        for (s, v) in self.states.iter().zip(states) {
            s.store(v, Ordering::Release);
        }
        for n in self.nexuses.lock().unwrap().iter() {
            if matches!(states[n.port], ACTIVE_OPTIMIZED | ACTIVE_NON_OPTIMIZED) {
                let _ = n.attention.compare_exchange(
                    UA_NONE,
                    UA_STATE_CHANGED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
    }

    /// The answer to `cdb` arriving through `port` on `nexus`.
    pub(super) fn execute(&self, port: usize, nexus: &Nexus, cdb: &[u8]) -> Reply {
        let opcode = cdb[0];
        let rtpg = opcode == 0xa3 && cdb[1] & 0x1f == 0x0a;
        // INQUIRY, REPORT LUNS and REQUEST SENSE never get a unit attention.
        if !matches!(opcode, 0x12 | 0xa0 | 0x03) {
            match nexus.attention.swap(UA_NONE, Ordering::AcqRel) {
                UA_POWER_ON => return Reply::Check(fixed_sense(6, 0x29, 0)),
                UA_STATE_CHANGED => {
                    self.ports[port]
                        .state_attentions
                        .fetch_add(1, Ordering::Relaxed);
                    return Reply::Check(fixed_sense(6, 0x2a, 0x06));
                }
                _ => {}
            }
        }
        let state = self.states[port].load(Ordering::Acquire);
        let always = matches!(opcode, 0x12 | 0xa0 | 0x03) || rtpg;
        if !always && !matches!(state, ACTIVE_OPTIMIZED | ACTIVE_NON_OPTIMIZED) {
            self.ports[port].refused.fetch_add(1, Ordering::Relaxed);
            let ascq = match state {
                STANDBY => 0x0b,
                UNAVAILABLE => 0x0c,
                _ => 0x0a,
            };
            return Reply::Check(fixed_sense(2, 0x04, ascq));
        }
        let blocks = (self.data.lock().unwrap().len() / BLOCK) as u64;
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap());
        match opcode {
            0x00 | 0x35 | 0x91 => Reply::Good(Vec::new()),
            0x03 => Reply::Good(fixed_sense(0, 0, 0)),
            0x12 => inquiry(port, cdb),
            0xa0 => Reply::Good(vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            0x25 => {
                let mut d = ((blocks - 1) as u32).to_be_bytes().to_vec();
                d.extend_from_slice(&(BLOCK as u32).to_be_bytes());
                Reply::Good(d)
            }
            0x9e if cdb[1] & 0x1f == 0x10 => {
                let mut d = (blocks - 1).to_be_bytes().to_vec();
                d.extend_from_slice(&(BLOCK as u32).to_be_bytes());
                d.resize(32, 0);
                Reply::Good(d)
            }
            0x1a => Reply::Good(vec![3, 0, 0, 0]),
            0x5a => Reply::Good(vec![0, 6, 0, 0, 0, 0, 0, 0]),
            _ if rtpg => Reply::Good(self.rtpg(cdb[1] >> 5 == 1)),
            0x28 | 0x88 | 0x2a | 0x8a => {
                let (lba, count) = if opcode & 0xf0 == 0x20 {
                    (
                        u64::from(be32(&cdb[2..6])),
                        u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
                    )
                } else {
                    (be64(&cdb[2..10]), u64::from(be32(&cdb[10..14])))
                };
                if lba + count > blocks {
                    return Reply::Check(fixed_sense(5, 0x21, 0));
                }
                self.ports[port].io.fetch_add(1, Ordering::Relaxed);
                let at = lba as usize * BLOCK;
                let len = count as usize * BLOCK;
                if opcode == 0x28 || opcode == 0x88 {
                    return Reply::Good(self.data.lock().unwrap()[at..at + len].to_vec());
                }
                Reply::Write { lba, len }
            }
            _ => Reply::Check(fixed_sense(5, 0x20, 0)),
        }
    }

    fn rtpg(&self, extended: bool) -> Vec<u8> {
        let mut d = vec![0u8; 4];
        if extended {
            d.extend_from_slice(&[0x10, self.transition_secs, 0, 0]);
        }
        for (i, s) in self.states.iter().enumerate() {
            let id = i as u8 + 1;
            // State; supports T, O, U, S, AN, AO.
            d.extend_from_slice(&[s.load(Ordering::Acquire), 0xcf, 0, id, 0, 0, 0, 1]);
            d.extend_from_slice(&[0, 0, 0, id]);
        }
        let n = (d.len() - 4) as u32;
        d[..4].copy_from_slice(&n.to_be_bytes());
        d
    }
}

fn inquiry(port: usize, cdb: &[u8]) -> Reply {
    if cdb[1] & 1 == 0 {
        let mut d = vec![0u8; 36];
        d[2] = 0x06;
        d[3] = 0x02;
        d[4] = 31;
        d[5] = 0x10; // TPGS = 01b: implicit ALUA
        d[7] = 0x02;
        d[8..16].copy_from_slice(b"VSCSID  ");
        d[16..32].copy_from_slice(b"ALUA TARGET     ");
        d[32..36].copy_from_slice(b"0001");
        return Reply::Good(d);
    }
    let port = port as u8 + 1;
    match cdb[2] {
        0x00 => Reply::Good(vec![0, 0, 0, 2, 0x00, 0x83]),
        0x83 => {
            let mut d = vec![0, 0x83, 0, 0];
            // NAA 5 of the LUN, relative target port, target port group.
            d.extend_from_slice(&[0x01, 0x03, 0, 8, 0x50, 0x01, 0x40, 0x5c, 0, 0, 0, 1]);
            d.extend_from_slice(&[0x51, 0x94, 0, 4, 0, 0, 0, port]);
            d.extend_from_slice(&[0x51, 0x95, 0, 4, 0, 0, 0, port]);
            let n = (d.len() - 4) as u16;
            d[2..4].copy_from_slice(&n.to_be_bytes());
            Reply::Good(d)
        }
        _ => Reply::Check(fixed_sense(5, 0x24, 0)),
    }
}
