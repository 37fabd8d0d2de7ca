//! Confinement inside the daemon, with or without systemd: a seccomp filter per thread
//! kind that allows only the system calls that kind makes, and an optional drop to an
//! unprivileged user (`--user`) once the LUNs and the socket are open.
//!
//! How it is laid out: [`prepare`] (in `main`, before any thread starts) compiles one
//! filter per [`ThreadKind`] and installs the SIGSYS handler; threads are started with
//! [`spawn`], which has each one call [`enter`] with its kind as the first thing it does,
//! and the main thread calls [`enter`] for [`ThreadKind::Main`] once start-up is over.
//! Filters are per thread and a thread inherits its creator's filters, so a thread's calls
//! must pass its own filter *and* every filter of the threads that created it: a kind's
//! allow list therefore includes what the kinds it starts need (checked by the unit
//! tests). Without [`prepare`] (`--sandbox off`, and the library's own tests) [`enter`]
//! installs nothing.
//!
//! A thread started by a thread of its own kind (an iSCSI reader by a recovery thread, a
//! control client by the control thread) already runs under that kind's filter and adds
//! no second copy: it would allow nothing less, and the kernel limits the instructions of
//! all filters on a thread (MAX_INSNS_PER_PATH, 32768, hundreds per filter). With a copy
//! added on every reconnect of a path (a recovery thread, then a reader), about 25
//! reconnects left no room for the next one, and the daemon ended. A thread-local records
//! the kind whose filter the thread runs under last; [`spawn`] hands the creator's to the
//! new thread, and [`enter`] installs only a different kind's. No chain of starts returns
//! to a kind it left (checked by the unit tests), so a thread runs under at most as many
//! filters as the longest chain of kinds: main, worker, and the ticker or an iSCSI thread
//! (a recovery a worker started); one more after an upgrade in place ([`INHERITED_ENV`]).
//!
//! A call outside the filter: the kernel answers SECCOMP_RET_TRAP, a SIGSYS whose handler
//! ([`trap`]) writes one line to stderr (the journal under systemd), naming the thread and
//! the system call, and ends the process with exit status 159 (128 + SIGSYS, what a shell
//! shows for a process killed by SIGSYS). SECCOMP_RET_KILL_PROCESS would end it without a
//! word in the daemon's own log (only an audit record in the kernel log, where one is
//! kept), hence the trap. With audit on, the kernel records the trap too (type=1326; the
//! default `actions_logged` holds `trap`). `--sandbox log` installs the same
//! filters with SECCOMP_RET_LOG instead: every call is allowed and those outside a filter
//! are only recorded in the kernel log (rate-limited there), for checking a new
//! environment (another libc, another kernel). The lists were collected with `strace -f`
//! over the test suites under `--sandbox log`, each thread's calls after its filter went
//! on counted for its kind.
//!
//! A new thread must be started with [`spawn`] and a kind whose list covers what it does
//! (and its creator's list must cover it too). Opening images and logging in to targets
//! while the daemon runs happens on the control threads (`vscsid ctl add`) and the signal
//! thread (SIGHUP reload) only, whose lists cover start-up; with `--user` the files they
//! open must be accessible to that user.

mod filters;
mod trap;
pub(crate) mod user;

use std::cell::Cell;
use std::sync::OnceLock;
use std::thread::JoinHandle;

pub use filters::{filter_rules, spawns};
pub use trap::{set_journal, EXIT_STATUS};
pub use user::{drop_privileges, resolve_user, TargetUser};

/// Whether the system call filters are installed (`--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Filters installed; a call outside them ends the daemon.
    #[default]
    On,
    /// No filters (debugging).
    Off,
    /// Filters installed, calls outside them allowed and recorded in the kernel log.
    Log,
}

impl SandboxMode {
    /// `on`, `off` or `log`.
    pub fn parse(text: &str) -> Option<SandboxMode> {
        match text {
            "on" => Some(SandboxMode::On),
            "off" => Some(SandboxMode::Off),
            "log" => Some(SandboxMode::Log),
            _ => None,
        }
    }
}

