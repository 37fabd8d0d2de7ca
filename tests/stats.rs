//! The statistics add up to what the frontend sent: commands by kind and by queue, bytes,
//! errors by sense key, the latency histogram's count, through `vscsid ctl stats`, `vscsid
//! ctl metrics` and the metrics endpoint (`--metrics`), whose text must parse as the
//! Prometheus text format; a removed LUN's statistics go with it.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn stats_json(control: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json", "stats"];
    all.extend_from_slice(args);
    let (ok, out, err) = ctl(control, &all);
    assert!(ok, "stats: {out} {err}");
    serde_json::from_str(&out).expect("stats JSON")
}

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// A strict parser of the Prometheus text format 0.0.4: every line is a HELP, a TYPE
/// (once per family, before its samples) or a sample of a declared family with well-formed
/// labels and a number. Panics with the offending line.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "the text must end with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, what) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_default();
            match kind {
                Some("HELP") => assert!(is_name(name, true), "{line}"),
                Some("TYPE") => {
                    let t = what.unwrap_or_default();
                    assert!(is_name(name, true), "{line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE twice: {line}"
                    );
                }
                _ => {}
            }
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value: {line}"),
        };
        assert!(is_name(name, true), "bad metric name: {line}");
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = l.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = l.find("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                let key = &l[..eq];
                assert!(is_name(key, false), "bad label name: {line}");
                let mut value = String::new();
                let mut chars = l[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => panic!("bad escape: {line}"),
                        },
                        Some((i, '"')) => break eq + 2 + i + 1,
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value: {line}"),
                    }
                };
                assert!(
                    labels.insert(key.to_string(), value).is_none(),
                    "label twice: {line}"
                );
                l = &l[end..];
                l = l.strip_prefix(',').unwrap_or(l);
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .collect();
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0]
}

fn scrape(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP head");
    (head.to_string(), body.to_string())
}

