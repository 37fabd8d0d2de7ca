//! The iSCSI passthrough LUN: every CDB goes unchanged to a LUN of an iSCSI target through
//! vscsid's initiator ([`IscsiLun`], with multipath); status, sense and data come back
//! unchanged. READs and WRITEs move their data in place (`forwarded_io`): the session
//! writes Data-In straight into the guest's buffers and sends Data-Out straight from them,
//! and nothing is allocated per command. Other commands (INQUIRY, MODE SENSE, PERSISTENT
//! RESERVE OUT, ...), whose data the initiator or this LUN looks at or changes, copy their
//! data-out into the command and their data-in back on completion. A read-only LUN is the exception: it refuses commands that change data itself, and
//! sets the write-protect bit in the target's MODE SENSE answers.

use std::sync::Arc;
use std::time::Duration;

use super::forwarded_io::{GuestIoLease, GuestIoPool};
use super::{Answer, Command, HostError, IoContext, LunDevice, RawSense, Step, Task};
use crate::backend::guest::DataBuffers;
use crate::config::{IscsiLoginSettings, LunConfig, MultipathSettings};
use crate::iscsi::{Chap, IscsiLun, IscsiOptions, IscsiUrl, MultipathOptions};
use crate::scsi::cdb;
use crate::scsi::task::{command, ScsiCompletion, TmfFunction, TransportError};
use crate::scsi::{status, write_class, Sense};

/// Largest data buffer of one passthrough command (a copied one is allocated).
const MAX_PASSTHROUGH_BYTES: u64 = 16 << 20;

pub struct IscsiPassthrough {
    lun: IscsiLun,
    /// Guest buffers lent to READs and WRITEs in flight.
    guest_io: Arc<GuestIoPool>,
    /// Commands that change data are refused here: the target does not know the LUN is
    /// configured read-only.
    readonly: bool,
}

/// The options a LUN logs in with: the daemon's, with the LUN's path checking,
/// credentials, digests and CHAP algorithms. LUNs whose options come out equal share
/// their sessions.
pub(super) fn login_options(
    url: &IscsiUrl,
    chap_secret: Option<&str>,
    login: &IscsiLoginSettings,
    settings: &MultipathSettings,
    defaults: &IscsiOptions,
) -> IscsiOptions {
    let mut opts = defaults.clone();
    settings.apply(&mut opts);
    if let (Some(user), Some(secret)) = (&url.user, chap_secret.or(url.password.as_deref())) {
        opts.chap = Some(Chap {
            user: user.clone(),
            secret: secret.to_string(),
            mutual: None,
        });
    }
    login.apply(&mut opts);
    opts
}

/// The LUN's paths: the configured ones, and with `discover` those the URL's portal lists
/// for the target.
pub(super) fn paths_of(
    where_: &str,
    url: &IscsiUrl,
    opts: &IscsiOptions,
    login: &IscsiLoginSettings,
    settings: &MultipathSettings,
) -> MultipathOptions {
    let mut multipath = settings.multipath.clone();
    if login.discover {
        add_discovered_paths(where_, url, opts, &mut multipath);
    }
    multipath
}

/// Logs in to the LUN's target through each of its portals (or joins the sessions the
/// target's other LUNs opened).
pub fn open(
    l: &LunConfig,
    url: &IscsiUrl,
    chap_secret: Option<&str>,
    login: &IscsiLoginSettings,
    settings: &MultipathSettings,
    defaults: &IscsiOptions,
) -> Result<Box<dyn LunDevice>, String> {
    let where_ = format!("target {} LUN {}", l.target, l.lun);
    let opts = login_options(url, chap_secret, login, settings, defaults);
    let multipath = paths_of(&where_, url, &opts, login, settings);
    let lun = IscsiLun::connect_multipath(url, &opts, &multipath)
        .map_err(|e| format!("{where_}: {url}: {e}"))?;
    if multipath.extra_portals.is_empty() {
        tracing::info!("{where_}: iSCSI {url}: one path");
    } else {
        for p in lun.paths() {
            tracing::info!("{where_}: iSCSI path {p}");
        }
    }
    Ok(Box::new(IscsiPassthrough {
        lun,
        guest_io: Arc::default(),
        readonly: l.readonly,
    }))
}

