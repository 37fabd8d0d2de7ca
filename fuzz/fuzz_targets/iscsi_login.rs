//! Fuzz target: the login state machine against a target whose every byte is the input.
//! Byte 0 picks the initiator's options (AuthMethod None, CHAP or mutual CHAP; header and
//! data digests; a normal or a discovery session); the rest is what the target sends, read
//! through an in-memory connection that fails like a closed socket at its end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vscsid::iscsi::login::login;
use vscsid::iscsi::{Chap, IscsiOptions};
use vscsid_fuzz::iscsi_target::InputStream;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let chap = |mutual| Chap {
        user: "alice".into(),
        secret: "alice-secret-12".into(),
        mutual,
    };
    let opts = IscsiOptions {
        initiator_name: "iqn.2024-01.io.vscsid:fuzz".into(),
        chap: match pick & 3 {
            1 => Some(chap(None)),
            2 => Some(chap(Some(Box::new(Chap {
                user: "target".into(),
                secret: "target-secret-1".into(),
                mutual: None,
            })))),
            _ => None,
        },
        header_digest: pick & 4 != 0,
        data_digest: pick & 8 != 0,
        immediate_data: pick & 16 == 0,
        initial_r2t: pick & 32 != 0,
        ..IscsiOptions::default()
    };
    let target = (pick & 64 == 0).then_some("iqn.2003-01.org.example:disk1");
    let mut s = InputStream::new(stream);
    if let Ok(n) = login(&mut s, &opts, target, [0x80, 1, 2, 3, 4, 5]) {
        // What login promises the session.
        assert!(n.first_burst <= n.max_burst, "{n:?}");
        assert!(n.max_burst <= opts.max_burst_length, "{n:?}");
        assert!(n.target_max_recv >= 512, "{n:?}");
    }
});
