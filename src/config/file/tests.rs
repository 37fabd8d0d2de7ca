//! Tests of the configuration file: every key, its defaults, and the errors that name it.

use super::*;
use crate::backend::CacheMode;

#[test]
fn metrics_address_defaults_to_loopback() {
    let addr = |t: &str| parse_config_text(t).map(|c| c.metrics.map(|a| a.to_string()));
    assert_eq!(
        addr("[daemon]\nmetrics = 9100\n"),
        Ok(Some("127.0.0.1:9100".into()))
    );
    assert_eq!(
        addr("[daemon]\nmetrics = \"9100\"\n"),
        Ok(Some("127.0.0.1:9100".into()))
    );
    assert_eq!(
        addr("[daemon]\nmetrics = \"localhost:9100\"\n"),
        Ok(Some("127.0.0.1:9100".into()))
    );
    assert_eq!(
        addr("[daemon]\nmetrics = \"0.0.0.0:9100\"\n"),
        Ok(Some("0.0.0.0:9100".into()))
    );
    assert_eq!(
        addr("[daemon]\nmetrics = \"[::1]:9100\"\n"),
        Ok(Some("[::1]:9100".into()))
    );
    assert_eq!(addr("[daemon]\n"), Ok(None));
    for bad in [
        "metrics = 70000",
        "metrics = -1",
        "metrics = \"example.com:9100\"",
        "metrics = \"127.0.0.1\"",
        "metrics = true",
    ] {
        let e = addr(&format!("[daemon]\n{bad}\n")).expect_err(bad);
        assert!(e.0.contains("daemon.metrics"), "{bad}: {e}");
    }
}

#[test]
fn socket_access_and_vm_name() {
    let cfg = parse_config_text(
        r#"
        [daemon]
        socket = "/run/vscsid/vm1.sock"
        socket_owner = "root"
        socket_group = "libvirt-qemu"
        socket_mode = "0660"
        vm_name = "vm1"
        "#,
    )
    .expect("parse");
    assert_eq!(cfg.socket_access.owner.as_deref(), Some("root"));
    assert_eq!(cfg.socket_access.group.as_deref(), Some("libvirt-qemu"));
    assert_eq!(cfg.socket_access.mode, 0o660);
    assert_eq!(cfg.vm_name.as_deref(), Some("vm1"));
    let cfg = parse_config_text("[daemon]\nsocket_mode = 0o640\n").expect("octal literal");
    assert_eq!(cfg.socket_access.mode, 0o640);
    assert_eq!(
        parse_config_text("").expect("empty").socket_access.mode,
        0o600,
        "only the owner by default"
    );
    for (text, field) in [
        ("[daemon]\nsocket_mode = 660\n", "daemon.socket_mode"),
        ("[daemon]\nsocket_mode = \"0999\"\n", "daemon.socket_mode"),
        ("[daemon]\nsocket_mode = \"01777\"\n", "daemon.socket_mode"),
        ("[daemon]\nsocket_mode = true\n", "daemon.socket_mode"),
        ("[daemon]\nsocket_group = \"a b\"\n", "daemon.socket_group"),
        ("[daemon]\nsocket_owner = \"\"\n", "daemon.socket_owner"),
        ("[daemon]\nvm_name = \"\"\n", "daemon.vm_name"),
    ] {
        let e = parse_config_text(text).expect_err(text);
        assert!(e.0.starts_with(field), "{text}: {e}");
    }
}

#[test]
fn sandbox_and_user() {
    use crate::sandbox::SandboxMode;
    let cfg = parse_config_text("").expect("empty");
    assert_eq!(cfg.sandbox, SandboxMode::On, "on by default");
    assert_eq!(cfg.user, None);
    let cfg = parse_config_text("[daemon]\nsandbox = \"off\"\nuser = \"nobody:nogroup\"\n")
        .expect("parse");
    assert_eq!(cfg.sandbox, SandboxMode::Off);
    let user = cfg.user.expect("user");
    assert_eq!(
        (user.spec.as_str(), user.field),
        ("nobody:nogroup", "daemon.user")
    );
    let cfg = parse_config_text("[daemon]\nsandbox = false\n").expect("bool");
    assert_eq!(cfg.sandbox, SandboxMode::Off);
    for (text, field) in [
        ("[daemon]\nsandbox = \"maybe\"\n", "daemon.sandbox"),
        ("[daemon]\nsandbox = 1\n", "daemon.sandbox"),
        ("[daemon]\nuser = \"a b\"\n", "daemon.user"),
        ("[daemon]\nuser = \"nobody:\"\n", "daemon.user"),
    ] {
        let e = parse_config_text(text).expect_err(text);
        assert!(e.0.starts_with(field), "{text}: {e}");
    }
}

