//! The allow lists: system calls by group, the groups each thread kind gets, and their
//! compilation to BPF with `seccompiler`. Collected with `--sandbox log` over the test
//! suites (disk, null and iSCSI LUNs, reconnects, upgrades, shutdowns, systemd) and
//! completed with what glibc and Rust's std do on rarer paths (thread exit, panics).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{Needs, SandboxMode, ThreadKind};

/// What a rule checks of a call's arguments.
#[derive(Clone, Copy)]
enum Args {
    /// Anything.
    Any,
    /// Argument `.0` has none of the bits `.1` set (mmap/mprotect without PROT_EXEC).
    Without(u8, u64),
    /// Argument `.0` is one of `.1` (ioctl requests, socket families, prctl options).
    OneOf(u8, &'static [u64]),
}

/// One allowed system call.
#[derive(Clone, Copy)]
struct Call {
    name: &'static str,
    nr: i64,
    args: Args,
}

macro_rules! call {
    ($name:ident) => {
        Call {
            name: stringify!($name),
            nr: sys_nr::$name,
            args: Args::Any,
        }
    };
    ($name:ident, $args:expr) => {
        Call {
            name: stringify!($name),
            nr: sys_nr::$name,
            args: $args,
        }
    };
}

/// System call numbers under their names (libc's `SYS_*` constants).
#[allow(non_upper_case_globals)]
mod sys_nr {
    macro_rules! nrs {
        ($($name:ident => $sys:ident),* $(,)?) => {
            $(pub const $name: i64 = libc::$sys;)*
        };
    }
    nrs! {
        read => SYS_read, readv => SYS_readv, write => SYS_write, writev => SYS_writev, close => SYS_close,
        pread64 => SYS_pread64, pwrite64 => SYS_pwrite64, preadv => SYS_preadv,
        pwritev => SYS_pwritev, preadv2 => SYS_preadv2, pwritev2 => SYS_pwritev2,
        futex => SYS_futex, sched_yield => SYS_sched_yield, nanosleep => SYS_nanosleep,
        clock_nanosleep => SYS_clock_nanosleep, clock_gettime => SYS_clock_gettime,
        clock_getres => SYS_clock_getres, gettimeofday => SYS_gettimeofday,
        getpid => SYS_getpid, gettid => SYS_gettid, getppid => SYS_getppid,
        getuid => SYS_getuid, geteuid => SYS_geteuid, getgid => SYS_getgid,
        getegid => SYS_getegid, getrandom => SYS_getrandom, brk => SYS_brk,
        mmap => SYS_mmap, munmap => SYS_munmap, mremap => SYS_mremap, madvise => SYS_madvise,
        mprotect => SYS_mprotect, rt_sigprocmask => SYS_rt_sigprocmask,
        rt_sigreturn => SYS_rt_sigreturn, rt_sigaction => SYS_rt_sigaction,
        sigaltstack => SYS_sigaltstack, exit => SYS_exit, exit_group => SYS_exit_group,
        prctl => SYS_prctl, seccomp => SYS_seccomp, sched_getaffinity => SYS_sched_getaffinity,
        rseq => SYS_rseq, set_robust_list => SYS_set_robust_list, tgkill => SYS_tgkill,
        fstat => SYS_fstat, newfstatat => SYS_newfstatat, statx => SYS_statx,
        fcntl => SYS_fcntl, lseek => SYS_lseek, ppoll => SYS_ppoll,
        restart_syscall => SYS_restart_syscall, sendto => SYS_sendto, sendmsg => SYS_sendmsg,
        memfd_create => SYS_memfd_create, ftruncate => SYS_ftruncate,
        clone => SYS_clone, clone3 => SYS_clone3, fsync => SYS_fsync,
        fdatasync => SYS_fdatasync, fallocate => SYS_fallocate, ioctl => SYS_ioctl,
        io_uring_setup => SYS_io_uring_setup, io_uring_enter => SYS_io_uring_enter,
        io_uring_register => SYS_io_uring_register, eventfd2 => SYS_eventfd2,
        epoll_create1 => SYS_epoll_create1, epoll_ctl => SYS_epoll_ctl,
        epoll_pwait => SYS_epoll_pwait, epoll_pwait2 => SYS_epoll_pwait2,
        accept4 => SYS_accept4, recvmsg => SYS_recvmsg, recvfrom => SYS_recvfrom,
        openat => SYS_openat, getdents64 => SYS_getdents64, dup => SYS_dup, dup3 => SYS_dup3,
        socket => SYS_socket, connect => SYS_connect, setsockopt => SYS_setsockopt,
        getsockopt => SYS_getsockopt, getsockname => SYS_getsockname,
        getpeername => SYS_getpeername, shutdown => SYS_shutdown, bind => SYS_bind,
        uname => SYS_uname, execve => SYS_execve, faccessat => SYS_faccessat,
        faccessat2 => SYS_faccessat2, unlinkat => SYS_unlinkat, close_range => SYS_close_range,
        readlinkat => SYS_readlinkat, listen => SYS_listen, socketpair => SYS_socketpair,
        prlimit64 => SYS_prlimit64, set_tid_address => SYS_set_tid_address, umask => SYS_umask,
        fchmod => SYS_fchmod, fchmodat => SYS_fchmodat, fchownat => SYS_fchownat,
        execveat => SYS_execveat, sendmmsg => SYS_sendmmsg, setuid => SYS_setuid, setgid => SYS_setgid,
        setgroups => SYS_setgroups, setresuid => SYS_setresuid, setresgid => SYS_setresgid,
        pipe2 => SYS_pipe2, fstatfs => SYS_fstatfs, sysinfo => SYS_sysinfo,
        sched_setaffinity => SYS_sched_setaffinity, ptrace => SYS_ptrace, mount => SYS_mount,
        kill => SYS_kill, getcwd => SYS_getcwd, timerfd_create => SYS_timerfd_create,
        timerfd_settime => SYS_timerfd_settime, timerfd_gettime => SYS_timerfd_gettime,
    }
    #[cfg(target_arch = "x86_64")]
    nrs! {
        poll => SYS_poll, epoll_wait => SYS_epoll_wait, stat => SYS_stat, lstat => SYS_lstat,
        open => SYS_open, access => SYS_access, unlink => SYS_unlink, readlink => SYS_readlink,
        dup2 => SYS_dup2, pipe => SYS_pipe, arch_prctl => SYS_arch_prctl, chmod => SYS_chmod,
        lchown => SYS_lchown, chown => SYS_chown,
    }
}

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
const PRCTL_OPTIONS: &[u64] = &[
    libc::PR_SET_NAME as u64,
    libc::PR_GET_NAME as u64,
    libc::PR_SET_NO_NEW_PRIVS as u64,
    libc::PR_GET_NO_NEW_PRIVS as u64,
    libc::PR_SET_SECCOMP as u64,
];

/// ioctl requests: the block device's size, sector size and discard (backing files), and
/// what std's sockets and terminals ask (FIONBIO for non-blocking mode, TCGETS for isatty).
// The request constants are `c_ulong`, which is u64 only on 64-bit targets.
#[allow(clippy::unnecessary_cast)]
const IOCTLS: &[u64] = &[
    0x1268,      // BLKSSZGET
    0x8008_1272, // BLKGETSIZE64
    0x1277,      // BLKDISCARD
    libc::FIONBIO as u64,
    libc::FIONREAD as u64,
    libc::TCGETS as u64,
    libc::FIOCLEX as u64,
];

/// ioctl requests of a passthrough LUN's helper threads: SG_IO, what opening the device
/// again checks (the sg version, the transfer limit, a block device's sizes).
#[allow(clippy::unnecessary_cast)]
const SG_IOCTLS: &[u64] = &[
    crate::backend::sg_io::SG_IO as u64,
    crate::backend::sg_io::SG_GET_VERSION_NUM as u64,
    crate::backend::sg_io::SG_GET_RESERVED_SIZE as u64,
    crate::backend::sg_io::BLKSECTGET as u64,
    crate::backend::sg_io::SG_SCSI_RESET as u64,
];

/// SG_SCSI_RESET: a passthrough LUN's logical unit reset, sent from the task management
/// thread (a worker of the control queue starts it, with the iSCSI filter).
#[allow(clippy::unnecessary_cast)]
const SG_RESET_IOCTL: &[u64] = &[crate::backend::sg_io::SG_SCSI_RESET as u64];

/// Socket families of the iSCSI threads: TCP to the targets, and what name resolution
/// opens (nscd's UNIX socket, netlink for address sorting).
const INET_FAMILIES: &[u64] = &[
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_UNIX as u64,
    libc::AF_NETLINK as u64,
];
const UNIX_FAMILY: &[u64] = &[libc::AF_UNIX as u64];

/// Every thread: memory, time, futexes, signals returning, thread exit, naming itself,
/// installing a filter of its own (prctl(PR_SET_SECCOMP)), and logging (stderr, or the journal's socket, with a
/// memfd for a large entry).
fn base() -> Vec<Call> {
    let mut v = vec![
        call!(read),
        call!(readv),
        call!(write),
        call!(writev),
        call!(close),
        call!(futex),
        call!(sched_yield),
        call!(nanosleep),
        call!(clock_nanosleep),
        call!(clock_gettime),
        call!(clock_getres),
        call!(gettimeofday),
        call!(getpid),
        call!(gettid),
        call!(getppid),
        call!(getuid),
        call!(geteuid),
        call!(getgid),
        call!(getegid),
        call!(getrandom),
        call!(brk),
        call!(mmap, Args::Without(2, PROT_EXEC)),
        call!(mprotect, Args::Without(2, PROT_EXEC)),
        call!(munmap),
        call!(mremap),
        call!(madvise),
        call!(rt_sigprocmask),
        call!(rt_sigreturn),
        call!(sigaltstack),
        call!(exit),
        call!(exit_group),
        call!(prctl, Args::OneOf(0, PRCTL_OPTIONS)),
        call!(sched_getaffinity),
        call!(rseq),
        call!(set_robust_list),
        call!(tgkill),
        call!(fstat),
        call!(newfstatat),
        call!(statx),
        call!(fcntl),
        call!(lseek),
        call!(ppoll),
        call!(restart_syscall),
        call!(sendto),
        call!(sendmsg),
        call!(memfd_create),
        call!(ioctl, Args::OneOf(1, IOCTLS)),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push(call!(poll));
    v
}

/// Starting threads.
fn spawn() -> Vec<Call> {
    vec![call!(clone), call!(clone3)]
}

/// Block I/O on backing files, io_uring, eventfds and epoll.
fn block_io() -> Vec<Call> {
    let mut v = vec![
        call!(pread64),
        call!(pwrite64),
        call!(preadv),
        call!(pwritev),
        call!(preadv2),
        call!(pwritev2),
        call!(fsync),
        call!(fdatasync),
        call!(fallocate),
        call!(io_uring_setup),
        call!(io_uring_enter),
        call!(io_uring_register),
        call!(eventfd2),
        // A worker's timer for commands held back by I/O limits.
        call!(timerfd_create),
        call!(timerfd_settime),
        call!(timerfd_gettime),
        call!(epoll_create1),
        call!(epoll_ctl),
        call!(epoll_pwait),
        call!(epoll_pwait2),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push(call!(epoll_wait));
    v
}

/// Reading files by name: /proc (who holds an image lock), /sys and /etc (name
/// resolution). Read-only: no write access mode, no O_CREAT, no O_TRUNC.
fn read_files() -> Vec<Call> {
    let writing = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
    let mut v = vec![
        call!(openat, Args::Without(2, writing)),
        call!(getdents64),
        call!(readlinkat),
        call!(fstatfs),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        call!(open, Args::Without(1, writing)),
        call!(stat),
        call!(lstat),
        call!(readlink),
    ]);
    v
}

/// TCP connections to iSCSI targets, and name resolution.
fn network() -> Vec<Call> {
    vec![
        call!(socket, Args::OneOf(0, INET_FAMILIES)),
        call!(connect),
        call!(bind),
        call!(setsockopt),
        call!(getsockopt),
        call!(getsockname),
        call!(getpeername),
        call!(shutdown),
        call!(recvfrom),
        call!(recvmsg),
        // glibc's resolver sends its A and AAAA queries at once.
        call!(sendmmsg),
        call!(uname),
        call!(sysinfo),
    ]
}

/// The vhost-user connection: accepting it, its messages (with descriptors), the
/// in-flight region (a memfd the daemon sizes), and cloning descriptors.
fn vhost() -> Vec<Call> {
    vec![
        call!(accept4),
        call!(recvmsg),
        call!(recvfrom),
        call!(ftruncate),
        call!(dup),
        call!(dup3),
        call!(shutdown),
        call!(getsockopt),
        call!(getsockname),
    ]
}

/// Upgrade in place: checking and executing the program, descriptors for the new one.
fn upgrade() -> Vec<Call> {
    let mut v = vec![
        call!(execve),
        call!(faccessat),
        call!(faccessat2),
        call!(close_range),
        call!(dup3),
        call!(pipe2),
        // std resets SIGPIPE to its default for the new program.
        call!(rt_sigaction, Args::OneOf(0, &[libc::SIGPIPE as u64])),
        call!(getcwd),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([call!(access), call!(dup2), call!(pipe)]);
    v
}

/// Telling systemd (sd_notify opens a datagram socket per message), from the service
/// thread, and at shutdown from the signal or the main thread.
fn notify() -> Vec<Call> {
    vec![call!(socket, Args::OneOf(0, UNIX_FAMILY)), call!(connect)]
}

/// What the program an upgrade executes does before it confines itself: the kernel keeps
/// the executing thread's filter across execve (a filter can never be removed), so that
/// filter also covers the new program's start-up: the dynamic loader (executable
/// mappings), signal handlers, opening the images read-write, binding the socket when none
/// is passed, and everything its threads do afterwards.
fn start_up() -> Vec<Call> {
    let mut v = vec![
        call!(mmap),
        call!(mprotect),
        call!(openat),
        call!(rt_sigaction),
        call!(prlimit64),
        call!(set_tid_address),
        call!(socketpair),
        call!(bind),
        call!(listen),
        call!(umask),
        call!(fchmod),
        call!(fchmodat),
        call!(fchownat),
        call!(getdents64),
        call!(readlinkat),
        call!(uname),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        call!(arch_prctl),
        call!(chmod),
        call!(chown),
        call!(lchown),
        call!(readlink),
        call!(access),
        call!(unlink),
    ]);
    v
}

/// Removing the socket file at shutdown.
fn remove_socket() -> Vec<Call> {
    let mut v = vec![call!(unlinkat)];
    #[cfg(target_arch = "x86_64")]
    v.push(call!(unlink));
    v
}

/// The calls of [`set_ids`].
const SET_IDS: [&str; 5] = ["setuid", "setgid", "setresuid", "setresgid", "setgroups"];

/// Privilege drop to exactly `uid`/`gid` (glibc makes every thread change its IDs).
fn set_ids(uid: u32, gid: u32) -> Vec<Call> {
    // The lists are static; the IDs are known only at run time, so they are leaked once
    // (one small allocation per kind, for the daemon's lifetime).
    let uid: &'static [u64] = Box::leak(Box::new([u64::from(uid)]));
    let gid: &'static [u64] = Box::leak(Box::new([u64::from(gid)]));
    vec![
        call!(setuid, Args::OneOf(0, uid)),
        call!(setgid, Args::OneOf(0, gid)),
        call!(setresuid, Args::OneOf(0, uid)),
        call!(setresgid, Args::OneOf(0, gid)),
        call!(setgroups, Args::OneOf(0, &[0, 1])),
    ]
}

/// The kinds a kind starts threads of: its own filter must allow what they need. A start
/// of the kind itself adds no filter (the new thread keeps its creator's), and no chain of
/// starts comes back to a kind it left, so filters do not pile up on a thread.
pub fn spawns(kind: ThreadKind, needs: &Needs) -> Vec<ThreadKind> {
    match kind {
        ThreadKind::Main => {
            let mut v = vec![ThreadKind::Worker, ThreadKind::Ticker];
            if needs.iscsi {
                v.push(ThreadKind::Iscsi);
            }
            v
        }
        ThreadKind::Worker if needs.iscsi => vec![ThreadKind::Ticker, ThreadKind::Iscsi],
        ThreadKind::Worker => vec![ThreadKind::Ticker],
        // Both open LUNs while the daemon runs (a reload, `vscsid ctl add`).
        ThreadKind::Signals => vec![
            ThreadKind::Flush,
            ThreadKind::Iscsi,
            ThreadKind::Reservations,
            ThreadKind::Passthrough,
        ],
        ThreadKind::Control => vec![
            ThreadKind::Control,
            ThreadKind::Iscsi,
            ThreadKind::Flush,
            ThreadKind::Reservations,
            ThreadKind::Passthrough,
        ],
        ThreadKind::Iscsi => vec![ThreadKind::Iscsi],
        ThreadKind::Metrics => vec![ThreadKind::Metrics],
        ThreadKind::Passthrough => vec![],
        ThreadKind::Service | ThreadKind::Ticker | ThreadKind::Flush | ThreadKind::Reservations => {
            vec![]
        }
    }
}

/// The calls `kind` may make, before argument rules are merged.
fn calls(kind: ThreadKind, needs: &Needs) -> Vec<Call> {
    let mut v = base();
    match kind {
        ThreadKind::Main => {
            v.extend(spawn());
            v.extend(block_io());
            v.extend(vhost());
            v.extend(read_files());
            v.extend(notify());
            // The SIGBUS handler for guest memory is installed with the first memory table.
            v.push(call!(rt_sigaction, Args::OneOf(0, &[libc::SIGBUS as u64])));
            if needs.iscsi {
                v.extend(network());
            }
        }
        ThreadKind::Worker => {
            v.extend(spawn());
            v.extend(block_io());
            v.extend(read_files());
            // Dropping a frontend's connection that sent what cannot be served (guest
            // memory pulled away, a ring out of bounds).
            v.push(call!(shutdown));
            // The task management thread it starts resets passthrough devices.
            v.push(call!(ioctl, Args::OneOf(1, SG_RESET_IOCTL)));
            if needs.iscsi {
                v.extend(network());
            }
        }
        ThreadKind::Control => {
            // Adding a LUN does what start-up does for it: open the image (or log in,
            // starting the session's threads), set up its I/O; removing one makes it
            // durable and closes it.
            for other in ThreadKind::ALL
                .into_iter()
                .filter(|&k| k != kind && k != ThreadKind::Signals)
            {
                v.extend(
                    calls(other, needs)
                        .into_iter()
                        .filter(|c| !SET_IDS.contains(&c.name)),
                );
            }
            // Not the loader's executable mappings nor signal handlers: those are the
            // upgraded program's.
            v.extend(
                start_up()
                    .into_iter()
                    .filter(|c| !matches!(c.name, "mmap" | "mprotect" | "rt_sigaction")),
            );
            v.extend(network());
            v.extend(remove_socket());
            if let Some((uid, gid)) = needs.drop_to {
                // The control thread runs when privileges are dropped.
                v.extend(set_ids(uid, gid));
            }
        }
        ThreadKind::Signals => {
            // The new program of an upgrade runs under this filter (as well as its own):
            // everything any thread of the daemon does, and its start-up; a SIGHUP reload
            // adds and removes LUNs as the control threads do.
            for other in ThreadKind::ALL.into_iter().filter(|&k| k != kind) {
                v.extend(
                    calls(other, needs)
                        .into_iter()
                        .filter(|c| !SET_IDS.contains(&c.name)),
                );
            }
            v.extend(upgrade());
            v.extend(start_up());
            v.extend(remove_socket());
            // Logging out of iSCSI sessions at shutdown, and the new program's logins.
            v.extend(network());
        }
        ThreadKind::Service => v.extend(notify()),
        ThreadKind::Ticker => {}
        ThreadKind::Iscsi => {
            v.extend(spawn());
            v.extend(network());
            v.extend(read_files());
            v.push(call!(eventfd2));
            // As the task management thread: a passthrough LUN's reset.
            v.push(call!(ioctl, Args::OneOf(1, SG_RESET_IOCTL)));
            if let Some((uid, gid)) = needs.drop_to {
                v.extend(set_ids(uid, gid));
            }
        }
        ThreadKind::Passthrough => {
            v.push(call!(ioctl, Args::OneOf(1, SG_IOCTLS)));
            // Opening the device again, read-write, and putting it behind the
            // descriptor number the LUN's reads and writes use.
            v.push(call!(openat));
            v.push(call!(dup3));
            #[cfg(target_arch = "x86_64")]
            v.push(call!(open));
            if let Some((uid, gid)) = needs.drop_to {
                // The threads run when privileges are dropped.
                v.extend(set_ids(uid, gid));
            }
        }
        ThreadKind::Flush => v.extend(block_io()),
        ThreadKind::Reservations => {
            v.extend(block_io());
            if let Some((uid, gid)) = needs.drop_to {
                // It runs when privileges are dropped.
                v.extend(set_ids(uid, gid));
            }
        }
        ThreadKind::Metrics => {
            // Accepting scrapers on the listening socket bound at start-up, a thread per
            // client; reading (recv) and writing (send, in the base list) with timeouts.
            v.extend(spawn());
            v.extend([call!(accept4), call!(recvfrom), call!(setsockopt)]);
            if let Some((uid, gid)) = needs.drop_to {
                // The accepting thread runs when privileges are dropped.
                v.extend(set_ids(uid, gid));
            }
        }
    }
    v
}

/// The allow list of `kind` as seccompiler rules: call number to its argument rules
/// (empty: any arguments).
pub fn filter_rules(
    kind: ThreadKind,
    needs: &Needs,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for c in calls(kind, needs) {
        let rules = match c.args {
            Args::Any => None,
            Args::Without(arg, bits) => Some(vec![SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(bits),
                0,
            )?])?]),
            Args::OneOf(arg, values) => Some(
                values
                    .iter()
                    .map(|&v| {
                        SeccompRule::new(vec![SeccompCondition::new(
                            arg,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            v,
                        )?])
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        // The same call in two groups: any arguments wins over a rule; two rule lists add.
        match (map.get_mut(&c.nr), rules) {
            (None, r) => {
                map.insert(c.nr, r);
            }
            (Some(slot), None) => *slot = None,
            (Some(Some(existing)), Some(more)) => existing.extend(more),
            (Some(None), Some(_)) => {}
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect())
}

/// Compiles `kind`'s filter for this machine's architecture.
pub(super) fn compile(
    kind: ThreadKind,
    needs: &Needs,
    mode: SandboxMode,
) -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| format!("no filters for {}", std::env::consts::ARCH))?;
    let mismatch = match mode {
        SandboxMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let rules = filter_rules(kind, needs).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// The name of system call `nr`, for the calls the filters know of (and a few that no
/// filter allows).
pub(super) fn call_name(nr: i64) -> Option<&'static str> {
    NAMES.iter().find(|(n, _)| *n == nr).map(|(_, name)| *name)
}

/// Names of every call in the lists, and of calls an attack would want.
static NAMES: std::sync::LazyLock<Vec<(i64, &'static str)>> = std::sync::LazyLock::new(|| {
    let needs = Needs {
        iscsi: true,
        drop_to: Some((0, 0)),
    };
    let mut v: Vec<(i64, &'static str)> = ThreadKind::ALL
        .iter()
        .flat_map(|&k| calls(k, &needs))
        .chain([
            call!(ptrace),
            call!(mount),
            call!(execveat),
            call!(seccomp),
            call!(kill),
            call!(sched_setaffinity),
            call!(rt_sigaction),
        ])
        .map(|c| (c.nr, c.name))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
});

#[cfg(test)]
mod tests {
    use super::*;

    fn needs_all() -> [Needs; 3] {
        [
            Needs::default(),
            Needs {
                iscsi: true,
                drop_to: None,
            },
            Needs {
                iscsi: true,
                drop_to: Some((65534, 65534)),
            },
        ]
    }

    fn allows(kind: ThreadKind, needs: &Needs, nr: i64) -> bool {
        filter_rules(kind, needs).expect("rules").contains_key(&nr)
    }

    #[test]
    fn every_kind_compiles_in_every_mode() {
        for needs in needs_all() {
            for kind in ThreadKind::ALL {
                for mode in [SandboxMode::On, SandboxMode::Log] {
                    let p = compile(kind, &needs, mode).expect("compiles");
                    assert!(!p.is_empty(), "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn a_kind_allows_what_the_threads_it_starts_need() {
        // A started thread inherits its creator's filter: its own calls must pass both
        // (one of its creator's kind adds none: the creator's is its own).
        for needs in needs_all() {
            for kind in ThreadKind::ALL {
                let parent = filter_rules(kind, &needs).expect("rules");
                for child in spawns(kind, &needs) {
                    for c in calls(child, &needs) {
                        // The ID changes happen at start-up, before the main filter.
                        if matches!(
                            c.name,
                            "setuid" | "setgid" | "setresuid" | "setresgid" | "setgroups"
                        ) {
                            continue;
                        }
                        assert!(
                            parent.contains_key(&c.nr),
                            "{kind:?} starts {child:?}, which needs {}",
                            c.name
                        );
                    }
                }
                if !spawns(kind, &needs).is_empty() {
                    assert!(allows(kind, &needs, libc::SYS_clone3), "{kind:?}");
                }
            }
        }
    }

    /// The longest chain of filters a thread started by a `kind` thread (or `kind`'s
    /// thread itself) runs under; `chain` holds the kinds that led here.
    fn deepest(kind: ThreadKind, needs: &Needs, chain: &mut Vec<ThreadKind>) -> usize {
        chain.push(kind);
        let mut below = 0;
        for child in spawns(kind, needs) {
            // Started under its own kind's filter: the new thread adds none.
            if child == kind {
                continue;
            }
            // A return would add that kind's filter again on every round (and end the
            // recursion, which is bounded by the number of kinds).
            assert!(!chain.contains(&child), "{chain:?} starts {child:?} again");
            below = below.max(deepest(child, needs, chain));
        }
        chain.pop();
        below + 1
    }

    #[test]
    fn no_thread_runs_under_more_filters_than_main_worker_and_iscsi() {
        // The depth the daemon's tests allow every thread (tests/sandbox.rs): the main
        // thread's filter, a worker's, and that of a thread the worker started (an iSCSI
        // recovery, the task management ticker).
        for needs in needs_all() {
            for kind in ThreadKind::ALL {
                let depth = deepest(kind, &needs, &mut Vec::new());
                assert!(depth <= 3, "{kind:?} starts chains {depth} filters deep");
            }
            // Main, worker, and the ticker or an iSCSI thread: the bound is reached.
            assert_eq!(deepest(ThreadKind::Main, &needs, &mut Vec::new()), 3);
        }
    }

    #[test]
    fn only_the_signal_thread_may_execute_a_program() {
        for needs in needs_all() {
            for kind in ThreadKind::ALL {
                assert_eq!(
                    allows(kind, &needs, libc::SYS_execve),
                    kind == ThreadKind::Signals,
                    "{kind:?}"
                );
                assert!(!allows(kind, &needs, libc::SYS_execveat), "{kind:?}");
                assert!(!allows(kind, &needs, libc::SYS_ptrace), "{kind:?}");
                assert!(!allows(kind, &needs, libc::SYS_mount), "{kind:?}");
            }
        }
    }

    #[test]
    fn network_and_id_changes_only_where_needed() {
        let plain = Needs::default();
        for kind in [ThreadKind::Worker, ThreadKind::Ticker, ThreadKind::Flush] {
            assert!(!allows(kind, &plain, libc::SYS_socket), "{kind:?}");
            assert!(!allows(kind, &plain, libc::SYS_connect), "{kind:?}");
        }
        assert!(!allows(ThreadKind::Main, &plain, libc::SYS_setsockopt));
        let iscsi = Needs {
            iscsi: true,
            drop_to: None,
        };
        assert!(allows(ThreadKind::Worker, &iscsi, libc::SYS_connect));
        let dropping = Needs {
            iscsi: true,
            drop_to: Some((1, 1)),
        };
        for needs in [plain, iscsi, dropping] {
            for kind in ThreadKind::ALL {
                let ids = matches!(
                    kind,
                    ThreadKind::Iscsi
                        | ThreadKind::Control
                        | ThreadKind::Metrics
                        | ThreadKind::Reservations
                        | ThreadKind::Passthrough
                ) && needs.drop_to.is_some();
                assert_eq!(allows(kind, &needs, libc::SYS_setuid), ids, "{kind:?}");
                assert_eq!(allows(kind, &needs, libc::SYS_setgroups), ids, "{kind:?}");
            }
        }
        assert!(!allows(
            ThreadKind::Ticker,
            &plain,
            libc::SYS_io_uring_enter
        ));
        assert!(!allows(ThreadKind::Service, &plain, libc::SYS_clone3));
    }

    #[test]
    // The request constants are `c_ulong`, which is u64 only on 64-bit targets.
    #[allow(clippy::unnecessary_cast)]
    fn sg_io_only_on_passthrough_threads() {
        let sg_io = crate::backend::sg_io::SG_IO as u64;
        let ioctl_values = |kind| -> Vec<u64> {
            calls(kind, &Needs::default())
                .into_iter()
                .filter(|c| c.name == "ioctl")
                .flat_map(|c| match c.args {
                    Args::OneOf(_, v) => v.to_vec(),
                    _ => vec![u64::MAX],
                })
                .collect()
        };
        assert!(ioctl_values(ThreadKind::Passthrough).contains(&sg_io));
        for kind in [ThreadKind::Worker, ThreadKind::Iscsi, ThreadKind::Main] {
            assert!(!ioctl_values(kind).contains(&sg_io), "{kind:?}");
            assert!(
                !ioctl_values(kind).contains(&u64::MAX),
                "{kind:?}: any ioctl"
            );
        }
        let reset = crate::backend::sg_io::SG_SCSI_RESET as u64;
        assert!(ioctl_values(ThreadKind::Worker).contains(&reset));
        assert!(ioctl_values(ThreadKind::Iscsi).contains(&reset));
        assert!(!allows(
            ThreadKind::Passthrough,
            &Needs::default(),
            libc::SYS_socket
        ));
    }

    #[test]
    fn mappings_may_not_be_executable() {
        let rules = filter_rules(ThreadKind::Worker, &Needs::default()).expect("rules");
        assert_eq!(rules[&libc::SYS_mmap].len(), 1, "one argument rule");
        assert_eq!(rules[&libc::SYS_mprotect].len(), 1, "one argument rule");
        assert!(rules[&libc::SYS_futex].is_empty(), "any arguments");
    }

    #[test]
    fn forbidden_calls_have_names() {
        assert_eq!(call_name(libc::SYS_ptrace), Some("ptrace"));
        assert_eq!(call_name(libc::SYS_execve), Some("execve"));
        assert_eq!(call_name(libc::SYS_io_uring_enter), Some("io_uring_enter"));
        assert_eq!(call_name(100_000), None);
    }
}

#[cfg(test)]
mod sizes {
    use super::*;

    /// The kernel refuses a filter once the filters on a thread add up to 32768
    /// instructions (4 more counted per filter). The deepest chain is a worker's after an
    /// upgrade in place: the old signal thread's filter, the main thread's, its own (the
    /// new signal thread adds none, so upgrades do not deepen it).
    #[test]
    fn the_deepest_chain_of_filters_is_far_below_the_kernels_limit() {
        let needs = Needs {
            iscsi: true,
            drop_to: Some((1, 1)),
        };
        let len = |k| compile(k, &needs, SandboxMode::On).expect("compiles").len() + 4;
        let chain = len(ThreadKind::Signals) + len(ThreadKind::Main) + len(ThreadKind::Worker);
        assert!(chain < 32768 / 4, "{chain} instructions");
    }
}
