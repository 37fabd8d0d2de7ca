//! Tests of the configuration: command-line shorthands, checks and their error messages.

use super::*;

fn base() -> Config {
    Config {
        socket: Some("/tmp/s.sock".into()),
        luns: vec![LunConfig::disk(0, 0, "/tmp/a.img".into())],
        ..Config::default()
    }
}

#[test]
fn valid_config_passes() {
    base().validate().expect("valid");
}

#[test]
fn errors_name_their_field() {
    let mut c = base();
    c.num_queues = 0;
    assert!(c.validate().unwrap_err().0.starts_with("num_queues:"));
    let mut c = base();
    c.socket = None;
    assert!(c.validate().unwrap_err().0.starts_with("socket:"));
    let mut c = base();
    c.luns.clear();
    assert!(c.validate().unwrap_err().0.starts_with("lun:"));
    let mut c = base();
    c.queue_size = 100;
    assert!(c.validate().unwrap_err().0.starts_with("queue_size:"));
    let mut c = base();
    c.threads = Some(c.num_queues + 1);
    assert!(c.validate().unwrap_err().0.starts_with("threads:"));
}

#[test]
fn a_chap_user_without_a_secret_is_refused() {
    let mut c = base();
    let mut kind =
        LunKind::iscsi("iscsi://alice@127.0.0.1/iqn.2024-01.x:y/1", "url").expect("url parses");
    if let LunKind::Iscsi { chap_secret, .. } = &mut kind {
        *chap_secret = None;
    }
    let mut l = LunConfig::disk(0, 1, "/tmp/unused.img".into());
    l.kind = kind.clone();
    c.luns.push(l.clone());
    let err = c.validate().unwrap_err().0;
    assert!(
        err.contains("LUN 1: url:") && err.contains("alice"),
        "{err}"
    );
    if let LunKind::Iscsi { chap_secret, .. } = &mut l.kind {
        *chap_secret = Some(Secret("s3cret".into()));
    }
    c.luns.pop();
    c.luns.push(l);
    c.validate().expect("a secret from the file or environment");
    // A password in the URL is a secret too.
    let mut c = base();
    let mut l = LunConfig::disk(0, 1, "/tmp/unused.img".into());
    l.kind =
        LunKind::iscsi("iscsi://alice%pw@127.0.0.1/iqn.2024-01.x:y/1", "url").expect("url parses");
    c.luns.push(l);
    c.validate().expect("password in the URL");
}