/// Adds the portals SendTargets at the URL's portal lists for the target to `mp`'s paths,
/// except those already there, up to the paths a LUN may have. Discovery that fails is
/// logged and the LUN goes on with the configured paths: they may well work, and a login
/// through them reports its own error.
fn add_discovered_paths(
    where_: &str,
    url: &IscsiUrl,
    opts: &IscsiOptions,
    mp: &mut MultipathOptions,
) {
    let found = match crate::iscsi::discover_portals(url, opts) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(
                "{where_}: discovery at {} failed, going on with the configured paths: {e}",
                url.portal()
            );
            return;
        }
    };
    let known = |p: &str, mp: &MultipathOptions| {
        same_portal(p, &url.portal()) || mp.extra_portals.iter().any(|e| same_portal(p, e))
    };
    for portal in found {
        if known(&portal, mp) {
            continue;
        }
        if mp.extra_portals.len() + 1 >= crate::iscsi::multipath::MAX_PATHS {
            tracing::warn!(
                "{where_}: discovery lists more portals than the {} paths a LUN may have: {portal} left out",
                crate::iscsi::multipath::MAX_PATHS
            );
            continue;
        }
        tracing::info!("{where_}: discovered path {portal}");
        mp.extra_portals.push(portal);
    }
}

/// Whether two portals name the same host and port (`h` and `h:3260` do).
fn same_portal(a: &str, b: &str) -> bool {
    let split = crate::iscsi::multipath::split_portal;
    match (split(a), split(b)) {
        (Ok((ha, pa)), Ok((hb, pb))) => pa == pb && ha.eq_ignore_ascii_case(&hb),
        _ => a == b,
    }
}

/// A read-only LUN answers a command that would change data itself, before the target
/// sees it.
fn refuse_on_readonly(readonly: bool, cdb: &[u8]) -> Option<Answer> {
    (readonly && write_class::changes_data(cdb)).then(|| Answer::Check(Sense::write_protected()))
}

/// Whether a command's data moves in place: READ and WRITE, whose data neither the
/// initiator nor this LUN looks at.
fn moves_data_in_place(cdb: &[u8]) -> bool {
    matches!(
        cdb.first(),
        Some(
            &(cdb::READ_6
                | cdb::READ_10
                | cdb::READ_12
                | cdb::READ_16
                | cdb::WRITE_6
                | cdb::WRITE_10
                | cdb::WRITE_12
                | cdb::WRITE_16)
        )
    )
}

/// WP, bit 7 of the device-specific parameter of a MODE SENSE header (SBC-4 6.5.2).
const WP: u8 = 0x80;

/// The byte of a read-only LUN's data-in that holds the WP bit, for MODE SENSE: byte 2 of
/// the MODE SENSE(6) header, byte 3 of MODE SENSE(10)'s. The target does not know the LUN
/// is read-only; with WP set the guest's kernel knows (Linux's sd reads it there).
fn write_protect_byte(readonly: bool, cdb: &[u8]) -> Option<usize> {
    match cdb.first() {
        Some(&cdb::MODE_SENSE_6) if readonly => Some(2),
        Some(&cdb::MODE_SENSE_10) if readonly => Some(3),
        _ => None,
    }
}

/// Sets WP in the target's MODE SENSE data, when it reached that far.
fn set_write_protect(data_in: &mut [u8], byte: Option<usize>) {
    if let Some(b) = byte.and_then(|i| data_in.get_mut(i)) {
        *b |= WP;
    }
}