#[test]
fn poll_us_takes_adaptive_zero_or_microseconds() {
    use crate::config::PollSetting;
    for (text, want) in [
        ("\"adaptive\"", PollSetting::Adaptive),
        ("0", PollSetting::Off),
        ("\"0\"", PollSetting::Off),
        ("50", PollSetting::Fixed(50)),
    ] {
        let cfg = parse_config_text(&format!("[daemon]\npoll_us = {text}\n")).expect(text);
        assert_eq!(cfg.poll_us, want, "{text}");
    }
}

#[test]
fn full_file_parses() {
    let cfg = parse_config_text(
        r#"
        [daemon]
        socket = "/run/vscsid/vm1.sock"
        num_queues = 4
        reconnect = true
        submit_batch = 8
        [[lun]]
        target = 0
        lun = 0
        path = "/var/lib/a.img"
        cache = "writeback"
        block_size = 4096
        iops = 500
        bw_read = "20M"
        bw_write = 10485760
        [[lun]]
        target = 1
        lun = 2
        path = "/var/lib/b.img"
        readonly = true
        serial = "B-2"
        wwn = "0x6001405aabbccdd00011223344556677"
        "#,
    )
    .expect("parse");
    assert_eq!(
        cfg.socket.as_deref(),
        Some(Path::new("/run/vscsid/vm1.sock"))
    );
    assert_eq!(cfg.num_queues, 4);
    assert!(cfg.reconnect);
    assert_eq!(cfg.submit_batch, 8);
    assert_eq!(
        cfg.poll_us,
        crate::config::PollSetting::Adaptive,
        "the default"
    );
    assert_eq!(cfg.luns.len(), 2);
    assert_eq!(cfg.luns[0].block_size, 4096);
    assert!(matches!(
        cfg.luns[0].kind,
        LunKind::Disk {
            cache: CacheMode::Writeback,
            ..
        }
    ));
    assert_eq!((cfg.luns[1].target, cfg.luns[1].lun), (1, 2));
    assert!(cfg.luns[1].readonly);
    assert_eq!(
        cfg.luns[1].wwn,
        Some(Naa::Extended(0x6001_405a_abbc_cdd0_0011_2233_4455_6677))
    );
    assert_eq!(cfg.luns[1].serial.as_deref(), Some("B-2"));
    assert_eq!(
        cfg.luns[0].limits.describe(),
        "iops=500 bw_read=20M bw_write=10M"
    );
    assert!(cfg.luns[1].limits.is_empty());
}

