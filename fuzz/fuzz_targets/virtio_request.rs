//! Fuzz target: virtio-scsi command requests from guest memory the input writes. The input's
//! first byte picks queue sizes and EVENT_IDX; the rest is guest memory from address 0:
//! the request queue's descriptor table and available ring (`vscsid_fuzz::virtio` layout),
//! the request headers, CDBs and data-out. The device's worker pops the chains, decodes
//! them and runs them on the emulated disks (memfd images, real io_uring), the null LUN,
//! or the LUN table's own answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vscsid_fuzz::virtio::{DeviceHarness, QueueFlags, REQUEST_VRING};

thread_local! {
    static DEVICE: DeviceHarness = DeviceHarness::new();
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, image)) = data.split_first() else {
        return;
    };
    DEVICE.with(|d| d.run(QueueFlags::from_byte(flags), image, &[REQUEST_VRING]));
});
