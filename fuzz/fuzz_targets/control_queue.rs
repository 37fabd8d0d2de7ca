//! Fuzz target: the control queue (task management and asynchronous notification requests)
//! with commands in flight. The input's first byte picks queue sizes, EVENT_IDX and which
//! queue is served first; the rest is guest memory from address 0 holding both the request
//! queue and the control queue (`vscsid_fuzz::virtio` layout). Both queues are kicked,
//! then completions and waiting task management functions run until nothing is left.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vscsid_fuzz::virtio::{DeviceHarness, QueueFlags, CONTROL_VRING, REQUEST_VRING};

thread_local! {
    static DEVICE: DeviceHarness = DeviceHarness::new();
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, image)) = data.split_first() else {
        return;
    };
    let flags = QueueFlags::from_byte(flags);
    let kicks = if flags.control_first {
        [CONTROL_VRING, REQUEST_VRING]
    } else {
        [REQUEST_VRING, CONTROL_VRING]
    };
    DEVICE.with(|d| d.run(flags, image, &kicks));
});
