//! LOG SENSE (SPC-4 6.6): the supported log pages page and the logical block provisioning
//! page (SBC-3 6.4.5). Nothing is logged that the disk does not know: the provisioning page
//! carries the used resource count only where the backing can say how much it holds.

use super::{reply, EmulatedDisk};
use crate::scsi::cdb::{be16, byte};
use crate::scsi::{Outcome, Sense};

const PAGE_SUPPORTED: u8 = 0x00;
const PAGE_LOGICAL_BLOCK_PROVISIONING: u8 = 0x0c;
/// Subpage code asking for the list of supported pages and subpages.
const SUBPAGE_ALL: u8 = 0xff;

/// Parameter code of USED LBA MAPPING RESOURCE COUNT (SBC-3 6.4.5.3).
const USED_LBA_MAPPING_RESOURCES: u16 = 0x0002;
/// Log parameter control byte: TSD (the device does not save it), FORMAT AND LINKING 11b
/// (a bounded data counter), as SBC-3 gives for resource count parameters.
const RESOURCE_COUNT_CONTROL: u8 = 0x20 | 0x03;
/// SCOPE 01b: the count is dedicated to this logical unit.
const SCOPE_DEDICATED: u8 = 0x01;

/// Counts the logical blocks the backing has allocated (a file's blocks on the host), or
/// `None` when it cannot say (a block device).
pub type UsedBlocks = Box<dyn Fn() -> Option<u64> + Send + Sync>;

