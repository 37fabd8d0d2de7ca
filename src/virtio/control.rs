//! Control queue requests: task management functions and asynchronous notification
//! query/subscribe, decoded from the device-readable part of a chain.

use super::layout::ctrl;
use crate::backend::guest::SegList;
use vm_memory::GuestMemory;

/// A decoded control queue request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    Tmf {
        subtype: u32,
        lun: [u8; 8],
        tag: u64,
    },
    /// AN query (`subscribe == false`) or subscribe.
    An {
        subscribe: bool,
        lun: [u8; 8],
        event_requested: u32,
    },
    /// A type this device does not know.
    Unknown(u32),
    /// Fewer bytes than the request type needs.
    Short,
}

impl ControlRequest {
    /// Reads a control request from the readable segments of a chain.
    pub fn parse<M: GuestMemory + ?Sized>(mem: &M, readable: &SegList) -> ControlRequest {
        let mut buf = [0u8; ctrl::TMF_REQ_LEN];
        let n = readable.read_into(mem, 0, &mut buf);
        if n < 4 {
            return ControlRequest::Short;
        }
        let kind = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let lun_at = |at: usize| {
            let mut lun = [0u8; 8];
            lun.copy_from_slice(&buf[at..at + 8]);
            lun
        };
        match kind {
            ctrl::TMF if n >= ctrl::TMF_REQ_LEN => ControlRequest::Tmf {
                subtype: u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]),
                lun: lun_at(8),
                tag: u64::from_le_bytes([
                    buf[16], buf[17], buf[18], buf[19], buf[20], buf[21], buf[22], buf[23],
                ]),
            },
            ctrl::AN_QUERY | ctrl::AN_SUBSCRIBE if n >= ctrl::AN_REQ_LEN => ControlRequest::An {
                subscribe: kind == ctrl::AN_SUBSCRIBE,
                lun: lun_at(4),
                event_requested: u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]),
            },
            ctrl::TMF | ctrl::AN_QUERY | ctrl::AN_SUBSCRIBE => ControlRequest::Short,
            other => ControlRequest::Unknown(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::guest::Segment;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn setup(bytes: &[u8]) -> (GuestMemoryMmap<()>, SegList) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).expect("mem");
        mem.write_slice(bytes, GuestAddress(0x100)).expect("write");
        let mut l = SegList::with_capacity(1);
        l.push(Segment {
            addr: GuestAddress(0x100),
            len: bytes.len() as u32,
        });
        (mem, l)
    }

    #[test]
    fn decodes_a_tmf() {
        let mut b = vec![0u8; 24];
        b[4] = 5; // LOGICAL UNIT RESET
        b[8] = 1;
        b[11] = 3;
        b[16] = 0x42;
        let (m, l) = setup(&b);
        assert_eq!(
            ControlRequest::parse(&m, &l),
            ControlRequest::Tmf {
                subtype: 5,
                lun: [1, 0, 0, 3, 0, 0, 0, 0],
                tag: 0x42
            }
        );
    }

    #[test]
    fn decodes_an_and_rejects_short_or_unknown() {
        let mut b = vec![0u8; 16];
        b[0] = 2;
        b[12] = 0x10;
        let (m, l) = setup(&b);
        assert_eq!(
            ControlRequest::parse(&m, &l),
            ControlRequest::An {
                subscribe: true,
                lun: [0; 8],
                event_requested: 0x10
            }
        );
        let (m, l) = setup(&[0u8; 10]);
        assert_eq!(ControlRequest::parse(&m, &l), ControlRequest::Short);
        let (m, l) = setup(&[9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ControlRequest::parse(&m, &l), ControlRequest::Unknown(9));
        let (m, l) = setup(&[1, 0]);
        assert_eq!(ControlRequest::parse(&m, &l), ControlRequest::Short);
    }
}
