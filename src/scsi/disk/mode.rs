//! MODE SENSE and MODE SELECT: the caching page (WCE) and the control page.

use std::sync::atomic::Ordering;

use super::{reply, EmulatedDisk, DEVICE_SPECIFIC_DPOFUA};
use crate::scsi::cdb::{self, be16, byte};
use crate::scsi::{DataOut, Outcome, Sense};

const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0a;
const PAGE_ALL: u8 = 0x3f;
const CACHING_LEN: usize = 20;
const CONTROL_LEN: usize = 12;
/// Largest MODE SELECT parameter list accepted: headers, one block descriptor, both pages.
const SELECT_MAX: usize = 8 + 16 + CACHING_LEN + CONTROL_LEN;

/// Page control field of MODE SENSE.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

impl EmulatedDisk {
    fn caching_page(&self, pc: PageControl) -> [u8; CACHING_LEN] {
        let mut p = [0u8; CACHING_LEN];
        p[0] = PAGE_CACHING;
        p[1] = (CACHING_LEN - 2) as u8;
        let wce = match pc {
            PageControl::Current => self.write_cache_enabled(),
            PageControl::Changeable => true,
            PageControl::Default => self.props.write_cache,
        };
        if wce {
            p[2] = 0x04;
        }
        p
    }

    fn control_page(&self, pc: PageControl) -> [u8; CONTROL_LEN] {
        let mut p = [0u8; CONTROL_LEN];
        p[0] = PAGE_CONTROL;
        p[1] = (CONTROL_LEN - 2) as u8;
        if pc != PageControl::Changeable {
            p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
            p[8] = 0xff; // BUSY TIMEOUT PERIOD: unlimited
            p[9] = 0xff;
        }
        p
    }

