//! Fuzz target: one SCSI command on any opcode, run through the LUN interface on the
//! emulated disks (memfd images, real io_uring), the null LUN and the LUN table's own
//! answers. Input layout: `vscsid_fuzz::cdb`.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use vscsid_fuzz::cdb::CdbHarness;

thread_local! {
    static HARNESS: RefCell<CdbHarness> = RefCell::new(CdbHarness::new());
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| h.borrow_mut().run(data));
});
