//! The statistics in the Prometheus text format (version 0.0.4), for `--metrics` and
//! `vscsid ctl metrics`. The exposition is written by the `prometheus-client` crate: a
//! collector reads the LUNs' and queues' counters at each scrape, so the request path
//! keeps its own plain atomics and never touches the crate.
//!
//! Every series carries `vm` (the VM's name); a LUN's also `target` and `lun`. Names:
//! `vscsid_lun_commands_total` and `vscsid_lun_bytes_total` (label `kind`: read, write,
//! other), `vscsid_lun_check_conditions_total` (label `sense_key`, keys seen only),
//! `vscsid_lun_host_errors_total` (label `error`, every kind), `vscsid_lun_other_status_total`,
//! `vscsid_lun_latency_seconds` (histogram, bucket bounds 2^i µs), `vscsid_lun_in_flight`
//! (gauge), `vscsid_queue_commands_total` (label `queue`: the request queue's number,
//! queues that answered a command only), `vscsid_iscsi_sessions` (gauge: the daemon's
//! iSCSI sessions, one per target and portal).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::lun::live::LunCounters;
use crate::lun::stats::{bucket_bound_us, IoKind, HOST_ERROR_NAMES, SENSE_KEY_NAMES};
use crate::lun::LiveLuns;

/// The `Content-Type` of the text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The counters read for one scrape.
#[derive(Debug)]
struct Scrape {
    vm: String,
    luns: Vec<LunCounters>,
    /// `(request queue number, commands answered)`.
    queues: Vec<(u16, u64)>,
    /// iSCSI sessions open now.
    iscsi_sessions: usize,
    /// The worker threads' `(wake-ups from epoll, busy-poll passes)`.
    workers: (u64, u64),
}

