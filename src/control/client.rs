//! `vscsid ctl`: the control socket's client. Sends one request, prints the reply as a
//! table (or as JSON with `--json`), exits 0 when the daemon did it and 1 when it refused
//! (its one-line reason on stderr), 2 on a usage or connection error.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use super::protocol::{
    Envelope, LunEntry, LunStatsEntry, PathAction, QueueEntry, Request, VERSION,
};
use crate::config::limits::{parse_value, IoLimits};
use crate::config::parse_size;

/// How long the client waits for the daemon's reply (a removal waits up to 30 s for the
/// LUN's commands in flight, an iSCSI login up to its timeout per portal).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Manage a running vscsid through its control socket.
#[derive(Parser, Debug)]
#[command(name = "vscsid ctl")]
pub struct CtlCli {
    /// The daemon's control socket (its --control).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Print the daemon's reply as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Every LUN: address, size, block size, commands in flight, what it is; and the
    /// iSCSI sessions, with the target LUNs that share each.
    Luns,
    /// Add a LUN: <disk|iscsi|sg|null> <spec as --disk, --iscsi, --sg or --null take it>.
    Add {
        kind: String,
        spec: String,
        /// Target [default: 0].
        #[arg(long)]
        target: Option<u8>,
        /// LUN [default: the target's first free LUN].
        #[arg(long)]
        lun: Option<u16>,
    },
    /// Remove a LUN (<target>:<lun>): the guest is told, its commands in flight finish.
    Remove {
        address: String,
        /// How long to wait for the LUN's commands in flight before replying [default:
        /// 30000]; the LUN closes when they end either way.
        #[arg(long, value_name = "MS")]
        wait_ms: Option<u32>,
    },
    /// Read a LUN's size again, or grow its file to <size> (K/M/G/T suffixes).
    Resize {
        address: String,
        size: Option<String>,
        /// Allow a smaller size (the guest's data past it is gone).
        #[arg(long)]
        force: bool,
    },
    /// Set a LUN's I/O limits: <target>:<lun> key=value... (iops, iops_read, iops_write,
    /// bw, bw_read, bw_write with K/M/G suffixes, their _max burst rates, burst_length);
    /// 0 removes a limit, the others stay.
    Set {
        address: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        limits: Vec<String>,
    },
    /// The paths of an iSCSI LUN (<target>:<lun>): state and counters.
    Paths { address: String },
    /// A disk LUN's persistent reservations (<target>:<lun>): registrations (nexus and
    /// key) and the reservation, as every daemon sharing the disk sees them.
    Reservations { address: String },
    /// Fail or restore one path (<target>:<lun> <portal host:port> fail|restore), for
    /// maintenance: a failed path takes no new commands until restored.
    Path {
        address: String,
        portal: String,
        action: String,
    },
    /// I/O statistics of every LUN (or of <target>:<lun>): commands, bytes, errors,
    /// latency, in flight; and the commands answered per request queue.
    Stats { address: Option<String> },
    /// The statistics in the Prometheus text format (what --metrics serves).
    Metrics,
}

fn address(text: &str) -> Result<(u8, u16), String> {
    let (t, l) = text
        .split_once(':')
        .ok_or_else(|| format!("'{text}' is not <target>:<lun>"))?;
    let t = t
        .parse()
        .map_err(|_| format!("'{t}' is not a target (0-255)"))?;
    let l = l
        .parse()
        .map_err(|_| format!("'{l}' is not a LUN (0-16383)"))?;
    Ok((t, l))
}

fn request(cmd: CtlCommand) -> Result<Request, String> {
    Ok(match cmd {
        CtlCommand::Luns => Request::Luns,
        CtlCommand::Add {
            kind,
            spec,
            target,
            lun,
        } => Request::Add {
            kind: Some(kind),
            spec: Some(spec),
            lun_config: None,
            target,
            lun,
        },
        CtlCommand::Remove {
            address: a,
            wait_ms,
        } => {
            let (target, lun) = address(&a)?;
            Request::Remove {
                target,
                lun,
                wait_ms,
            }
        }
        CtlCommand::Stats { address: None } => Request::Stats {
            target: None,
            lun: None,
        },
        CtlCommand::Stats { address: Some(a) } => {
            let (target, lun) = address(&a)?;
            Request::Stats {
                target: Some(target),
                lun: Some(lun),
            }
        }
        CtlCommand::Metrics => Request::Metrics,
        CtlCommand::Resize {
            address: a,
            size,
            force,
        } => {
            let (target, lun) = address(&a)?;
            let size = size.as_deref().map(parse_size).transpose()?;
            Request::Resize {
                target,
                lun,
                size,
                force,
            }
        }
        CtlCommand::Set { address: a, limits } => {
            let (target, lun) = address(&a)?;
            let mut map = std::collections::BTreeMap::new();
            for kv in &limits {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("'{kv}' is not key=value"))?;
                map.insert(k.to_string(), parse_value(k, v)?);
            }
            Request::Set {
                target,
                lun,
                limits: map,
            }
        }
        CtlCommand::Paths { address: a } => {
            let (target, lun) = address(&a)?;
            Request::Paths { target, lun }
        }
        CtlCommand::Reservations { address: a } => {
            let (target, lun) = address(&a)?;
            Request::Reservations { target, lun }
        }
        CtlCommand::Path {
            address: a,
            portal,
            action,
        } => {
            let (target, lun) = address(&a)?;
            let action = match action.as_str() {
                "fail" => PathAction::Fail,
                "restore" => PathAction::Restore,
                other => return Err(format!("'{other}' is not fail or restore")),
            };
            Request::Path {
                target,
                lun,
                portal,
                action,
            }
        }
    })
}