/// The kinds of threads the daemon runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The main thread after start-up: accepts the frontend, speaks the vhost-user
    /// protocol (maps guest memory, takes image locks) and starts the workers.
    Main,
    /// The signal thread: status (SIGUSR1), shutdown (SIGTERM) and upgrade in place
    /// (SIGUSR2, the only kind that may execute a program). The kernel keeps a filter
    /// across execve, so the upgraded program runs under this one too: it allows what
    /// every other kind does and what the program does while it starts.
    Signals,
    /// The service thread: systemd notifications and the watchdog.
    Service,
    /// Queue workers (`vscsid-q*`, the control queue's among them) and the thread that
    /// waits for block I/O of an ended connection: io_uring, eventfds, epoll, backing
    /// files, and with iSCSI LUNs the network (a lost path starts its recovery there).
    Worker,
    /// The task management ticker: sleeps and writes an eventfd.
    Ticker,
    /// iSCSI sessions: reader, keepalive, recovery, multipath expiry and forwarded task
    /// management: TCP connections to the targets.
    Iscsi,
    /// The shutdown flush: makes completed writes durable.
    Flush,
    /// A shared disk's reservation thread: reads and writes the reservation state file
    /// (PREEMPT AND ABORT between daemons) and sleeps.
    Reservations,
    /// The control socket (`vscsid ctl`) and its clients: LUNs added, removed and resized
    /// while the daemon runs, so opening images and logging in to iSCSI targets as at
    /// start-up; everything but executing a program.
    Control,
    /// The metrics endpoint (`--metrics`) and its clients: accepting TCP connections on
    /// the socket bound at start-up, reading requests and writing answers.
    Metrics,
    /// A passthrough LUN's helper threads (`vscsid-sg*`): SG_IO and the sg ioctls on the
    /// device, and opening it again (read-write) when it comes back.
    Passthrough,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 11] = [
        ThreadKind::Main,
        ThreadKind::Signals,
        ThreadKind::Service,
        ThreadKind::Worker,
        ThreadKind::Ticker,
        ThreadKind::Iscsi,
        ThreadKind::Flush,
        ThreadKind::Reservations,
        ThreadKind::Control,
        ThreadKind::Metrics,
        ThreadKind::Passthrough,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Signals => "signals",
            ThreadKind::Service => "service",
            ThreadKind::Worker => "worker",
            ThreadKind::Ticker => "ticker",
            ThreadKind::Iscsi => "iscsi",
            ThreadKind::Flush => "flush",
            ThreadKind::Reservations => "reservations",
            ThreadKind::Control => "control",
            ThreadKind::Metrics => "metrics",
            ThreadKind::Passthrough => "passthrough",
        }
    }
}

/// What the filters must allow beyond the fixed lists, known from the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// iSCSI LUNs may be served: workers and the main thread may reach the network (a
    /// worker that loses a path starts the recovery thread, which inherits its filter).
    /// The daemon sets it always, since a reload or `vscsid ctl add` may bring one in.
    pub iscsi: bool,
    /// `--user`: the iSCSI threads already run when privileges are dropped, and glibc
    /// has every thread change its IDs, so they may call setuid/setgid/setgroups to
    /// exactly these IDs.
    pub drop_to: Option<(u32, u32)>,
}

struct Prepared {
    /// The program was executed by an upgrade in place from a confined one: the signal
    /// thread keeps that program's signal filter and adds none (see [`INHERITED_ENV`]).
    inherited: bool,
    programs: Vec<(ThreadKind, seccompiler::BpfProgram)>,
}

static PREPARED: OnceLock<Prepared> = OnceLock::new();

/// Set by an upgrade in place that executes the new program from a confined one: every
/// thread of the new program starts under the old signal thread's filter (the kernel keeps
/// it across execve and never removes it), so the new signal thread adds no second one, and
/// successive upgrades keep the same depth of filters instead of adding one each.
pub const INHERITED_ENV: &str = "VSCSID_SANDBOX_INHERITED";