impl EmulatedDisk {
    /// The log pages this disk answers, in ascending order; the provisioning page only
    /// where the disk provisions (LBPME).
    fn log_pages(&self) -> &'static [u8] {
        if self.props.discard {
            &[PAGE_SUPPORTED, PAGE_LOGICAL_BLOCK_PROVISIONING]
        } else {
            &[PAGE_SUPPORTED]
        }
    }

    pub(super) fn log_sense(&self, c: &[u8], data_in: &mut [u8]) -> Result<Outcome, Sense> {
        // SP (save parameters) and the obsolete PPC: nothing is saved, every parameter of
        // a page is returned.
        if byte(c, 1) & 0x03 != 0 {
            return Err(Sense::invalid_field_in_cdb());
        }
        let page = byte(c, 2) & 0x3f;
        let subpage = byte(c, 3);
        let pointer = be16(c, 5);
        let alloc = usize::from(be16(c, 7));
        let pages = self.log_pages();
        let mut buf = [0u8; 64];
        // DS: parameters are not saved; SPF when a subpage format is used.
        buf[0] = 0x80 | page;
        let n = match (page, subpage) {
            (PAGE_SUPPORTED, 0) if pointer == 0 => {
                buf[4..4 + pages.len()].copy_from_slice(pages);
                4 + pages.len()
            }
            (PAGE_SUPPORTED, SUBPAGE_ALL) if pointer == 0 => {
                buf[0] |= 0x40;
                buf[1] = SUBPAGE_ALL;
                let mut n = 4;
                for &p in pages {
                    buf[n] = p;
                    n += 2;
                    if p == PAGE_SUPPORTED {
                        buf[n..n + 2].copy_from_slice(&[PAGE_SUPPORTED, SUBPAGE_ALL]);
                        n += 2;
                    }
                }
                n
            }
            (PAGE_LOGICAL_BLOCK_PROVISIONING, 0) if pages.contains(&page) => {
                let mut n = 4;
                let used = self.used_blocks.as_ref().and_then(|count| count());
                if let Some(blocks) = used.filter(|_| pointer <= USED_LBA_MAPPING_RESOURCES) {
                    let p = &mut buf[n..n + 12];
                    p[0..2].copy_from_slice(&USED_LBA_MAPPING_RESOURCES.to_be_bytes());
                    p[2] = RESOURCE_COUNT_CONTROL;
                    p[3] = 8;
                    // In logical blocks (VPD 0xB2's THRESHOLD EXPONENT is 0), saturated.
                    let count = u32::try_from(blocks).unwrap_or(u32::MAX);
                    p[4..8].copy_from_slice(&count.to_be_bytes());
                    p[8] = SCOPE_DEDICATED;
                    n += 12;
                }
                n
            }
            _ => return Err(Sense::invalid_field_in_cdb()),
        };
        buf[2..4].copy_from_slice(&((n - 4) as u16).to_be_bytes());
        Ok(reply(data_in, &buf[..n], alloc))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::props;
    use super::*;
    use crate::scsi::cdb::LOG_SENSE;

    fn log_sense(d: &EmulatedDisk, page: u8, subpage: u8, pointer: u16) -> Result<Vec<u8>, Sense> {
        let mut c = [0u8; 10];
        c[0] = LOG_SENSE;
        c[2] = 0x40 | page; // PC 01b: cumulative values
        c[3] = subpage;
        c[5..7].copy_from_slice(&pointer.to_be_bytes());
        c[7..9].copy_from_slice(&512u16.to_be_bytes());
        let mut buf = [0u8; 512];
        match d.log_sense(&c, &mut buf)? {
            Outcome::Good { data_in_len } => Ok(buf[..data_in_len].to_vec()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_supported_pages_are_the_ones_answered() {
        let d = EmulatedDisk::new(props());
        assert_eq!(log_sense(&d, 0, 0, 0), Ok(vec![0x80, 0, 0, 2, 0x00, 0x0c]));
        assert_eq!(
            log_sense(&d, 0, 0xff, 0),
            Ok(vec![0xc0, 0xff, 0, 6, 0x00, 0x00, 0x00, 0xff, 0x0c, 0x00])
        );
        // Every listed page answers; others do not.
        for page in 0..0x40u8 {
            let listed = [0x00, 0x0c].contains(&page);
            assert_eq!(log_sense(&d, page, 0, 0).is_ok(), listed, "page {page:#x}");
        }
        let mut no_discard = props();
        no_discard.discard = false;
        let d = EmulatedDisk::new(no_discard);
        assert_eq!(log_sense(&d, 0, 0, 0), Ok(vec![0x80, 0, 0, 1, 0x00]));
        assert_eq!(
            log_sense(&d, 0x0c, 0, 0),
            Err(Sense::invalid_field_in_cdb())
        );
    }

    #[test]
    fn provisioning_page_reports_used_blocks_when_known() {
        let d = EmulatedDisk::new(props());
        // No counter (a null disk, a block device): the page has no parameters.
        assert_eq!(log_sense(&d, 0x0c, 0, 0), Ok(vec![0x8c, 0, 0, 0]));
        let d = EmulatedDisk::new(props()).with_used_blocks(Box::new(|| Some(1234)));
        let page = log_sense(&d, 0x0c, 0, 0).expect("page");
        assert_eq!(&page[..4], &[0x8c, 0, 0, 12]);
        assert_eq!(&page[4..8], &[0x00, 0x02, 0x23, 8]);
        assert_eq!(
            u32::from_be_bytes([page[8], page[9], page[10], page[11]]),
            1234
        );
        assert_eq!(page[12] & 0x03, 1, "dedicated to this LU");
        // The parameter pointer skips parameters below it.
        assert_eq!(log_sense(&d, 0x0c, 0, 3), Ok(vec![0x8c, 0, 0, 0]));
        let d = EmulatedDisk::new(props()).with_used_blocks(Box::new(|| None));
        assert_eq!(log_sense(&d, 0x0c, 0, 0), Ok(vec![0x8c, 0, 0, 0]));
    }

    #[test]
    fn save_parameters_and_unknown_subpages_are_refused() {
        let d = EmulatedDisk::new(props());
        let mut c = [0u8; 10];
        c[0] = LOG_SENSE;
        c[1] = 0x01;
        let mut buf = [0u8; 64];
        assert_eq!(
            d.log_sense(&c, &mut buf),
            Err(Sense::invalid_field_in_cdb())
        );
        assert_eq!(
            log_sense(&d, 0x0c, 1, 0),
            Err(Sense::invalid_field_in_cdb())
        );
        assert_eq!(log_sense(&d, 0, 0, 1), Err(Sense::invalid_field_in_cdb()));
    }
}