/// `key=value ...` of a reply's `limits` object, or "unlimited".
fn limits_text(v: Option<&Value>) -> String {
    let mut l = IoLimits::default();
    for (k, n) in v.and_then(Value::as_object).into_iter().flatten() {
        if let Some(n) = n.as_u64() {
            let _ = l.set(k, n);
        }
    }
    if l.is_empty() {
        "unlimited".into()
    } else {
        l.describe()
    }
}

/// Sends one request and returns the reply.
pub fn call(control: &std::path::Path, req: Request) -> Result<Value, String> {
    let shown = control.display();
    let mut stream =
        UnixStream::connect(control).map_err(|e| format!("cannot connect to {shown}: {e}"))?;
    let _ = stream.set_read_timeout(Some(REPLY_TIMEOUT));
    let mut line = serde_json::to_string(&Envelope {
        version: VERSION,
        request: req,
    })
    .map_err(|e| e.to_string())?;
    line.push('\n');
    // A daemon that refuses the client answers and closes without reading: the send may
    // fail while the refusal waits to be read.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    if let (Err(e), true) = (sent, answer.is_empty()) {
        return Err(format!("cannot send to {shown}: {e}"));
    }
    read.map_err(|e| format!("no reply from {shown}: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("bad reply from {shown}: {e}"))
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_luns(v: &Value) {
    let luns: Vec<LunEntry> = v
        .get("luns")
        .cloned()
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default();
    println!(
        "{:<8} {:>10} {:>6} {:>9}  DESCRIPTION",
        "ADDRESS", "SIZE", "BLOCK", "IN-FLIGHT"
    );
    for l in luns {
        println!(
            "{:<8} {:>10} {:>6} {:>9}  {}",
            format!("{}:{}", l.target, l.lun),
            l.size_bytes.map_or("-".into(), human_size),
            l.block_size.map_or("-".into(), |b| b.to_string()),
            l.in_flight,
            l.description
        );
        for p in l.paths {
            println!("{:<8} {:>10} {:>6} {:>9}    {p}", "", "", "", "");
        }
        if !l.limits.is_empty() {
            let v = serde_json::to_value(&l.limits).ok();
            let text = limits_text(v.as_ref());
            println!("{:<8} {:>10} {:>6} {:>9}    limits {text}", "", "", "", "");
        }
    }
    let sessions: Vec<&str> = v
        .get("iscsi_sessions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !sessions.is_empty() {
        println!("iSCSI sessions: {}", sessions.len());
        for s in sessions {
            println!("  {s}");
        }
    }
}

/// A latency in microseconds, shortened.
fn human_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}us")
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{:.1}s", us / 1_000_000.0)
    }
}

/// A quantile: the upper bound of its bucket.
fn bound(q: Option<u64>, count: u64) -> String {
    match q {
        Some(us) => format!("<={}", human_us(us as f64)),
        None if count > 0 => ">67.1s".into(),
        None => "-".into(),
    }
}

fn print_stats(v: &Value) {
    let luns: Vec<LunStatsEntry> = v
        .get("luns")
        .cloned()
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default();
    let queues: Vec<QueueEntry> = v
        .get("queues")
        .cloned()
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default();
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>7} {:>9}",
        "ADDRESS", "COMMANDS", "READS", "WRITES", "OTHER", "READ", "WRITTEN", "ERRORS", "IN-FLIGHT"
    );
    for l in &luns {
        let (c, b) = (&l.commands, &l.bytes);
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>7} {:>9}",
            format!("{}:{}", l.target, l.lun),
            c.read + c.write + c.other,
            c.read,
            c.write,
            c.other,
            human_size(b.read),
            human_size(b.write),
            l.errors.total,
            l.in_flight
        );
        let lat = &l.latency_us;
        println!(
            "{:<8} latency: mean {} p50 {} p99 {} p99.9 {} (quantiles: bucket upper bounds)",
            "",
            lat.mean.map_or("-".into(), human_us),
            bound(lat.p50, lat.count),
            bound(lat.p99, lat.count),
            bound(lat.p999, lat.count),
        );
        if l.errors.total > 0 {
            let mut parts: Vec<String> = l
                .errors
                .sense_keys
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            parts.extend(l.errors.host.iter().map(|(k, n)| format!("host {k} {n}")));
            if l.errors.other_status > 0 {
                parts.push(format!("other status {}", l.errors.other_status));
            }
            println!("{:<8} errors: {}", "", parts.join(", "));
        }
    }
    if !queues.is_empty() {
        println!("{:<8} {:>10}", "QUEUE", "COMMANDS");
        for q in &queues {
            println!("{:<8} {:>10}", q.queue, q.commands);
        }
    }
}