    pub(super) fn mode_sense(&self, c: &[u8], data_in: &mut [u8]) -> Result<Outcome, Sense> {
        let ten = byte(c, 0) == cdb::MODE_SENSE_10;
        let dbd = byte(c, 1) & 0x08 != 0;
        let llbaa = ten && byte(c, 1) & 0x10 != 0;
        let pc = match byte(c, 2) >> 6 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => return Err(Sense::saving_parameters_not_supported()),
        };
        let page = byte(c, 2) & 0x3f;
        let subpage = byte(c, 3);
        if subpage != 0 && !(page == PAGE_ALL && subpage == 0xff) {
            return Err(Sense::invalid_field_in_cdb());
        }
        let alloc = if ten {
            usize::from(be16(c, 7))
        } else {
            usize::from(byte(c, 4))
        };
        let mut buf = [0u8; 8 + 16 + CACHING_LEN + CONTROL_LEN];
        let hdr = if ten { 8 } else { 4 };
        let mut n = hdr;
        // Block descriptor.
        if !dbd {
            let bs = self.props.block_size;
            let blocks = self.capacity_blocks();
            if llbaa {
                buf[n..n + 8].copy_from_slice(&blocks.to_be_bytes());
                buf[n + 12..n + 16].copy_from_slice(&bs.to_be_bytes());
                n += 16;
            } else {
                let b = u32::try_from(blocks).unwrap_or(u32::MAX);
                let short = if b > 0x00ff_ffff { 0x00ff_ffff } else { b };
                buf[n..n + 4].copy_from_slice(&short.to_be_bytes());
                buf[n] = 0; // density code
                buf[n + 4..n + 8].copy_from_slice(&bs.to_be_bytes());
                buf[n + 4] = 0;
                n += 8;
            }
        }
        let bd_len = n - hdr;
        match page {
            PAGE_CACHING => {
                buf[n..n + CACHING_LEN].copy_from_slice(&self.caching_page(pc));
                n += CACHING_LEN;
            }
            PAGE_CONTROL => {
                buf[n..n + CONTROL_LEN].copy_from_slice(&self.control_page(pc));
                n += CONTROL_LEN;
            }
            PAGE_ALL => {
                buf[n..n + CACHING_LEN].copy_from_slice(&self.caching_page(pc));
                n += CACHING_LEN;
                buf[n..n + CONTROL_LEN].copy_from_slice(&self.control_page(pc));
                n += CONTROL_LEN;
            }
            _ => return Err(Sense::invalid_field_in_cdb()),
        }
        // Device-specific parameter: WP when read-only; DPOFUA: FUA is honoured.
        let dsp = if self.props.readonly { 0x80 } else { 0x00 } | DEVICE_SPECIFIC_DPOFUA;
        if ten {
            buf[0..2].copy_from_slice(&((n - 2) as u16).to_be_bytes());
            buf[3] = dsp;
            buf[4] = u8::from(llbaa && !dbd);
            buf[6..8].copy_from_slice(&(bd_len as u16).to_be_bytes());
        } else {
            buf[0] = (n - 1) as u8;
            buf[2] = dsp;
            buf[3] = bd_len as u8;
        }
        Ok(reply(data_in, &buf[..n], alloc))
    }

    pub(super) fn mode_select(&self, c: &[u8], data_out: &dyn DataOut) -> Result<Outcome, Sense> {
        let ten = byte(c, 0) == cdb::MODE_SELECT_10;
        let pf = byte(c, 1) & 0x10 != 0;
        let sp = byte(c, 1) & 0x01 != 0;
        let len = if ten {
            usize::from(be16(c, 7))
        } else {
            usize::from(byte(c, 4))
        };
        if len == 0 {
            return Ok(Outcome::Good { data_in_len: 0 });
        }
        if !pf || sp {
            return Err(if sp {
                Sense::saving_parameters_not_supported()
            } else {
                Sense::invalid_field_in_cdb()
            });
        }
        let hdr = if ten { 8 } else { 4 };
        if len < hdr || len > SELECT_MAX {
            return Err(Sense::parameter_list_length_error());
        }
        let mut list = [0u8; SELECT_MAX];
        if data_out.read_at(0, &mut list[..len]) < len {
            return Err(Sense::parameter_list_length_error());
        }
        let list = &list[..len];
        let bd_len = if ten {
            usize::from(be16(list, 6))
        } else {
            usize::from(list[3])
        };
        let mut at = hdr;
        match bd_len {
            0 => {}
            8 | 16 if at + bd_len <= len => {
                // A block descriptor may restate the block length, not change it.
                let bs_at = if bd_len == 8 { at + 4 } else { at + 12 };
                let bs = u32::from_be_bytes([0, list[bs_at + 1], list[bs_at + 2], list[bs_at + 3]]);
                if bs != self.props.block_size {
                    return Err(Sense::invalid_field_in_parameter_list());
                }
                at += bd_len;
            }
            _ => return Err(Sense::invalid_field_in_parameter_list()),
        }
        let mut new_wce = None;
        while at < len {
            if at + 2 > len {
                return Err(Sense::parameter_list_length_error());
            }
            let code = list[at] & 0x3f;
            if list[at] & 0x40 != 0 {
                return Err(Sense::invalid_field_in_parameter_list());
            }
            let plen = usize::from(list[at + 1]) + 2;
            if at + plen > len {
                return Err(Sense::parameter_list_length_error());
            }
            let page = &list[at..at + plen];
            match code {
                PAGE_CACHING if plen == CACHING_LEN => {
                    let cur = self.caching_page(PageControl::Current);
                    // Everything but WCE must equal the current page (PS bit ignored).
                    let same = page
                        .iter()
                        .zip(cur.iter())
                        .enumerate()
                        .all(|(i, (a, b))| match i {
                            0 => a & 0x3f == b & 0x3f,
                            2 => a & !0x04 == b & !0x04,
                            _ => a == b,
                        });
                    if !same {
                        return Err(Sense::invalid_field_in_parameter_list());
                    }
                    new_wce = Some(page[2] & 0x04 != 0);
                }
                PAGE_CONTROL if plen == CONTROL_LEN => {
                    let cur = self.control_page(PageControl::Current);
                    if page[1..] != cur[1..] {
                        return Err(Sense::invalid_field_in_parameter_list());
                    }
                }
                _ => return Err(Sense::invalid_field_in_parameter_list()),
            }
            at += plen;
        }
        if let Some(wce) = new_wce {
            self.write_cache.store(wce, Ordering::Relaxed);
        }
        Ok(Outcome::Good { data_in_len: 0 })
    }
}