impl LunDevice for IscsiPassthrough {
    fn start(&self, cmd: &Command<'_>, task: &mut Task, io: &mut IoContext<'_>) -> Step {
        if let Some(answer) = refuse_on_readonly(self.readonly, cmd.cdb) {
            return Step::Done(answer);
        }
        let (out_len, in_len) = (io.data.out.len(), io.data.inn.len());
        if out_len > MAX_PASSTHROUGH_BYTES || in_len > MAX_PASSTHROUGH_BYTES {
            return Step::Done(Answer::overrun());
        }
        let lent = if moves_data_in_place(cmd.cdb) {
            self.guest_io.lend(&io.data)
        } else {
            None
        };
        let mut c = match lent {
            Some((lease, guest)) => {
                task.guest_io = Some(lease);
                let mut c = command(cmd.cdb, Vec::new(), in_len as u32);
                c.guest = Some(guest);
                c
            }
            None => {
                let mut data_out = vec![0u8; out_len as usize];
                if io.data.out.read_at(0, &mut data_out) != data_out.len() {
                    return Step::Done(Answer::failure());
                }
                task.write_protect_byte = write_protect_byte(self.readonly, cmd.cdb);
                command(cmd.cdb, data_out, in_len as u32)
            }
        };
        let op = cmd.cdb[0];
        c.cdb_len =
            cdb::cdb_len_for_opcode(op).unwrap_or(if op == cdb::VARIABLE_LENGTH { 32 } else { 16 });
        c.task_attr = cmd.task_attr;
        io.hold(task);
        // The answer can only be consumed by this worker, after this store: it holds the
        // worker's lock until its batch ends.
        task.remote_id = Some(self.lun.submit_corked(c, io.reply.callback(io.id)));
        Step::Forwarded
    }

    fn remote_done(&self, task: &mut Task, mut c: ScsiCompletion, data: DataBuffers<'_>) -> Answer {
        // Closed before the guest is answered: no Data-In lands in its buffers after this.
        let written_in_place = task.guest_io.take().map(GuestIoLease::end);
        let in_cap = data.inn.len();
        let resid = u32::try_from(in_cap).unwrap_or(u32::MAX);
        let host = |error| Answer::Host { error, resid };
        match c.result {
            Ok(st) => {
                let written = match written_in_place {
                    Some(n) => n.min(in_cap),
                    None => {
                        if st.status == status::GOOD {
                            set_write_protect(&mut c.data_in, task.write_protect_byte);
                        }
                        let n = c
                            .data_in
                            .len()
                            .min(usize::try_from(in_cap).unwrap_or(usize::MAX));
                        data.inn.write_at(0, &c.data_in[..n]) as u64
                    }
                };
                Answer::Status {
                    status: st.status,
                    sense: RawSense::new(&st.sense),
                    data_in: written,
                }
            }
            // No path within no_path_retry, or none that could carry the command in
            // MAX_REISSUES tries: what a real HBA's LU gives for a lost target.
            Err(
                TransportError::Timeout | TransportError::Closed | TransportError::ReissueLimit,
            ) => {
                let mut sense = [0u8; 18];
                let n = Sense::lu_communication_failure().to_fixed(&mut sense);
                Answer::Status {
                    status: status::CHECK_CONDITION,
                    sense: RawSense::new(&sense[..n]),
                    data_in: 0,
                }
            }
            // The guest's task management ended it, as QEMU reports cancelled requests.
            Err(TransportError::Aborted) => host(HostError::Aborted),
            // The path died with the command at the target and it may not run twice: the
            // guest's SCSI layer decides whether to retry (Linux: DID_TRANSPORT_DISRUPTED).
            Err(TransportError::Disrupted) => host(HostError::TransportDisrupted),
            Err(TransportError::Protocol(_)) => host(HostError::Failure),
        }
    }

    fn flush(&self) {
        self.lun.flush();
    }

    fn set_path_failed(&self, portal: &str, fail: bool) -> Result<(), String> {
        self.lun.set_path_failed(portal, fail)
    }

    fn forwards_task_management(&self) -> bool {
        true
    }

