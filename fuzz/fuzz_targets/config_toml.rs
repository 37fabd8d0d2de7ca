//! Fuzz target: the TOML configuration file, parsed and validated as `--config` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vscsid::config::parse_config_text;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = parse_config_text(text) {
        let _ = cfg.validate();
    }
});