/// Compiles every kind's filter and installs the SIGSYS handler. Called once, before any
/// thread starts; with [`SandboxMode::Off`] it does nothing.
pub fn prepare(mode: SandboxMode, needs: Needs, inherited: bool) -> Result<(), String> {
    if mode == SandboxMode::Off {
        return Ok(());
    }
    let mut programs = Vec::new();
    for kind in ThreadKind::ALL {
        let program = filters::compile(kind, &needs, mode)
            .map_err(|e| format!("sandbox: cannot build the {} filter: {e}", kind.name()))?;
        programs.push((kind, program));
    }
    trap::install().map_err(|e| format!("sandbox: cannot install the SIGSYS handler: {e}"))?;
    PREPARED
        .set(Prepared {
            inherited,
            programs,
        })
        .map_err(|_| "sandbox: prepared twice".to_string())
}

/// Whether filters are installed ([`prepare`] ran with a mode other than off).
pub fn active() -> bool {
    PREPARED.get().is_some()
}

thread_local! {
    /// The kind whose filter the calling thread runs under last: set by [`enter`], and by
    /// [`spawn`] in a new thread to its creator's before that thread's own [`enter`].
    /// `None` on a thread that entered no kind (the main thread during start-up, threads
    /// of the tests and libraries).
    static UNDER: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Starts a thread named `name` that runs `f` under `kind`'s filter: it enters `kind`
/// first, adding no filter when its creator already runs under that kind's (see the
/// module's comment).
pub fn spawn<F, T>(
    kind: ThreadKind,
    name: impl Into<String>,
    f: F,
) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let creator = UNDER.get();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // The new thread runs under its creator's filters until it installs its own.
            UNDER.set(creator);
            enter(kind);
            f()
        })
}

/// Installs `kind`'s filter on the calling thread (nothing without [`prepare`], nor when
/// the thread already runs under that kind's filter). A thread that cannot be confined
/// ends the daemon: running unconfined is not what was asked.
pub fn enter(kind: ThreadKind) {
    if UNDER.get() != Some(kind) {
        install(kind);
        UNDER.set(Some(kind));
    }
    if kind == ThreadKind::Worker {
        forbidden_call_for_tests();
    }
}

/// Adds `kind`'s filter to the calling thread's.
fn install(kind: ThreadKind) {
    let Some(prepared) = PREPARED.get() else {
        return;
    };
    if kind == ThreadKind::Signals && prepared.inherited {
        // Already under the previous program's signal filter, which allows what this
        // one would (and upgrades must not pile up filters: the kernel limits the
        // instructions of all filters on a thread).
        return;
    }
    if let Some((_, program)) = prepared.programs.iter().find(|(k, _)| *k == kind) {
        if let Err(e) = apply(program) {
            trap::fatal(&format!(
                "sandbox: cannot install the {} filter: {e} (--sandbox off runs without)",
                kind.name()
            ));
        }
    }
}

/// Installs `program` on the calling thread with prctl(PR_SET_SECCOMP), not seccomp(2):
/// systemd's `@system-service` system call set (the shipped unit's filter) holds prctl but
/// not seccomp, which would fail with EPERM there.
fn apply(program: &seccompiler::BpfProgram) -> std::io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| std::io::Error::other("the filter is too long"))?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers (and is required for a filter
    // installed without CAP_SYS_ADMIN).
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fprog = libc::sock_fprog {
        len,
        // seccompiler's `sock_filter` is `#[repr(C)]` with the kernel's fields, as libc's.
        filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: the kernel copies `len` instructions from `fprog.filter`, which `program`
    // keeps alive across the call, and writes nothing.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Test-only fault switch: with `VSCSID_TEST_FORBIDDEN_SYSCALL=1` in the environment, a
/// worker makes a system call no filter allows (ptrace) as soon as it starts, so the
/// tests can see a violation end the daemon, and see `--sandbox off` let it pass (the
/// call asks for process 0's memory, which fails with ESRCH and changes nothing).
fn forbidden_call_for_tests() {
    if std::env::var_os("VSCSID_TEST_FORBIDDEN_SYSCALL").is_some_and(|v| v == "1") {
        // SAFETY: PTRACE_PEEKDATA of process 0 reads nothing (there is no such tracee);
        // the address and data arguments are not dereferenced.
        let rc = unsafe { libc::ptrace(libc::PTRACE_PEEKDATA, 0, 0, 0) };
        tracing::warn!(rc, "test fault switch: ptrace(PTRACE_PEEKDATA) returned");
    }
}
