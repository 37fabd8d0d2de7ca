//! What a LUN's paths tell it (`PathEvents`: a path lost with the commands it held, a path
//! up) and what ALUA following asks of it (`AluaPaths`).

use super::*;

impl PathEvents for Core {
    fn path_down(&self, path: usize, lost: LostPath) {
        let started = Instant::now();
        if let Some(p) = self.paths.get(path) {
            p.serving.store(false, Ordering::Release);
        }
        let portal = self.paths.get(path).map(|p| p.session.portal());
        let (mut reissued, mut failed, mut gave_up) = (0usize, 0usize, 0usize);
        for o in lost.orphans {
            let mut c = o.command;
            if o.sent {
                if !reissue_is_safe(&c.cmd.cdb[..c.cmd.cdb_len.min(32)]) {
                    failed += 1;
                    c.done
                        .complete(ScsiCompletion::failed(TransportError::Disrupted));
                    continue;
                }
                c.reissues += 1;
                if c.reissues > MAX_REISSUES {
                    gave_up += 1;
                    c.done
                        .complete(ScsiCompletion::failed(TransportError::ReissueLimit));
                    continue;
                }
            }
            reissued += 1;
            self.dispatch(c, false);
        }
        let stall = lost.silent_for + started.elapsed();
        if let Some(p) = self.paths.get(path) {
            p.session
                .stats
                .last_failover_us
                .store(stall.as_micros() as u64, Ordering::Relaxed);
            p.session
                .stats
                .errors
                .fetch_add(failed as u64, Ordering::Relaxed);
        }
        let portal = portal.as_deref().unwrap_or("?");
        if gave_up > 0 {
            // Once per command: each ends here, and only here.
            tracing::error!(
                lun = self.lun.value(),
                portal,
                commands = gave_up,
                "iSCSI: the path failed each of the {} times these commands were sent; \
                 failing them",
                MAX_REISSUES + 1
            );
        }
        let Some(suppressed) = self
            .paths
            .get(path)
            .and_then(|p| p.session.log.check("path failed"))
        else {
            return;
        };
        let others_up = self.paths.iter().any(|p| p.session.is_up());
        tracing::warn!(
            portal,
            silent_ms = lost.silent_for.as_millis() as u64,
            stall_ms = stall.as_millis() as u64,
            reissued,
            failed,
            paths_left = self.paths.iter().filter(|p| p.session.is_up()).count(),
            "iSCSI path failed{}{suppressed}",
            if others_up {
                ""
            } else {
                "; no path left, queueing I/O"
            }
        );
    }

    fn path_up(&self, path: usize) {
        if let Some(p) = self.paths.get(path) {
            if let Some(suppressed) = p.session.log.check("path up") {
                tracing::info!(portal = %p.session.portal(), isid = %crate::iscsi::isid::hex(&p.session.isid()), "iSCSI path up{suppressed}");
            }
        }
        self.clear_attentions(path);
        self.refresh_alua(path);
        self.restore_registration(path);
        if let Some(p) = self.paths.get(path) {
            p.serving.store(true, Ordering::Release);
        }
        self.flush();
    }

    fn port_refused(&self, path: usize, command: PathCommand, answer: ScsiCompletion) {
        alua_follow::port_refused(self, path, command, answer);
    }
}

impl AluaPaths for Core {
    fn follow(&self) -> &AluaFollow {
        &self.alua_follow
    }
    fn path_count(&self) -> usize {
        self.paths.len()
    }
    fn state(&self, path: usize) -> u8 {
        self.paths
            .get(path)
            .map_or(alua::UNKNOWN, |p| p.alua.load(Ordering::Relaxed))
    }
    fn set_state(&self, path: usize, state: u8) {
        if let Some(p) = self.paths.get(path) {
            p.alua.store(state, Ordering::Relaxed);
        }
    }
    fn serving(&self, path: usize) -> bool {
        self.paths.get(path).is_some_and(Path::is_serving)
    }
    fn ask(&self, path: usize, cdb: &[u8], len: u32) -> Option<ScsiCompletion> {
        self.own_command(self.paths.get(path)?, cdb, Vec::new(), len)
    }
    fn reissue_is_safe(&self, cdb: &[u8]) -> bool {
        reissue_is_safe(cdb)
    }
    fn max_reissues(&self) -> u32 {
        MAX_REISSUES
    }
    fn resend(&self, command: PathCommand) {
        self.dispatch(command, false);
    }
    fn resend_on(&self, path: usize, command: PathCommand) {
        let sent = match self.paths.get(path) {
            Some(p) => p.attachment.submit(self.lun, command, false),
            None => Err(command),
        };
        if let Err(back) = sent {
            self.dispatch(back, false);
        }
    }
    fn flush(&self) {
        Core::flush(self);
    }
    fn portal(&self, path: usize) -> String {
        self.paths
            .get(path)
            .map_or_else(|| "?".into(), |p| p.session.portal())
    }
    fn handle(&self) -> Option<Arc<Core>> {
        self.me.upgrade()
    }
    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}