/// The labels of one series: `vm`, then the LUN's address, then the series' own.
type Labels = Vec<(&'static str, String)>;

impl Scrape {
    fn lun_labels(&self, l: &LunCounters, extra: Option<(&'static str, &str)>) -> Labels {
        let mut v = vec![
            ("vm", self.vm.clone()),
            ("target", l.target.to_string()),
            ("lun", l.lun.to_string()),
        ];
        v.extend(extra.map(|(k, val)| (k, val.to_string())));
        v
    }

    /// One counter family over the LUNs: `value` gives each LUN's series (extra label and
    /// value); a None label means no extra label.
    fn lun_counters(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        series: impl Fn(&LunCounters) -> Vec<(Option<(&'static str, &'static str)>, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for l in &self.luns {
            for (extra, value) in series(l) {
                let labels = self.lun_labels(l, extra);
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.lun_counters(
            &mut encoder,
            "vscsid_lun_commands",
            "Commands the LUN answered, by kind (read, write, other)",
            |l| {
                IoKind::ALL
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (Some(("kind", k.name())), l.stats.commands[i]))
                    .collect()
            },
        )?;
        self.lun_counters(
            &mut encoder,
            "vscsid_lun_bytes",
            "Bytes the LUN's commands moved (data-in placed, data-out of commands that succeeded), by kind",
            |l| {
                IoKind::ALL
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (Some(("kind", k.name())), l.stats.bytes[i]))
                    .collect()
            },
        )?;
        self.lun_counters(
            &mut encoder,
            "vscsid_lun_check_conditions",
            "Commands answered CHECK CONDITION, by sense key (keys seen only)",
            |l| {
                SENSE_KEY_NAMES
                    .iter()
                    .zip(l.stats.sense_keys)
                    .filter(|&(_, n)| n > 0)
                    .map(|(k, n)| (Some(("sense_key", *k)), n))
                    .collect()
            },
        )?;
        self.lun_counters(
            &mut encoder,
            "vscsid_lun_host_errors",
            "Commands that ended without a SCSI status (virtio response other than OK), by error",
            |l| {
                HOST_ERROR_NAMES
                    .iter()
                    .zip(l.stats.host_errors)
                    .map(|(k, n)| (Some(("error", *k)), n))
                    .collect()
            },
        )?;
        self.lun_counters(
            &mut encoder,
            "vscsid_lun_other_status",
            "Commands a remote device answered with another status than GOOD or CHECK CONDITION",
            |l| vec![(None, l.stats.other_status)],
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "vscsid_lun_latency_seconds",
                "Time from a command reaching its LUN to its answer",
                None,
                MetricType::Histogram,
            )?;
            for l in &self.luns {
                let s = &l.stats;
                let buckets: Vec<(f64, u64)> = s
                    .latency
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let le = bucket_bound_us(i).map_or(f64::INFINITY, |us| us as f64 / 1e6);
                        (le, n)
                    })
                    .collect();
                let labels = self.lun_labels(l, None);
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        s.latency_sum_ns as f64 / 1e9,
                        s.latency_count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "vscsid_lun_in_flight",
                "Commands of the LUN in flight now",
                None,
                MetricType::Gauge,
            )?;
            for l in &self.luns {
                let labels = self.lun_labels(l, None);
                ConstGauge::new(i64::from(l.in_flight)).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "vscsid_iscsi_sessions",
                "iSCSI sessions open (one per target and portal, shared by the target's LUNs)",
                None,
                MetricType::Gauge,
            )?;
            let labels: Labels = vec![("vm", self.vm.clone())];
            ConstGauge::new(self.iscsi_sessions as i64).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vscsid_queue_commands",
            "Commands answered on each request queue (queues that answered one)",
            None,
            MetricType::Counter,
        )?;
        for &(queue, n) in &self.queues {
            let labels: Labels = vec![("vm", self.vm.clone()), ("queue", queue.to_string())];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let vm: Labels = vec![("vm", self.vm.clone())];
        for (name, help, n) in [
            (
                "vscsid_worker_wakeups",
                "Wake-ups of the worker threads from epoll to serve events",
                self.workers.0,
            ),
            (
                "vscsid_worker_poll_rounds",
                "Passes of the worker threads' busy polling over their queues and completions",
                self.workers.1,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(family.encode_family(&vm)?)?;
        }
        Ok(())
    }
}

/// The request queues' counts, numbered as request queues (the first is 0).
pub fn request_queues(luns: &LiveLuns) -> Vec<(u16, u64)> {
    luns.queue_stats()
        .snapshot()
        .into_iter()
        .filter_map(|(q, n)| Some((q.checked_sub(2)?, n)))
        .collect()
}

/// The statistics now, in the Prometheus text format.
pub fn render(luns: &LiveLuns, vm: &str) -> String {
    let scrape = Scrape {
        vm: vm.to_string(),
        luns: luns.stats(None, None),
        queues: request_queues(luns),
        iscsi_sessions: crate::iscsi::registry::count(),
        workers: luns.queue_stats().worker_activity(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would leave a partial text.
    if prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::lun::{build_lun_table, open_options, Answer};
    use crate::scsi::Sense;
    use std::time::Duration;

    #[test]
    fn the_text_has_every_family_with_the_luns_labels() {
        let mut cfg = Config::default();
        cfg.add_null("64M").expect("null LUN");
        let table = build_lun_table(&cfg).expect("table");
        let luns = LiveLuns::new(table, open_options(&cfg), false);
        let snap = luns.snapshot();
        let (_, _, lun) = snap.luns().next().expect("a LUN");
        let st = lun.stats();
        st.record(
            0,
            IoKind::Read,
            &Answer::Good { data_in: 4096 },
            0,
            Duration::from_micros(30),
        );
        st.record(
            5,
            IoKind::Write,
            &Answer::Check(Sense::new(3, 0x0c, 0)),
            512,
            Duration::from_micros(100),
        );
        luns.queue_stats().completed(2);
        luns.queue_stats().completed(3);
        let text = render(&luns, "vm1");
        for line in [
            "# TYPE vscsid_lun_commands_total counter",
            r#"vscsid_lun_commands_total{vm="vm1",target="0",lun="0",kind="read"} 1"#,
            r#"vscsid_lun_bytes_total{vm="vm1",target="0",lun="0",kind="read"} 4096"#,
            r#"vscsid_lun_bytes_total{vm="vm1",target="0",lun="0",kind="write"} 0"#,
            r#"vscsid_lun_check_conditions_total{vm="vm1",target="0",lun="0",sense_key="medium_error"} 1"#,
            r#"vscsid_lun_host_errors_total{vm="vm1",target="0",lun="0",error="overrun"} 0"#,
            "# TYPE vscsid_lun_latency_seconds histogram",
            r#"vscsid_lun_latency_seconds_bucket{vm="vm1",target="0",lun="0",le="3.2e-05"} 1"#,
            r#"vscsid_lun_latency_seconds_bucket{vm="vm1",target="0",lun="0",le="+Inf"} 2"#,
            r#"vscsid_lun_latency_seconds_count{vm="vm1",target="0",lun="0"} 2"#,
            r#"vscsid_lun_in_flight{vm="vm1",target="0",lun="0"} 0"#,
            r#"vscsid_queue_commands_total{vm="vm1",queue="0"} 1"#,
            r#"vscsid_queue_commands_total{vm="vm1",queue="1"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(!text.contains("# EOF"));
    }
}
