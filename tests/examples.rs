//! The shipped examples hold: the systemd units (`vscsid@.service` scores at most 2.0 in
//! `systemd-analyze security`, keeps reload-as-upgrade and restart-on-failure, notifies,
//! has a watchdog, and its system call filter lets io_uring through; `vscsid@.socket`
//! listens where the service expects), the libvirt domain validates against libvirt's
//! schema (`virt-xml-validate`, Debian libvirt-clients) and carries what vhost-user needs,
//! and the TOML example parses. `systemd-analyze verify` accepts both units (no unknown or
//! misspelt setting). A missing tool fails the test: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("qemu-examples")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(example(name)).expect("example file")
}

/// The unit's `Key=value` lines (comments and sections left out).
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Largest exposure `systemd-analyze security` may report (its "OK" band).
const MAX_EXPOSURE: f64 = 2.0;

#[test]
fn the_service_unit_is_hardened_and_keeps_upgrades_and_restarts() {
    let unit = read("vscsid@.service");
    let s = settings(&unit);
    assert_eq!(values(&s, "Type"), ["notify"]);
    assert_eq!(values(&s, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(values(&s, "Restart"), ["on-failure"]);
    assert_eq!(values(&s, "WatchdogSec").len(), 1);
    assert_eq!(values(&s, "User"), ["vscsid"]);
    assert_eq!(values(&s, "CapabilityBoundingSet"), [""]);
    assert!(values(&s, "ExecStart")[0].contains("--config /etc/vscsid/%i.toml"));
    // The score of an instance, computed from the file without a running systemd.
    let dir = tempfile::tempdir().expect("tmp");
    let instance = dir.path().join("vscsid@vm1.service");
    std::fs::write(&instance, &unit).expect("unit copy");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&instance)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    let score: f64 = line
        .rsplit_once(": ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in '{line}'"));
    assert!(score <= MAX_EXPOSURE, "exposure {score}: {line}");
}

#[test]
fn systemd_accepts_both_units() {
    // An instance of each, with the service's program where this build put it.
    let dir = tempfile::tempdir().expect("tmp");
    let service =
        read("vscsid@.service").replace("/usr/local/bin/vscsid", env!("CARGO_BIN_EXE_vscsid"));
    std::fs::write(dir.path().join("vscsid@vm1.service"), service).expect("service");
    std::fs::write(dir.path().join("vscsid@vm1.socket"), read("vscsid@.socket")).expect("socket");
    let out = Command::new("systemd-analyze")
        .args([
            "verify",
            "--man=no",
            "./vscsid@vm1.service",
            "./vscsid@vm1.socket",
        ])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The system calls a `SystemCallFilter=` group holds, its nested groups expanded.
fn syscall_group(group: &str) -> Vec<String> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", group])
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut calls = Vec::new();
    for word in text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .skip(1)
        .flat_map(str::split_whitespace)
    {
        if word.starts_with('@') {
            calls.extend(syscall_group(word));
        } else {
            calls.push(word.to_string());
        }
    }
    calls
}

#[test]
fn the_system_call_filter_lets_io_uring_through() {
    let s = settings(&read("vscsid@.service"));
    let filters = values(&s, "SystemCallFilter");
    let mut allowed: Vec<String> = Vec::new();
    for f in &filters {
        match f.strip_prefix('~') {
            None => {
                for g in f.split_whitespace() {
                    allowed.extend(syscall_group(g));
                }
            }
            Some(denied) => {
                let denied: Vec<String> =
                    denied.split_whitespace().flat_map(syscall_group).collect();
                allowed.retain(|c| !denied.contains(c));
            }
        }
    }
    for call in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "execve",
        "close_range",
        "fallocate",
        "fdatasync",
        "epoll_wait",
        "getsockopt",
    ] {
        assert!(allowed.iter().any(|c| c == call), "{call} is filtered out");
    }
}

#[test]
fn the_socket_unit_listens_where_the_service_expects() {
    let s = settings(&read("vscsid@.socket"));
    assert_eq!(values(&s, "ListenStream"), ["/run/vscsid/%i.sock"]);
    assert_eq!(values(&s, "SocketUser"), ["vscsid"]);
    assert_eq!(values(&s, "SocketMode"), ["0660"]);
    assert_eq!(values(&s, "SocketGroup").len(), 1);
    assert!(values(&s, "Accept").iter().all(|a| *a == "no"));
}

#[test]
fn the_libvirt_domain_validates_and_shares_its_memory() {
    let path = example("libvirt-vm1.xml");
    let out = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (Debian packages libvirt-clients and libxml2-utils)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = read("libvirt-vm1.xml");
    for needed in [
        "<source type='memfd'/>",
        "<access mode='shared'/>",
        "memAccess='shared'",
        "path=/run/vscsid/vm1.sock",
        "vhost-user-scsi-pci,",
        "chardev=vscsi0",
    ] {
        assert!(xml.contains(needed), "the domain lacks {needed}");
    }
    // A domain that breaks the schema is refused: the validator really checks.
    let dir = tempfile::tempdir().expect("tmp");
    let broken = dir.path().join("broken.xml");
    std::fs::write(
        &broken,
        xml.replace("<vcpu placement='static'>4</vcpu>", "<vcpu>four</vcpu>"),
    )
    .expect("write");
    let out = Command::new("virt-xml-validate")
        .arg(&broken)
        .arg("domain")
        .output()
        .expect("virt-xml-validate");
    assert!(!out.status.success(), "a vCPU count of 'four' validated");
}

#[test]
fn the_toml_example_parses() {
    let cfg = vscsid::config::parse_config_file(&example("vscsid.toml")).expect("parses");
    assert_eq!(
        cfg.socket.as_deref(),
        Some(Path::new("/run/vscsid/vm1.sock"))
    );
    assert!(!cfg.luns.is_empty());
}