#[test]
fn errors_name_the_field_on_one_line() {
    let cases = [
        (
            "[[lun]]\nlun = 0\npath = \"/a\"\ncache = \"fast\"\n",
            "lun[0].cache",
        ),
        (
            "[[lun]]\nlun = 0\npath = \"/a\"\nblock_size = 1024\n",
            "lun[0].block_size",
        ),
        ("[[lun]]\nlun = 99999\npath = \"/a\"\n", "lun[0].lun"),
        (
            "[[lun]]\ntarget = 300\nlun = 0\npath = \"/a\"\n",
            "lun[0].target",
        ),
        ("[[lun]]\nlun = 0\n", "lun[0].path"),
        ("[[lun]]\npath = \"/a\"\n", "lun[0].lun"),
        (
            "[[lun]]\nlun = 0\npath = \"/a\"\nwwn = \"12\"\n",
            "lun[0].wwn",
        ),
        (
            "[[lun]]\nlun = 0\npath = \"/a\"\nkind = \"tape\"\n",
            "lun[0].kind",
        ),
        (
            "[[lun]]\nlun = 0\npath = \"/a\"\niops = \"many\"\n",
            "lun[0].iops:",
        ),
        ("[[lun]]\nlun = 0\npath = \"/a\"\nbw = -5\n", "lun[0].bw:"),
        (
            "[[lun]]\nlun = 0\npath = \"/a\"\nbw = \"1M\"\nbw_write = \"1M\"\n",
            "lun[0].bw_write:",
        ),
        ("[daemon]\nnum_queues = -1\n", "daemon.num_queues"),
        ("[daemon]\nsubmit_batch = 0\n", "daemon.submit_batch"),
        ("[daemon]\nsubmit_batch = 5000\n", "daemon.submit_batch"),
        ("[daemon]\npoll_us = \"often\"\n", "daemon.poll_us"),
        ("[daemon]\npoll_us = -3\n", "daemon.poll_us"),
        ("[daemon]\npoll_us = true\n", "daemon.poll_us"),
        (
            "[[lun]]\nlun = 0\npath = \"/a\"\n[[lun]]\nlun = 0\npath = \"/b\"\n",
            "lun[1]",
        ),
        ("[daemon]\nsokcet = \"/x\"\n", "sokcet"),
    ];
    for (text, field) in cases {
        let e = parse_config_text(text).expect_err(text).0;
        assert!(e.contains(field), "{text:?} gave {e:?}");
        assert!(!e.contains('\n'), "{e:?}");
    }
}