#[test]
fn a_star_in_place_of_the_lun_takes_every_lun_with_the_options() {
    let mut c = base();
    c.add_iscsi("iscsi://127.0.0.1/iqn.2024-01.x:y/*,path=127.0.0.2:3260,readonly")
        .expect("star");
    match &c.luns[1].kind {
        LunKind::Iscsi {
            all_luns,
            multipath,
            ..
        } => {
            assert!(*all_luns);
            assert_eq!(multipath.multipath.extra_portals, vec!["127.0.0.2:3260"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(c.luns[1].readonly);
    let err = c
        .add_iscsi("iscsi://127.0.0.1/iqn.2024-01.x:y/**")
        .unwrap_err()
        .0;
    assert!(err.contains("lun: '**'"), "{err}");
}

#[test]
fn the_iscsi_shorthand_takes_readonly_among_its_options() {
    let url = "iscsi://127.0.0.1/iqn.2024-01.x:y/1";
    let mut c = base();
    c.add_iscsi(&format!("{url},path=127.0.0.2:3260,readonly"))
        .expect("readonly as a flag");
    c.add_iscsi(&format!("{url},ro=off")).expect("ro=off");
    c.add_iscsi(&format!("{url},readonly=on,policy=failover"))
        .expect("readonly=on");
    c.add_iscsi(url).expect("no options");
    let ro: Vec<bool> = c.luns[1..].iter().map(|l| l.readonly).collect();
    assert_eq!(ro, vec![true, false, true, false]);
    match &c.luns[1].kind {
        LunKind::Iscsi { multipath, .. } => {
            assert_eq!(multipath.multipath.extra_portals, vec!["127.0.0.2:3260"]);
        }
        other => panic!("{other:?}"),
    }
    let err = c.add_iscsi(&format!("{url},readonly=maybe")).unwrap_err().0;
    assert!(err.contains("readonly: 'maybe'"), "{err}");
    // The TOML url has a readonly key of its own: not an option there.
    let err = LunKind::iscsi(&format!("{url},readonly"), "url")
        .unwrap_err()
        .0;
    assert!(err.contains("readonly: unknown option"), "{err}");
}

#[test]
fn duplicate_lun_is_refused_and_next_lun_counts_up() {
    let mut c = base();
    assert_eq!(c.next_lun_of_target0(), 1);
    let err = c
        .add_lun(LunConfig::disk(0, 0, "/tmp/b.img".into()), "--disk")
        .unwrap_err();
    assert!(err.0.contains("twice"));
    c.add_lun(LunConfig::disk(0, 5, "/tmp/b.img".into()), "--disk")
        .expect("new lun");
    assert_eq!(c.next_lun_of_target0(), 6);
}

#[test]
fn sizes_and_null_luns() {
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size("2G").unwrap(), 2 << 30);
    assert_eq!(parse_size("16m").unwrap(), 16 << 20);
    assert!(parse_size("0").is_err());
    assert!(parse_size("1Q").is_err());
    assert!(parse_size("").is_err());
    let mut c = base();
    c.add_null("1G,block-size=4096").unwrap();
    assert_eq!(c.luns[1].kind, LunKind::Null { size: 1 << 30 });
    assert_eq!((c.luns[1].lun, c.luns[1].block_size), (1, 4096));
    assert!(c
        .add_null("1G,colour=red")
        .unwrap_err()
        .0
        .contains("colour"));
}

#[test]
fn sg_luns_from_the_shorthand() {
    let mut c = base();
    c.add_sg("/dev/sg1").expect("plain");
    c.add_sg("/dev/sg2,readonly,iops=50").expect("options");
    assert_eq!(
        c.luns[1].kind,
        LunKind::Sg {
            path: "/dev/sg1".into()
        }
    );
    assert_eq!((c.luns[1].lun, c.luns[2].lun), (1, 2));
    assert!(!c.luns[1].readonly && c.luns[2].readonly);
    assert_eq!(c.luns[2].limits.iops[0], 50);
    assert!(!c.luns[1].discard);
    for (spec, want) in [
        ("", "--sg '': path: missing SCSI generic device path"),
        (
            "/dev/sg1,cache=none",
            "--sg '/dev/sg1,cache=none': cache: does not apply to a SCSI generic LUN",
        ),
        (
            "/dev/sg1,serial=X",
            "--sg '/dev/sg1,serial=X': serial: does not apply to a SCSI generic LUN",
        ),
        (
            "/dev/sg1,colour",
            "--sg '/dev/sg1,colour': colour: unknown option",
        ),
        ("/dev/sg1,", "--sg '/dev/sg1,': empty option"),
        (
            "/dev/sg1,readonly=maybe",
            "--sg '/dev/sg1,readonly=maybe': readonly: 'maybe' is not on/off",
        ),
    ] {
        assert_eq!(c.add_sg(spec).unwrap_err().0, want);
    }
    let e = c.add_sg("/dev/sg1,iops=lots").unwrap_err().0;
    assert!(e.contains("iops:"), "{e}");
    let l = lun_from_spec("sg", "/dev/sg4,readonly", 1, 7).expect("runtime add");
    assert_eq!((l.target, l.lun, l.readonly), (1, 7, true));
    assert!(lun_from_spec("tape", "/dev/st0", 0, 0)
        .unwrap_err()
        .0
        .contains("sg"));
}

#[test]
fn physical_block_size_is_a_power_of_two_multiple() {
    assert_eq!(check_physical_block_size(4096, 512, "p"), Ok(4096));
    assert_eq!(check_physical_block_size(512, 512, "p"), Ok(512));
    assert_eq!(check_physical_block_size(65536, 4096, "p"), Ok(65536));
    for (p, l) in [
        (1536, 512),
        (2048, 4096),
        (0, 512),
        (-4096, 512),
        (512 << 16, 512),
    ] {
        let e = check_physical_block_size(p, l, "p").unwrap_err().0;
        assert!(e.starts_with("p:") && e.contains(&p.to_string()), "{e}");
    }
}

#[test]
fn lun_and_block_size_ranges() {
    assert_eq!(check_lun_number(16383, "lun").unwrap(), 16383);
    assert!(check_lun_number(16384, "lun").is_err());
    assert!(check_lun_number(-1, "lun").is_err());
    assert_eq!(check_block_size(4096, "b").unwrap(), 4096);
    assert!(check_block_size(1024, "b").unwrap_err().0.contains("1024"));
}