/// Runs `vscsid ctl` with `args` (after `ctl`).
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match CtlCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let is_luns = matches!(cli.command, CtlCommand::Luns);
    let is_set = matches!(cli.command, CtlCommand::Set { .. });
    let is_paths = matches!(cli.command, CtlCommand::Paths { .. });
    let is_reservations = matches!(cli.command, CtlCommand::Reservations { .. });
    let is_stats = matches!(cli.command, CtlCommand::Stats { .. });
    let is_metrics = matches!(cli.command, CtlCommand::Metrics);
    let reply = request(cli.command).and_then(|r| call(&cli.control, r));
    let v = match reply {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vscsid ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let ok = v.get("ok").and_then(Value::as_bool) == Some(true);
    if cli.json {
        println!("{v}");
    } else if !ok {
        let why = v.get("error").and_then(Value::as_str).unwrap_or("refused");
        eprintln!("vscsid ctl: {why}");
    } else if is_luns {
        print_luns(&v);
    } else if is_set {
        let field = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or_default();
        println!(
            "ok {}:{} {}",
            field("target"),
            field("lun"),
            limits_text(v.get("limits"))
        );
    } else if is_paths {
        for p in v
            .get("paths")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            println!("{}", p.as_str().unwrap_or_default());
        }
    } else if is_reservations {
        print_reservations(&v);
    } else if is_stats {
        print_stats(&v);
    } else if is_metrics {
        print!(
            "{}",
            v.get("text").and_then(Value::as_str).unwrap_or_default()
        );
    } else {
        let mut fields: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "ok")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        fields.sort();
        println!("ok {}", fields.join(" "));
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `vscsid ctl reservations`: one line per registration, then the reservation.
fn print_reservations(v: &Value) {
    let s = |x: Option<&Value>| x.and_then(Value::as_str).unwrap_or("-").to_string();
    let state = v.get("state").cloned().unwrap_or_default();
    println!(
        "this daemon: {}  state: {}  generation {}  aptpl {}",
        s(v.get("nexus")),
        s(v.get("state_file")),
        state.get("generation").and_then(Value::as_u64).unwrap_or(0),
        state.get("aptpl").and_then(Value::as_bool).unwrap_or(false)
    );
    let regs = state.get("registrations").and_then(Value::as_array);
    for r in regs.into_iter().flatten() {
        println!(
            "registered {} key 0x{:x}",
            s(r.get("nexus")),
            r.get("key").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    match state.get("reservation").filter(|r| !r.is_null()) {
        Some(r) => println!(
            "reserved {} by {}",
            s(r.get("kind")),
            r.get("holder")
                .and_then(Value::as_str)
                .unwrap_or("every registrant")
        ),
        None => println!("not reserved"),
    }
    if let Some(h) = state.get("spc2_holder").and_then(Value::as_str) {
        println!("SPC-2 RESERVE held by {h}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_sizes() {
        assert_eq!(address("0:3"), Ok((0, 3)));
        assert!(address("3").is_err());
        assert!(address("256:0").is_err());
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(64 << 20), "64.0 MiB");
        let r = request(CtlCommand::Resize {
            address: "1:2".into(),
            size: Some("2G".into()),
            force: false,
        });
        assert_eq!(
            r,
            Ok(Request::Resize {
                target: 1,
                lun: 2,
                size: Some(2 << 30),
                force: false
            })
        );
    }

    #[test]
    fn set_takes_limits_with_units() {
        let set = |args: &[&str]| {
            request(CtlCommand::Set {
                address: "0:1".into(),
                limits: args.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert_eq!(
            set(&["iops=200", "bw=10M", "iops_write=0"]),
            Ok(Request::Set {
                target: 0,
                lun: 1,
                limits: [
                    ("bw".to_string(), 10 << 20),
                    ("iops".to_string(), 200),
                    ("iops_write".to_string(), 0)
                ]
                .into()
            })
        );
        assert!(set(&["iops"]).unwrap_err().contains("key=value"));
        assert!(set(&["speed=3"]).unwrap_err().starts_with("speed:"));
        assert!(set(&["bw=fast"]).unwrap_err().starts_with("bw:"));
        let v = serde_json::json!({"iops": 200, "bw_read": 1048576});
        assert_eq!(limits_text(Some(&v)), "iops=200 bw_read=1M");
        assert_eq!(limits_text(None), "unlimited");
    }
}