    fn forward_task_management(
        &self,
        f: TmfFunction,
        remote_id: Option<u64>,
    ) -> Option<Result<u8, TransportError>> {
        let r = match (f, remote_id) {
            (TmfFunction::AbortTask, Some(id)) => self.lun.abort_task(id),
            // Not in flight at the target: nothing to abort.
            (TmfFunction::AbortTask, None) => Ok(0),
            (f, _) => self.lun.task_management(f),
        };
        if let Err(e) = &r {
            tracing::warn!("forwarding task management to {} failed: {e}", self.lun.url);
        }
        Some(r)
    }

    fn describe(&self) -> String {
        format!(
            "iSCSI passthrough {}{}",
            self.lun.url,
            if self.readonly { ", read-only" } else { "" }
        )
    }

    fn shut_down(&self, within: Duration) {
        self.lun.close(within);
    }

    fn paths_down(&self) -> usize {
        self.lun.paths().iter().filter(|p| !p.up).count()
    }

    fn has_paths(&self) -> bool {
        true
    }

    fn detail_lines(&self) -> Vec<String> {
        self.lun
            .paths()
            .iter()
            .enumerate()
            .map(|(n, p)| format!("path {n} {p}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portals_compare_by_host_and_port() {
        assert!(same_portal("127.0.0.2:3260", "127.0.0.2"));
        assert!(same_portal("[::1]:3260", "[::1]"));
        assert!(!same_portal("127.0.0.2:3261", "127.0.0.2:3260"));
        assert!(!same_portal("127.0.0.3:3260", "127.0.0.2:3260"));
    }

    #[test]
    fn a_readonly_lun_refuses_writes_before_forwarding() {
        let mut write = [0u8; 16];
        write[0] = cdb::WRITE_10;
        let mut read = [0u8; 16];
        read[0] = cdb::READ_10;
        let mut unmap = [0u8; 16];
        unmap[0] = cdb::UNMAP;
        for c in [&write, &unmap] {
            match refuse_on_readonly(true, c) {
                Some(Answer::Check(s)) => assert_eq!(s, Sense::write_protected()),
                other => panic!("{other:?}"),
            }
            assert!(refuse_on_readonly(false, c).is_none());
        }
        assert!(refuse_on_readonly(true, &read).is_none());
    }

    #[test]
    fn a_readonly_lun_sets_wp_in_mode_sense_headers() {
        // MODE SENSE(6) header: mode data length, medium type, device-specific, block
        // descriptor length; then a caching page.
        let mut six = vec![0x17, 0x00, 0x10, 0x08, 0, 0, 0, 0];
        set_write_protect(
            &mut six,
            write_protect_byte(true, &[cdb::MODE_SENSE_6, 0, 0x08]),
        );
        assert_eq!(six[2], 0x90, "WP set, DPOFUA kept");
        assert_eq!(&six[..2], &[0x17, 0x00]);
        assert_eq!(&six[3..], &[0x08, 0, 0, 0, 0]);
        // MODE SENSE(10): two bytes of length, medium type, then the device-specific byte.
        let mut ten = vec![0x00, 0x1a, 0x00, 0x00, 0, 0, 0, 0x08];
        set_write_protect(
            &mut ten,
            write_protect_byte(true, &[cdb::MODE_SENSE_10, 0, 0x3f]),
        );
        assert_eq!(ten, vec![0x00, 0x1a, 0x00, 0x80, 0, 0, 0, 0x08]);
        // Writable LUNs and other commands keep the target's bytes; a short answer is
        // left as it is.
        let mut w = vec![0x17, 0x00, 0x10, 0x08];
        set_write_protect(&mut w, write_protect_byte(false, &[cdb::MODE_SENSE_6]));
        assert_eq!(w[2], 0x10);
        set_write_protect(&mut w, write_protect_byte(true, &[cdb::READ_10]));
        assert_eq!(w[2], 0x10);
        let mut short = vec![0x03, 0x00];
        set_write_protect(&mut short, write_protect_byte(true, &[cdb::MODE_SENSE_6]));
        assert_eq!(short, vec![0x03, 0x00]);
    }
}
