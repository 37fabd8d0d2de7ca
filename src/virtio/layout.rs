//! Wire layouts and constants of virtio-scsi (virtio 1.2, section 5.6).

/// CDB bytes in `virtio_scsi_cmd_req` (the config space's default `cdb_size`).
pub const CDB_SIZE: usize = 32;
/// Sense bytes in `virtio_scsi_cmd_resp` (the config space's default `sense_size`).
pub const SENSE_SIZE: usize = 96;
/// `virtio_scsi_cmd_req`: lun[8], tag u64, task_attr u8, prio u8, crn u8, cdb[32].
pub const CMD_REQ_LEN: usize = 8 + 8 + 3 + CDB_SIZE;
/// `virtio_scsi_cmd_resp`: sense_len u32, resid u32, status_qualifier u16, status u8,
/// response u8, sense[96].
pub const CMD_RESP_LEN: usize = 4 + 4 + 2 + 1 + 1 + SENSE_SIZE;

/// `response` codes of a command or a task management function.
pub mod response {
    pub const OK: u8 = 0;
    pub const OVERRUN: u8 = 1;
    pub const ABORTED: u8 = 2;
    pub const BAD_TARGET: u8 = 3;
    pub const RESET: u8 = 4;
    pub const BUSY: u8 = 5;
    pub const TRANSPORT_FAILURE: u8 = 6;
    pub const TARGET_FAILURE: u8 = 7;
    pub const NEXUS_FAILURE: u8 = 8;
    pub const FAILURE: u8 = 9;
    pub const FUNCTION_SUCCEEDED: u8 = 10;
    pub const FUNCTION_REJECTED: u8 = 11;
    pub const INCORRECT_LUN: u8 = 12;
    /// TMF answer meaning "done" (same value as OK).
    pub const FUNCTION_COMPLETE: u8 = 0;
}

/// Control queue request types.
pub mod ctrl {
    pub const TMF: u32 = 0;
    pub const AN_QUERY: u32 = 1;
    pub const AN_SUBSCRIBE: u32 = 2;
    /// `virtio_scsi_ctrl_tmf_req`: type u32, subtype u32, lun[8], id (tag) u64.
    pub const TMF_REQ_LEN: usize = 4 + 4 + 8 + 8;
    /// `virtio_scsi_ctrl_tmf_resp`: response u8.
    pub const TMF_RESP_LEN: usize = 1;
    /// `virtio_scsi_ctrl_an_req`: type u32, lun[8], event_requested u32.
    pub const AN_REQ_LEN: usize = 4 + 8 + 4;
    /// `virtio_scsi_ctrl_an_resp`: event_actual u32, response u8.
    pub const AN_RESP_LEN: usize = 4 + 1;
}

/// Task management function subtypes.
pub mod tmf {
    pub const ABORT_TASK: u32 = 0;
    pub const ABORT_TASK_SET: u32 = 1;
    pub const CLEAR_ACA: u32 = 2;
    pub const CLEAR_TASK_SET: u32 = 3;
    pub const I_T_NEXUS_RESET: u32 = 4;
    pub const LOGICAL_UNIT_RESET: u32 = 5;
    pub const QUERY_TASK: u32 = 6;
    pub const QUERY_TASK_SET: u32 = 7;
}

/// Device feature bits of virtio-scsi.
pub mod feature {
    pub const INOUT: u64 = 1 << 0;
    pub const HOTPLUG: u64 = 1 << 1;
    pub const CHANGE: u64 = 1 << 2;
    pub const T10_PI: u64 = 1 << 3;
}

/// Serialises a command response header (`virtio_scsi_cmd_resp`).
pub fn encode_cmd_resp(
    out: &mut [u8; CMD_RESP_LEN],
    response: u8,
    status: u8,
    resid: u32,
    sense: &[u8],
) {
    let sense_len = sense.len().min(SENSE_SIZE);
    out.fill(0);
    out[0..4].copy_from_slice(&(sense_len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&resid.to_le_bytes());
    out[10] = status;
    out[11] = response;
    out[12..12 + sense_len].copy_from_slice(&sense[..sense_len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_spec() {
        assert_eq!(CMD_REQ_LEN, 51);
        assert_eq!(CMD_RESP_LEN, 108);
        assert_eq!(ctrl::TMF_REQ_LEN, 24);
        assert_eq!(ctrl::AN_REQ_LEN, 16);
    }

    #[test]
    fn response_header_layout() {
        let mut out = [0xffu8; CMD_RESP_LEN];
        encode_cmd_resp(&mut out, response::OK, 2, 0x1234, &[0x70, 0, 5]);
        assert_eq!(&out[0..4], &3u32.to_le_bytes());
        assert_eq!(&out[4..8], &0x1234u32.to_le_bytes());
        assert_eq!(out[10], 2);
        assert_eq!(out[11], 0);
        assert_eq!(&out[12..15], &[0x70, 0, 5]);
        assert!(out[15..].iter().all(|&b| b == 0));
    }

    #[test]
    fn oversized_sense_is_cut() {
        let mut out = [0u8; CMD_RESP_LEN];
        encode_cmd_resp(&mut out, 0, 2, 0, &[1u8; 200]);
        assert_eq!(&out[0..4], &(SENSE_SIZE as u32).to_le_bytes());
    }
}

/// virtio-scsi events (virtio 1.2 5.6.6.3): `struct virtio_scsi_event` is the event type,
/// the 8-byte LUN address and a reason, 16 bytes.
pub mod event {
    pub const LEN: usize = 16;
    pub const NO_EVENT: u32 = 0;
    pub const TRANSPORT_RESET: u32 = 1;
    pub const PARAM_CHANGE: u32 = 3;
    /// Or'ed into the next event after the device dropped some.
    pub const EVENTS_MISSED: u32 = 0x8000_0000;
    /// Reasons of TRANSPORT_RESET.
    pub const RESET_RESCAN: u32 = 1;
    pub const RESET_REMOVED: u32 = 2;
}