#[test]
fn stats_counters_add_up_to_what_the_frontend_sent() {
    let d = Daemon::start_logged(
        &[Disk {
            name: "a.img",
            size: 16 * MIB,
            opts: "cache=none",
        }],
        &[
            "--num-queues",
            "2",
            "--null",
            "64M",
            "--vm-name",
            "statvm",
            "--control",
            "{dir}/control.sock",
            "--metrics",
            "127.0.0.1:0",
        ],
        // The port chosen is in the log.
        &[("VSCSID_LOG", "info")],
    );
    let control = d.control_socket();
    let mut port = 0u16;
    wait_until("the metrics address", Duration::from_secs(10), || {
        let log = d.log();
        let Some(at) = log.find("metrics=127.0.0.1:") else {
            return false;
        };
        let digits: String = log[at + 18..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        port = digits.parse().unwrap_or(0);
        port != 0
    });
    let mut fe = d.connect(2);

    // Queue 0 (virtqueue 2): 20 reads of 8 blocks and one read past the end of LUN 0.
    for i in 0..20 {
        let r = fe
            .command_on(2, &cmd(0, &read16(i * 8, 8), &[], 4096))
            .unwrap();
        good(&r);
    }
    let past_end = 16 * MIB / 512;
    let r = fe
        .command_on(2, &cmd(0, &read16(past_end, 1), &[], 512))
        .unwrap();
    assert_eq!(sense(&r), (5, 0x21, 0));
    // Queue 1 (virtqueue 3): 12 writes of 4 blocks, an INQUIRY, and commands the target
    // answers itself (REPORT LUNS, a LUN it lacks): counted on the queue, not on a LUN.
    for i in 0..12 {
        good(
            &fe.command_on(3, &cmd(0, &write16(i * 4, 4), &[0x5a; 2048], 0))
                .unwrap(),
        );
    }
    let inq = fe.command_on(3, &cmd(0, &inquiry(96), &[], 96)).unwrap();
    good(&inq);
    good(
        &fe.command_on(3, &cmd(0, &report_luns(256), &[], 256))
            .unwrap(),
    );
    let r = fe
        .command_on(3, &cmd(9, &test_unit_ready(), &[], 0))
        .unwrap();
    assert_eq!(sense(&r), (5, 0x25, 0));
    // LUN 1 (null): 3 reads.
    for _ in 0..3 {
        good(&fe.command_on(2, &cmd(1, &read16(0, 2), &[], 1024)).unwrap());
    }

    let v = stats_json(&control, &[]);
    let luns = v["luns"].as_array().expect("luns");
    assert_eq!(luns.len(), 2, "{v}");
    let l0 = &luns[0];
    assert_eq!(
        (l0["target"].as_u64(), l0["lun"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(l0["commands"]["read"], 21, "{l0}");
    assert_eq!(l0["commands"]["write"], 12, "{l0}");
    assert_eq!(l0["commands"]["other"], 1, "{l0}");
    assert_eq!(l0["bytes"]["read"], 20 * 4096, "{l0}");
    assert_eq!(l0["bytes"]["write"], 12 * 2048, "{l0}");
    assert_eq!(l0["bytes"]["other"], inq.data_in.len() as u64, "{l0}");
    assert_eq!(l0["errors"]["total"], 1, "{l0}");
    assert_eq!(l0["errors"]["sense_keys"]["illegal_request"], 1, "{l0}");
    assert_eq!(l0["latency_us"]["count"], 34, "{l0}");
    let buckets: u64 = l0["latency_us"]["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b[1].as_u64().expect("count"))
        .sum();
    assert_eq!(buckets, 34);
    let (p50, p999) = (&l0["latency_us"]["p50"], &l0["latency_us"]["p999"]);
    assert!(p50.as_u64().is_some_and(|p| p.is_power_of_two()), "{l0}");
    assert!(p999.as_u64() >= p50.as_u64(), "{l0}");
    assert_eq!(l0["in_flight"], 0);
    let l1 = &luns[1];
    assert_eq!(l1["commands"]["read"], 3, "{l1}");
    assert_eq!(l1["bytes"]["read"], 3 * 1024, "{l1}");
    assert_eq!(l1["errors"]["total"], 0, "{l1}");
    let queues: Vec<(u64, u64)> = v["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| {
            (
                q["queue"].as_u64().unwrap(),
                q["commands"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(queues, vec![(0, 21 + 3), (1, 12 + 3)]);

    // The table, one LUN, a LUN that is not there.
    let (ok, out, _) = ctl(&control, &["stats"]);
    assert!(
        ok && out.contains("ADDRESS") && out.contains("p99.9"),
        "{out}"
    );
    let one = stats_json(&control, &["0:1"]);
    assert_eq!(one["luns"].as_array().map(Vec::len), Some(1), "{one}");
    let (ok, _, err) = ctl(&control, &["stats", "0:7"]);
    assert!(!ok && err.contains("no LUN at target 0 LUN 7"), "{err}");

    // The metrics endpoint: Prometheus text with the same numbers.
    let (head, body) = scrape(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = parse_prometheus(&body);
    let lun0 = |kind| {
        [
            ("vm", "statvm"),
            ("target", "0"),
            ("lun", "0"),
            ("kind", kind),
        ]
    };
    assert_eq!(
        value(&samples, "vscsid_lun_commands_total", &lun0("read")),
        21.0
    );
    assert_eq!(
        value(&samples, "vscsid_lun_commands_total", &lun0("write")),
        12.0
    );
    assert_eq!(
        value(&samples, "vscsid_lun_bytes_total", &lun0("write")),
        (12 * 2048) as f64
    );
    let at0 = [("vm", "statvm"), ("target", "0"), ("lun", "0")];
    let mut key = at0.to_vec();
    key.push(("sense_key", "illegal_request"));
    assert_eq!(
        value(&samples, "vscsid_lun_check_conditions_total", &key),
        1.0
    );
    assert_eq!(
        value(&samples, "vscsid_lun_latency_seconds_count", &at0),
        34.0
    );
    let mut inf = at0.to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(
        value(&samples, "vscsid_lun_latency_seconds_bucket", &inf),
        34.0
    );
    assert_eq!(
        value(&samples, "vscsid_queue_commands_total", &[("queue", "1")]),
        15.0
    );
    let (head, _) = scrape(port, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // `vscsid ctl metrics` prints the same text (the counters have not moved since).
    let (ok, text, _) = ctl(&control, &["metrics"]);
    assert!(ok);
    assert_eq!(parse_prometheus(&text), samples);

    // A removed LUN's statistics go with it.
    let (ok, out, err) = ctl(&control, &["remove", "0:1"]);
    assert!(ok, "{out} {err}");
    let v = stats_json(&control, &[]);
    assert_eq!(v["luns"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, body) = scrape(port, "/metrics");
    assert!(!body.contains("lun=\"1\""), "{body}");
}

#[test]
fn the_strict_parser_refuses_what_is_not_prometheus_text() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{x=\"a\\\"b\"} 1\n";
    assert_eq!(parse_prometheus(ok).len(), 1);
    for bad in [
        "a_total 1\n",
        "# TYPE a counter\na{x=\"1} 1\n",
        "# TYPE a counter\na{x=1} 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\n\n",
        "# TYPE a counter\na 1",
    ] {
        let bad = bad.to_string();
        assert!(
            std::panic::catch_unwind(move || parse_prometheus(&bad)).is_err(),
            "accepted a bad text"
        );
    }
}
