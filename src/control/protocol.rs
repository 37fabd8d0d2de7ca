//! The control protocol, version 1: a client writes one JSON object on one line and reads
//! one JSON object on one line back; a connection may carry several requests.
//!
//! Requests: `{"version": 1, "command": "<name>", ...arguments}`:
//! - `luns`: every LUN.
//! - `add`: `kind` (`disk`, `iscsi`, `null`) and `spec` (as `--disk`, `--iscsi`, `--null`
//!   take it), or `lun_config` (the fields of a configuration file's `[[lun]]` table as a
//!   JSON object); optional `target` (default 0) and `lun` (default: the first free one).
//! - `remove`: `target`, `lun`, optional `wait_ms` (for the commands in flight).
//! - `resize`: `target`, `lun`, optional `size` (bytes: grow the file to it first),
//!   optional `force` (allow a smaller size).
//! - `set`: `target`, `lun`, `limits`: an object of I/O limits (`iops`, `bw`, ... as the
//!   `[[lun]]` keys; numbers, bytes for `bw*`) that replace those limits (0 removes one;
//!   the others stay).
//! - `paths`: `target`, `lun`: the paths of an iSCSI LUN.
//! - `reservations`: `target`, `lun`: a disk LUN's persistent reservations: this daemon's
//!   `nexus`, the `state_file` (if any) and the `state` (PRgeneration, APTPL,
//!   registrations, the reservation, an SPC-2 holder, owed unit attentions).
//! - `path`: `target`, `lun`, `portal`, `action` (`fail` or `restore`): maintenance.
//! - `stats`: optional `target` and `lun` (both, for one LUN): each LUN's I/O statistics
//!   ([`LunStatsEntry`]) and the commands answered per request queue ([`QueueEntry`]).
//! - `metrics`: the statistics in the Prometheus text format, as `text`.
//!
//! Replies: `{"ok": true, ...}` with the command's result, or `{"ok": false, "error":
//! "<one line>"}`. A request without `version`, or with another version, is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version this daemon speaks.
pub const VERSION: u32 = 1;

/// Longest request line accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Luns,
    Add {
        /// `disk`, `iscsi` or `null`, with `spec` as the command line takes it ...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec: Option<String>,
        /// ... or the fields of a configuration file's `[[lun]]` table.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lun_config: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lun: Option<u16>,
    },
    Remove {
        target: u8,
        lun: u16,
        /// How long to wait for the LUN's commands in flight before replying (default
        /// 30000, at most 60000); the LUN is closed when they end either way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u32>,
    },
    Resize {
        target: u8,
        lun: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(default)]
        force: bool,
    },
    Set {
        target: u8,
        lun: u16,
        limits: BTreeMap<String, u64>,
    },
    Paths {
        target: u8,
        lun: u16,
    },
    Reservations {
        target: u8,
        lun: u16,
    },
    Path {
        target: u8,
        lun: u16,
        portal: String,
        action: PathAction,
    },
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lun: Option<u16>,
    },
    Metrics,
}

/// What `path` does to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathAction {
    Fail,
    Restore,
}

/// One LUN in the reply to `luns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunEntry {
    pub target: u8,
    pub lun: u16,
    pub description: String,
    pub size_bytes: Option<u64>,
    pub block_size: Option<u32>,
    pub in_flight: u32,
    pub paths_down: usize,
    pub paths: Vec<String>,
    /// The I/O limits set (keys as in `set`); empty when unlimited.
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
}

/// Counts by kind of command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByKind {
    pub read: u64,
    pub write: u64,
    pub other: u64,
}

/// Commands that did not end GOOD: CHECK CONDITION by sense key, host (transport)
/// failures by kind (only those seen), other statuses of a remote device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub total: u64,
    pub sense_keys: BTreeMap<String, u64>,
    pub host: BTreeMap<String, u64>,
    pub other_status: u64,
}

/// Latency in microseconds. The quantiles are upper bounds of the histogram's buckets
/// (powers of two of microseconds); null before the first command or past the last
/// bucket (2^26 µs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub p999: Option<u64>,
    /// `[upper bound in µs (null: unbounded), commands]` of each bucket that counted one.
    pub buckets: Vec<(Option<u64>, u64)>,
}

/// One LUN in the reply to `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LunStatsEntry {
    pub target: u8,
    pub lun: u16,
    pub commands: ByKind,
    pub bytes: ByKind,
    pub errors: ErrorCounts,
    pub latency_us: Latency,
    pub in_flight: u32,
}

/// One request queue in the reply to `stats` (only queues that answered a command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The request queue's number (0 is virtio-scsi's first request queue).
    pub queue: u16,
    pub commands: u64,
}

/// Parses one request line; the error is the one-line reply.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("version").and_then(serde_json::Value::as_u64) {
        Some(n) if n == u64::from(VERSION) => {}
        Some(n) => {
            return Err(format!(
                "version {n} is not spoken here (version {VERSION} is)"
            ))
        }
        None => {
            return Err(format!(
                "no \"version\" (this daemon speaks version {VERSION})"
            ))
        }
    }
    serde_json::from_value::<Envelope>(v)
        .map(|e| e.request)
        .map_err(|e| format!("bad request: {e}"))
}

/// The reply for an error.
pub fn error_reply(msg: &str) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_request(r#"{"version":1,"command":"luns"}"#),
            Ok(Request::Luns)
        );
        assert_eq!(
            parse_request(r#"{"version":1,"command":"resize","target":0,"lun":2}"#),
            Ok(Request::Resize {
                target: 0,
                lun: 2,
                size: None,
                force: false
            })
        );
        let add = Envelope {
            version: VERSION,
            request: Request::Add {
                kind: Some("disk".into()),
                spec: Some("/x.img,cache=none".into()),
                lun_config: None,
                target: None,
                lun: Some(3),
            },
        };
        let line = serde_json::to_string(&add).expect("json");
        assert_eq!(parse_request(&line), Ok(add.request));
        assert_eq!(
            parse_request(
                r#"{"version":1,"command":"set","target":0,"lun":1,"limits":{"iops":200,"bw":0}}"#
            ),
            Ok(Request::Set {
                target: 0,
                lun: 1,
                limits: [("bw".to_string(), 0), ("iops".to_string(), 200)].into()
            })
        );
        assert_eq!(
            parse_request(r#"{"version":1,"command":"stats","target":0,"lun":1}"#),
            Ok(Request::Stats {
                target: Some(0),
                lun: Some(1)
            })
        );
        assert_eq!(
            parse_request(r#"{"version":1,"command":"metrics"}"#),
            Ok(Request::Metrics)
        );
        for (bad, why) in [
            ("{", "not JSON"),
            (r#"{"command":"luns"}"#, "no \"version\""),
            (r#"{"version":2,"command":"luns"}"#, "version 2"),
            (
                r#"{"version":1,"command":"format-everything"}"#,
                "bad request",
            ),
            (
                r#"{"version":1,"command":"remove","target":0}"#,
                "bad request",
            ),
            (
                r#"{"version":1,"command":"remove","target":300,"lun":0}"#,
                "bad request",
            ),
            (
                r#"{"version":1,"command":"set","target":0,"lun":0,"limits":{"iops":-1}}"#,
                "bad request",
            ),
        ] {
            let e = parse_request(bad).expect_err(bad);
            assert!(e.starts_with(why), "{bad}: {e}");
        }
    }
}
