//! Fuzz target: the command line's LUN shorthands. The input is lines of `d <spec>`,
//! `i <spec>` or `n <spec>` for `--disk`, `--iscsi` and `--null`; each is parsed and added
//! in order as the command line does, then the configuration is validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vscsid::config::{parse_disk_spec, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut cfg = Config {
        socket: Some("/run/vscsid/fuzz.sock".into()),
        ..Config::default()
    };
    for line in text.lines().take(64) {
        let (Some(kind), Some(spec)) = (line.get(..2), line.get(2..)) else {
            continue;
        };
        let added = match kind {
            "d " => parse_disk_spec(spec, cfg.next_lun_of_target0())
                .and_then(|l| cfg.add_lun(l, &format!("--disk '{spec}'"))),
            "i " => cfg.add_iscsi(spec),
            "n " => cfg.add_null(spec),
            _ => continue,
        };
        if added.is_err() {
            break;
        }
    }
    let _ = cfg.validate();
});
