//! A LUN's persistent reservation commands over its paths: a registration applied on every
//! path and remembered, and restored on a path that logs in later (`reservation` has the
//! rules; this is the LUN's side of them).

use super::*;

impl Core {
    pub(super) fn remembered(&self) -> MutexGuard<'_, Remembered> {
        self.registration.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest's REGISTER, REGISTER AND IGNORE EXISTING KEY or RELEASE: down one path;
    /// once it succeeded, `repeat` on every other logged-in path too, and the guest gets
    /// the first path's answer after those. A `registration` is remembered for paths that
    /// log in later.
    pub(super) fn submit_everywhere(
        &self,
        id: u64,
        cmd: ScsiCommand,
        done: Done,
        repeat: Repeat,
        registration: Option<Registration>,
        cork: bool,
    ) -> u64 {
        // The path that carries it, when known before it is sent (the others get the
        // repeat); a command that waits for a path may go anywhere: then every path gets
        // the repeat, which the one that ran it takes as a no-op.
        let first = Arc::new(AtomicUsize::new(usize::MAX));
        let me = self.me.clone();
        let sent_on = first.clone();
        let done: Done = Done::new(move |c: ScsiCompletion| match me.upgrade() {
            Some(core) if is_good(&c) => core.succeeded(
                repeat,
                registration,
                sent_on.load(Ordering::Acquire),
                c,
                done,
            ),
            _ => done.complete(c),
        });
        let mut q = PathCommand {
            id,
            cmd,
            done,
            reissues: 0,
            probe: false,
        };
        if let Some(i) = self.choose() {
            first.store(i, Ordering::Release);
            match self.paths[i].attachment.submit(self.lun, q, cork) {
                Ok(()) => return id,
                Err(back) => {
                    first.store(usize::MAX, Ordering::Release);
                    q = back;
                }
            }
        }
        self.dispatch(q, cork);
        id
    }

    /// The guest's command succeeded on path `first` (`usize::MAX`: not known): remembers
    /// a registration and sends `repeat` on every other logged-in path (on a thread of its
    /// own: this runs on a path's reader, and the repeats wait for other paths' readers),
    /// then answers the guest with `answer`.
    pub(super) fn succeeded(
        &self,
        repeat: Repeat,
        registration: Option<Registration>,
        first: usize,
        answer: ScsiCompletion,
        done: Done,
    ) {
        // Remembered before the paths are looked at: a path that logs in meanwhile either
        // finds it (and registers itself) or is up already (and gets the repeat).
        if let Some(r) = registration {
            *self.remembered() = Remembered::after(r);
        }
        let others: Vec<usize> = (0..self.paths.len())
            .filter(|&i| i != first && self.paths[i].session.is_up())
            .collect();
        let Some(core) = self.me.upgrade().filter(|_| !others.is_empty()) else {
            return done.complete(answer);
        };
        // The guest's answer, given by whoever takes it: the thread after the repeats, or
        // this function if the thread cannot start.
        let reply = Arc::new(Mutex::new(Some((done, answer))));
        let take = |r: &Mutex<Option<(Done, ScsiCompletion)>>| {
            r.lock().unwrap_or_else(|p| p.into_inner()).take()
        };
        let span = tracing::Span::current();
        let thread_reply = reply.clone();
        let repeat = move || {
            let _span = span.entered();
            for i in others {
                core.repeat_on(i, &repeat);
            }
            if let Some((done, answer)) = take(&thread_reply) {
                done.complete(answer);
            }
        };
        // Without a thread the repeats are skipped: the guest still gets its answer, and
        // the paths are registered when they next log in.
        if let Err(e) = crate::sandbox::spawn(
            crate::sandbox::ThreadKind::Iscsi,
            "iscsi-pr-register",
            repeat,
        ) {
            tracing::error!(
                lun = self.lun.value(),
                "iSCSI: cannot start the thread that registers the other paths: {e}"
            );
            if let Some((done, answer)) = take(&reply) {
                done.complete(answer);
            }
        }
    }

    /// Sends `repeat` down path `i`; logs a refusal. Blocking.
    pub(super) fn repeat_on(&self, i: usize, repeat: &Repeat) -> bool {
        let Some(p) = self.paths.get(i) else {
            return false;
        };
        let c = self.own_command(p, &repeat.cdb(), repeat.parameters(), 0);
        let ok = c.as_ref().is_some_and(is_good);
        if !ok {
            tracing::warn!(
                portal = %p.session.portal(),
                key = format_args!("{:#x}", repeat.key()),
                "iSCSI: repeating the guest's PERSISTENT RESERVE OUT (service action {:#04x}) \
                 on this path failed: {}",
                repeat.cdb()[1],
                describe(c.as_ref())
            );
        }
        ok
    }

    /// Before a path that logged in carries guest I/O: registers it with the guest's key
    /// if the guest is registered (and its key still is at the target), or unregisters it
    /// if the guest removed its registration.
    pub(super) fn restore_registration(&self, path: usize) {
        let Some(p) = self.paths.get(path) else {
            return;
        };
        let remembered = self.remembered().clone();
        let registration = match remembered {
            Remembered::Nothing => return,
            Remembered::Unregistered(r) => r,
            Remembered::Registered(r) => {
                let keys = self
                    .own_command(
                        p,
                        &reservation::read_keys_cdb(reservation::READ_KEYS_LEN),
                        Vec::new(),
                        u32::from(reservation::READ_KEYS_LEN),
                    )
                    .filter(is_good)
                    .and_then(|c| reservation::parse_read_keys(&c.data_in));
                match keys {
                    Some(keys) if keys.contains(&r.key()) => r,
                    Some(_) => {
                        // Preempted by another initiator (or cleared): the path must not
                        // bring the key back.
                        let mut m = self.remembered();
                        if *m == Remembered::Registered(r.clone()) {
                            *m = Remembered::Nothing;
                        }
                        tracing::warn!(portal = %p.session.portal(), key = format_args!("{:#x}", r.key()), "iSCSI: the guest's reservation key is no longer registered at the target (preempted or cleared); the path joins unregistered");
                        return;
                    }
                    None => {
                        tracing::warn!(portal = %p.session.portal(), "iSCSI: could not read the target's registered keys; the path joins unregistered");
                        return;
                    }
                }
            }
        };
        if self.repeat_on(path, &registration.repeat()) {
            tracing::info!(portal = %p.session.portal(), key = format_args!("{:#x}", registration.key()), "iSCSI: the guest's reservation registration applied to the path");
        }
    }
}