#[test]
fn every_lun_of_a_target_by_luns_all_or_a_star() {
    let all = |cfg: &Config| {
        cfg.luns
            .iter()
            .map(|l| match &l.kind {
                LunKind::Iscsi { all_luns, .. } => (l.lun, *all_luns),
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    let text =
        "[[lun]]\nlun = 4\nkind = \"iscsi\"\nurl = \"iscsi://h/iqn.x:y/0\"\nluns = \"all\"\n\
                [[lun]]\nlun = 40\nkind = \"iscsi\"\nurl = \"iscsi://h/iqn.x:z/*\"\n\
                [[lun]]\nlun = 50\nkind = \"iscsi\"\nurl = \"iscsi://h/iqn.x:z/3\"\n";
    let cfg = parse_config_text(text).expect("parse");
    assert_eq!(all(&cfg), vec![(4, true), (40, true), (50, false)]);
    let e = parse_config_text(
        "[[lun]]\nlun = 0\nkind = \"iscsi\"\nurl = \"iscsi://h/t/0\"\nluns = \"some\"\n",
    )
    .unwrap_err()
    .0;
    assert!(e.contains("lun[0].luns: 'some'"), "{e}");
    let e = parse_config_text("[[lun]]\nlun = 0\npath = \"/a\"\nluns = \"all\"\n")
        .unwrap_err()
        .0;
    assert!(e.contains("luns"), "{e}");
}

#[test]
fn iscsi_lun_with_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-value\n").unwrap();
    let text = format!(
        "[daemon]\ninitiator_name = \"iqn.2024-01.test:host\"\n[[lun]]\nlun = 0\nkind = \"iscsi\"\nurl = \"iscsi://alice@127.0.0.1/iqn.x:y/1\"\nchap_secret_file = \"{}\"\nheader_digest = true\n",
        secret.display()
    );
    let cfg = parse_config_text(&text).expect("parse");
    assert_eq!(cfg.initiator_name.as_deref(), Some("iqn.2024-01.test:host"));
    match &cfg.luns[0].kind {
        LunKind::Iscsi {
            url,
            chap_secret,
            login,
            ..
        } => {
            assert_eq!(url.user.as_deref(), Some("alice"));
            assert_eq!(
                chap_secret.as_ref().map(|s| s.0.as_str()),
                Some("s3cret-value")
            );
            assert!(login.header_digest);
            assert!(!login.data_digest);
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{cfg:?}").contains("s3cret-value"));
    let e = parse_config_text("[[lun]]\nlun = 0\nkind = \"iscsi\"\nurl = \"iscsi://h/t\"\n")
        .unwrap_err();
    assert!(e.0.contains("lun[0].url"), "{e:?}");
    let e = parse_config_text("[[lun]]\nlun = 0\nkind = \"iscsi\"\n").unwrap_err();
    assert!(e.0.contains("lun[0].url"), "{e:?}");
}

#[test]
fn keys_that_do_not_apply_to_the_kind_are_refused() {
    let iscsi = "kind = \"iscsi\"\nurl = \"iscsi://127.0.0.1/iqn.x:y/1\"\n";
    let null = "kind = \"null\"\nsize = \"1M\"\n";
    let disk = "path = \"/a\"\n";
    // (the LUN's table, the key that does not apply)
    let cases = [
        (format!("{iscsi}cache = \"none\"\n"), "cache", "iscsi"),
        (format!("{iscsi}block_size = 4096\n"), "block_size", "iscsi"),
        (format!("{iscsi}path = \"/a\"\n"), "path", "iscsi"),
        (format!("{iscsi}discard = true\n"), "discard", "iscsi"),
        (
            format!("{iscsi}wwn = \"0x5000c500a1b2c3d4\"\n"),
            "wwn",
            "iscsi",
        ),
        (format!("{iscsi}serial = \"S\"\n"), "serial", "iscsi"),
        (format!("{iscsi}shared = true\n"), "shared", "iscsi"),
        (format!("{iscsi}size = 5\n"), "size", "iscsi"),
        (format!("{null}cache = \"none\"\n"), "cache", "null"),
        (format!("{null}path = \"/a\"\n"), "path", "null"),
        (
            format!("{null}physical_block_size = 4096\n"),
            "physical_block_size",
            "null",
        ),
        (format!("{null}paths = [\"h:3260\"]\n"), "paths", "null"),
        (format!("{disk}paths = [\"h:3260\"]\n"), "paths", "disk"),
        (format!("{disk}url = \"iscsi://h/t/0\"\n"), "url", "disk"),
        (format!("{disk}size = 5\n"), "size", "disk"),
        (
            format!("{disk}header_digest = true\n"),
            "header_digest",
            "disk",
        ),
        (
            format!("{disk}no_path_retry = 5\n"),
            "no_path_retry",
            "disk",
        ),
    ];
    for (table, key, kind) in cases {
        let text = format!("[[lun]]\nlun = 0\n{table}");
        let e = parse_config_text(&text).expect_err(&text).0;
        assert_eq!(e, format!("lun[0].{key}: does not apply to {kind} LUNs"));
    }
    // What each kind uses is accepted.
    for table in [
        format!("{iscsi}readonly = true\niops = 100\npaths = [\"127.0.0.2:3260\"]\n"),
        format!("{null}block_size = 4096\nserial = \"N\"\nreadonly = true\n"),
        format!("{disk}cache = \"none\"\nshared = true\nphysical_block_size = 4096\n"),
    ] {
        let text = format!("[[lun]]\nlun = 0\n{table}");
        parse_config_text(&text).expect(&text);
    }
}

#[test]
fn two_paths_to_one_portal_name_the_paths_key() {
    let text = "[[lun]]\nlun = 0\nkind = \"iscsi\"\nurl = \"iscsi://san-a/iqn.x:y/0\"\n\
                paths = [\"san-b\", \"SAN-A:3260\"]\n";
    let e = parse_config_text(text).expect_err("a repeated portal").0;
    assert_eq!(
        e,
        "lun[0].paths: path 'SAN-A:3260' is the same portal as the URL's san-a:3260: \
         two paths to one portal share its session"
    );
}

#[test]
fn passthrough_kinds_parse_and_refuse_what_does_not_apply() {
    let cfg = parse_config_text(
        r#"
        [[lun]]
        lun = 0
        kind = "sg"
        path = "/dev/sg0"
        readonly = true
        iops = 100
        [[lun]]
        lun = 1
        kind = "block-passthrough"
        path = "/dev/sdb"
        cache = "directsync"
        [[lun]]
        lun = 2
        kind = "block-passthrough"
        path = "/dev/sdc"
        "#,
    )
    .expect("parse");
    assert_eq!(
        cfg.luns[0].kind,
        LunKind::Sg {
            path: "/dev/sg0".into()
        }
    );
    assert!(cfg.luns[0].readonly);
    assert_eq!(cfg.luns[0].limits.iops[0], 100);
    assert_eq!(
        cfg.luns[1].kind,
        LunKind::BlockPassthrough {
            path: "/dev/sdb".into(),
            cache: CacheMode::Directsync
        }
    );
    assert_eq!(
        cfg.luns[2].kind,
        LunKind::BlockPassthrough {
            path: "/dev/sdc".into(),
            cache: CacheMode::None
        }
    );
    let sg = "kind = \"sg\"\npath = \"/dev/sg0\"\n";
    let bp = "kind = \"block-passthrough\"\npath = \"/dev/sdb\"\n";
    let cases = [
        (
            format!("{sg}cache = \"none\"\n"),
            "lun[0].cache: does not apply to sg LUNs",
        ),
        (
            format!("{sg}block_size = 4096\n"),
            "lun[0].block_size: does not apply to sg LUNs",
        ),
        (
            format!("{sg}serial = \"S\"\n"),
            "lun[0].serial: does not apply to sg LUNs",
        ),
        (
            format!("{sg}wwn = \"0x5000c500a1b2c3d4\"\n"),
            "lun[0].wwn: does not apply to sg LUNs",
        ),
        (
            format!("{sg}discard = true\n"),
            "lun[0].discard: does not apply to sg LUNs",
        ),
        (
            format!("{sg}shared = true\n"),
            "lun[0].shared: does not apply to sg LUNs",
        ),
        (
            format!("{sg}url = \"iscsi://h/t/0\"\n"),
            "lun[0].url: does not apply to sg LUNs",
        ),
        (
            format!("{bp}block_size = 4096\n"),
            "lun[0].block_size: does not apply to block-passthrough LUNs",
        ),
        (
            format!("{bp}physical_block_size = 4096\n"),
            "lun[0].physical_block_size: does not apply to block-passthrough LUNs",
        ),
        (
            format!("{bp}shared = true\n"),
            "lun[0].shared: does not apply to block-passthrough LUNs",
        ),
        (
            format!("{bp}size = 5\n"),
            "lun[0].size: does not apply to block-passthrough LUNs",
        ),
        (
            "kind = \"sg\"\n".to_string(),
            "lun[0].path: missing SCSI generic device path",
        ),
        (
            "kind = \"sg\"\npath = \"\"\n".to_string(),
            "lun[0].path: empty",
        ),
        (
            "kind = \"block-passthrough\"\n".to_string(),
            "lun[0].path: missing block device path",
        ),
    ];
    for (table, want) in cases {
        let text = format!("[[lun]]\nlun = 0\n{table}");
        let e = parse_config_text(&text).expect_err(&text).0;
        assert_eq!(e, want, "{text}");
    }
    let e = parse_config_text(&format!("[[lun]]\nlun = 0\n{bp}cache = \"writeback\"\n"))
        .expect_err("writeback")
        .0;
    assert!(
        e.starts_with("lun[0].cache: 'writeback' does not apply"),
        "{e}"
    );
}

#[test]
fn physical_block_size_follows_the_logical_one() {
    let cfg = parse_config_text("[[lun]]\nlun = 0\npath = \"/a\"\nphysical_block_size = 4096\n")
        .expect("parse");
    assert_eq!(cfg.luns[0].physical_block_size, Some(4096));
    let e = parse_config_text(
        "[[lun]]\nlun = 0\npath = \"/a\"\nblock_size = 4096\nphysical_block_size = 512\n",
    )
    .expect_err("smaller than logical")
    .0;
    assert!(e.starts_with("lun[0].physical_block_size:"), "{e}");
}

#[test]
fn syntax_error_reports_a_line() {
    let e = parse_config_text("[daemon]\nsocket = \n").unwrap_err().0;
    assert!(e.starts_with("line 2"), "{e}");
}
