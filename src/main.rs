//! `vscsid`: command line, configuration, signals, and the serving loop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

use vscsid::config::{parse_config_file, parse_disk_spec, Config, SocketAccess};
use vscsid::control::ControlServer;
use vscsid::lun::{
    build_lun_table, expand_all_luns, iscsi_options, open_options, status_lines, LiveLuns,
};
use vscsid::sandbox::{self, SandboxMode, ThreadKind};
use vscsid::service::{init_logging, status_text, LogDestination, Service, StatusLine};
use vscsid::vhost::{serve, CurrentDevice, SocketHandover, SocketRemover, VhostSocket};

/// vhost-user-scsi daemon: serves a QEMU guest's virtio-scsi controller from a UNIX socket.
#[derive(Parser, Debug)]
#[command(name = "vscsid", version)]
struct Cli {
    /// Path of the vhost-user UNIX socket to listen on (created with mode 0600 unless
    /// --socket-mode says otherwise).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Owner of the socket (user name or ID) [default: the daemon's user].
    #[arg(long, value_name = "USER")]
    socket_owner: Option<String>,
    /// Group of the socket (group name or ID) [default: the daemon's group].
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Permission bits of the socket, octal [default: 0600]. A QEMU running as another
    /// user connects when these let it write: 0660 with --socket-group for its group.
    #[arg(long, value_name = "MODE")]
    socket_mode: Option<String>,
    /// Name of the VM, for the logs (the journal's VM= field) [default: the socket file's
    /// name without extension].
    #[arg(long, value_name = "NAME")]
    vm_name: Option<String>,
    /// A disk LUN: <path>[,readonly][,cache=<mode>][,block-size=<512|4096>]
    /// [,physical-block-size=<n>][,discard=unmap|ignore][,serial=<s>][,wwn=<naa>]. Each
    /// --disk becomes the next LUN of target 0. <path>,passthrough[,readonly]
    /// [,cache=none|directsync] passes a SCSI disk's block device through (QEMU's
    /// scsi-block).
    #[arg(long, value_name = "SPEC")]
    disk: Vec<String>,
    /// An iSCSI LUN passed through to the guest:
    /// iscsi://[user[%password]@]host[:port]/<target-iqn>/<lun>[,readonly][,path=<host:port>]
    /// [,<option>=<value>]... (path options as in the TOML file; readonly refuses writes
    /// with DATA PROTECT and shows the disk write-protected). Each --iscsi becomes the
    /// next LUN of target 0, like --disk. A user without password takes the CHAP secret
    /// from the VSCSID_CHAP_SECRET environment variable.
    #[arg(long, value_name = "URL")]
    iscsi: Vec<String>,
    /// A SCSI generic device passed through to the guest (QEMU's scsi-generic):
    /// /dev/sgN[,readonly]. Every CDB goes to the device. Numbered with --disk LUNs.
    /// A disk's block device passes through with --disk /dev/sdX,passthrough instead.
    #[arg(long, value_name = "SPEC")]
    sg: Vec<String>,
    /// A null LUN of <size> bytes (K/M/G/T suffixes): reads return zeroes, writes are
    /// dropped. <size>[,block-size=<512|4096>]. Numbered with --disk and --iscsi LUNs.
    #[arg(long, value_name = "SIZE")]
    null: Vec<String>,
    /// iSCSI initiator name [default: iqn.2024-01.io.vscsid:<hostname>].
    #[arg(long, value_name = "IQN")]
    initiator_name: Option<String>,
    /// This daemon's name as the initiator of its LUNs: the I_T nexus persistent
    /// reservations belong to [default: iqn.2026-12.io.vscsid:<VM name or socket path>].
    #[arg(long, value_name = "NAME")]
    initiator_id: Option<String>,
    /// Directory for reservation state: shared disks need it, and a disk's APTPL
    /// reservations survive restarts in it [default: $STATE_DIRECTORY under systemd].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Request queues offered (QEMU's num_queues must not exceed it) [default: 1022, every
    /// queue a guest can have].
    #[arg(long, value_name = "N")]
    num_queues: Option<u16>,
    /// Worker threads serving the request queues [default: one per CPU, at most one per
    /// request queue].
    #[arg(long, value_name = "N")]
    threads: Option<u16>,
    /// Largest virtqueue size accepted [default: 1024].
    #[arg(long, value_name = "N")]
    queue_size: Option<u16>,
    /// TOML configuration file ([daemon] and [[lun]] tables).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep listening for a new connection after the frontend disconnects.
    #[arg(long)]
    reconnect: bool,
    /// Busy-poll the queues and completions after work before sleeping: "adaptive" (the
    /// default: only while recent polling found work, at most 50 µs after the last work),
    /// 0 (never) or a fixed number of microseconds (at most 1000000).
    #[arg(long, value_name = "US|adaptive")]
    poll_us: Option<String>,
    /// I/Os gathered before each io_uring submission (default 4; 1: every I/O starts at
    /// once; at most 1024; what is left goes at the end of each pass over a virtqueue).
    /// Larger batches save system calls and disk doorbells at some latency.
    #[arg(long, value_name = "N")]
    submit_batch: Option<i64>,
    /// The destination of a live migration: open the images without their locks and take
    /// them when QEMU starts the device (after the source let go).
    #[arg(long)]
    incoming: bool,
    /// How long stopping a queue waits for its commands, in milliseconds [default: 10000;
    /// at most 60000]. QEMU waits as long; see README "Lifecycle".
    #[arg(long, value_name = "MS")]
    stop_timeout_ms: Option<i64>,
    /// System call filters, one per kind of thread: on (a call outside them ends the
    /// daemon with a log line), off (for debugging), or log (calls outside them are
    /// allowed and recorded in the kernel log) [default: on].
    #[arg(long, value_name = "on|off|log")]
    sandbox: Option<String>,
    /// Continue as this user (and group: default the user's own) once the LUNs are open,
    /// the socket listens and the iSCSI logins are done. Needs root.
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Control socket for `vscsid ctl` (add, remove, resize LUNs, list them) [default:
    /// none]. Created 0600; only the daemon's user and root may use it, and members of
    /// --control-group when it is given (with --control-mode 0660).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Group of the control socket, whose members may manage the daemon.
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// Permission bits of the control socket, octal [default: 0600].
    #[arg(long, value_name = "MODE")]
    control_mode: Option<String>,
    /// Serve the LUN statistics in the Prometheus text format over HTTP (GET /metrics) at
    /// <port> (on 127.0.0.1) or <address>:<port> [default: none]. Only an address given
    /// explicitly leaves the loopback interface.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
}

/// Positions of the --disk, --iscsi, --null and --sg values on the command line.
#[derive(Default)]
struct LunOrder {
    disk: Vec<usize>,
    iscsi: Vec<usize>,
    null: Vec<usize>,
    sg: Vec<usize>,
}

/// Which shorthand a LUN on the command line came from.
#[derive(Clone, Copy)]
enum Shorthand {
    Disk,
    Iscsi,
    Null,
    Sg,
}

fn build_config(cli: Cli, order: LunOrder) -> Result<Config, String> {
    let mut cfg = match &cli.config {
        Some(path) => parse_config_file(path).map_err(|e| e.0)?,
        None => Config::default(),
    };
    if let Some(s) = cli.socket {
        cfg.socket = Some(s);
    }
    if let Some(owner) = &cli.socket_owner {
        cfg.socket_access.owner =
            Some(vscsid::config::check_account_name(owner, "--socket-owner").map_err(|e| e.0)?);
    }
    if let Some(group) = &cli.socket_group {
        cfg.socket_access.group =
            Some(vscsid::config::check_account_name(group, "--socket-group").map_err(|e| e.0)?);
    }
    if let Some(mode) = &cli.socket_mode {
        cfg.socket_access.mode =
            vscsid::config::parse_socket_mode(mode, "--socket-mode").map_err(|e| e.0)?;
    }
    if let Some(name) = cli.vm_name {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err("--vm-name: empty or holds control characters".into());
        }
        cfg.vm_name = Some(name);
    }
    if let Some(n) = cli.num_queues {
        cfg.num_queues = n;
    }
    if cli.threads.is_some() {
        cfg.threads = cli.threads;
    }
    if let Some(n) = cli.queue_size {
        cfg.queue_size = n;
    }
    cfg.reconnect |= cli.reconnect;
    if let Some(text) = &cli.poll_us {
        cfg.poll_us = vscsid::config::parse_poll(text, "--poll-us").map_err(|e| e.0)?;
    }
    if let Some(n) = cli.submit_batch {
        cfg.submit_batch =
            vscsid::config::check_submit_batch(n, "--submit-batch").map_err(|e| e.0)?;
    }
    cfg.incoming |= cli.incoming;
    if let Some(n) = cli.stop_timeout_ms {
        cfg.stop_timeout_ms =
            vscsid::config::check_stop_timeout_ms(n, "--stop-timeout-ms").map_err(|e| e.0)?;
    }
    // --disk, --iscsi, --null and --sg LUNs are numbered in command-line order.
    let mut specs: Vec<(usize, Shorthand, &String)> = Vec::new();
    for (positions, values, kind) in [
        (&order.disk, &cli.disk, Shorthand::Disk),
        (&order.iscsi, &cli.iscsi, Shorthand::Iscsi),
        (&order.null, &cli.null, Shorthand::Null),
        (&order.sg, &cli.sg, Shorthand::Sg),
    ] {
        specs.extend(
            positions
                .iter()
                .copied()
                .zip(values)
                .map(|(i, s)| (i, kind, s)),
        );
    }
    specs.sort_by_key(|&(i, _, _)| i);
    for (_, kind, spec) in specs {
        match kind {
            Shorthand::Disk => {
                let lun = parse_disk_spec(spec, cfg.next_lun_of_target0()).map_err(|e| e.0)?;
                cfg.add_lun(lun, &format!("--disk '{spec}'"))
                    .map_err(|e| e.0)?;
            }
            Shorthand::Iscsi => cfg.add_iscsi(spec).map_err(|e| e.0)?,
            Shorthand::Null => cfg.add_null(spec).map_err(|e| e.0)?,
            Shorthand::Sg => cfg.add_sg(spec).map_err(|e| e.0)?,
        }
    }
    if cli.initiator_name.is_some() {
        cfg.initiator_name = cli.initiator_name;
    }
    if let Some(id) = &cli.initiator_id {
        cfg.initiator_id =
            Some(vscsid::config::check_initiator_id(id, "--initiator-id").map_err(|e| e.0)?);
    }
    if let Some(dir) = cli.state_dir {
        cfg.state_dir = Some(dir);
    }
    if cfg.state_dir.is_none() {
        // systemd's StateDirectory= (the unit sets it): the first of its directories.
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
            let first = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            if !first.is_empty() {
                cfg.state_dir = Some(PathBuf::from(first));
            }
        }
    }
    if let Some(mode) = &cli.sandbox {
        cfg.sandbox = vscsid::config::parse_sandbox(mode, "--sandbox").map_err(|e| e.0)?;
    }
    if let Some(user) = &cli.user {
        cfg.user = Some(vscsid::config::check_user_spec(user, "--user").map_err(|e| e.0)?);
    }
    if cli.control.is_some() {
        cfg.control = cli.control;
    }
    if let Some(group) = &cli.control_group {
        cfg.control_access.group =
            Some(vscsid::config::check_account_name(group, "--control-group").map_err(|e| e.0)?);
    }
    if let Some(mode) = &cli.control_mode {
        cfg.control_access.mode =
            vscsid::config::parse_socket_mode(mode, "--control-mode").map_err(|e| e.0)?;
    }
    if let Some(m) = &cli.metrics {
        cfg.metrics = Some(vscsid::config::parse_metrics_addr(m, "--metrics").map_err(|e| e.0)?);
    }
    cfg.validate().map_err(|e| e.0)?;
    Ok(cfg)
}

/// The command line of this process, parsed (again, at a configuration reload).
fn parse_args() -> Result<(Cli, LunOrder), clap::Error> {
    let m = Cli::command().try_get_matches()?;
    let cli = Cli::from_arg_matches(&m)?;
    let idx = |id: &str| m.indices_of(id).map(|i| i.collect()).unwrap_or_default();
    let order = LunOrder {
        disk: idx("disk"),
        iscsi: idx("iscsi"),
        null: idx("null"),
        sg: idx("sg"),
    };
    Ok((cli, order))
}

/// SIGHUP: the command line and the configuration file are read again and the
/// difference in LUNs applied ([`vscsid::control::reload`]).
fn reload_config(luns: &LiveLuns, running: &std::sync::Mutex<Config>, service: &Service) {
    service.reloading();
    let new = parse_args()
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
        .and_then(|(cli, order)| build_config(cli, order));
    // Every LUN of a target ('*'): the target's list now, so LUNs it added come in and
    // LUNs it dropped go.
    let new = new.and_then(|mut new| {
        let (expanded, discovery) = expand_all_luns(&new.luns, &luns.open_options().iscsi)?;
        new.luns = expanded;
        Ok((new, discovery))
    });
    match new {
        Ok((new, discovery)) => {
            let mut old = running.lock().unwrap_or_else(|p| p.into_inner());
            let report = vscsid::control::reload::apply(luns, &old, &new);
            drop(discovery);
            // The LUNs now are the new ones (those that failed are logged); the daemon's
            // other settings stay as they run.
            old.luns = new.luns;
            service.reloaded(&report.summary());
        }
        Err(e) => {
            tracing::error!("reload: the configuration is not valid, nothing changed: {e}");
            service.reloaded("reload failed: nothing changed");
        }
    }
}

fn main() -> ExitCode {
    // `vscsid ctl ...`: the control socket's client.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "ctl") {
        return vscsid::control::client::run(std::env::args_os().skip(1));
    }
    let (cli, order) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            report(first.trim_start_matches("error: ").trim());
            return ExitCode::from(2);
        }
    };
    let mut cfg = match build_config(cli, order) {
        Ok(mut c) => {
            if let Some(old) = std::env::var_os(UPGRADED_ENV) {
                std::env::remove_var(UPGRADED_ENV);
                tracing::info!(
                    previous = %old.to_string_lossy(),
                    "upgraded in place: image locks are taken when the device starts"
                );
                c.incoming = true;
            }
            c
        }
        Err(e) => {
            report(&format!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &cfg.state_dir {
        // At start-up only, before any filter (a reload reads the configuration again
        // on the signal thread, whose filter leaves mkdir out): LUNs added later open
        // their state files in it.
        if let Err(e) = std::fs::create_dir_all(dir) {
            report(&format!(
                "error: --state-dir {}: cannot create it: {e}",
                dir.display()
            ));
            return ExitCode::from(2);
        }
    }
    let vm_name = cfg.vm_name.clone().unwrap_or_else(|| {
        cfg.socket
            .as_deref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let logs = init_logging(&vm_name);
    // From here on a fatal error is an error entry in the journal (priority 3) when the
    // logs go there, one plain line on stderr otherwise.
    let fail = |line: &str| match logs {
        LogDestination::Journal => tracing::error!("{line}"),
        LogDestination::Stderr => report(&format!("error: {line}")),
    };
    let service = Service::from_environment();
    // The user to continue as is looked up before anything is opened: an unknown one, or
    // another user when not root, is a configuration error.
    let user = match &cfg.user {
        Some(u) => match sandbox::resolve_user(&u.spec, u.field) {
            Ok(t) => Some(t),
            Err(e) => {
                fail(&e);
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    // Signals are caught from here on (and handled once the LUNs are open): the socket
    // appears before the LUNs are ready, and a SIGUSR1 or SIGTERM sent as soon as it
    // exists must not find the default action.
    // The program file as started: an upgrade executes whatever is at this path then.
    let exe = std::env::current_exe().ok();
    let signals =
        match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                fail(&format!("cannot install signal handlers: {e}"));
                return ExitCode::FAILURE;
            }
        };
    // The filters are compiled before the first thread starts (iSCSI logins start some),
    // after the signals are caught (compiling them takes a moment).
    sandbox::set_journal(logs == LogDestination::Journal);
    let needs = sandbox::Needs {
        // A reload (SIGHUP) or `vscsid ctl add` may bring an iSCSI LUN in later.
        iscsi: true,
        drop_to: user.as_ref().map(|u| (u.uid, u.gid)),
    };
    // Executed by an upgrade in place from a confined program: every thread already runs
    // under that program's signal thread filter.
    let inherited = std::env::var_os(sandbox::INHERITED_ENV).is_some_and(|v| v == "1");
    std::env::remove_var(sandbox::INHERITED_ENV);
    if let Err(e) = sandbox::prepare(cfg.sandbox, needs, inherited) {
        fail(&e);
        return ExitCode::FAILURE;
    }
    // The socket first: a path that cannot be ours fails before any LUN is opened. A
    // previous vscsid (upgrade in place) or systemd may have passed it already bound.
    let open_socket = |p: &std::path::Path| {
        VhostSocket::inherited(p).unwrap_or_else(|| VhostSocket::bind(p, &cfg.socket_access))
    };
    let socket = match cfg.socket.as_deref().map(open_socket) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            fail(&e);
            return ExitCode::from(2);
        }
        None => {
            fail("socket: no socket path given");
            return ExitCode::from(2);
        }
    };
    if socket.passed_by_systemd() && cfg.socket_access != SocketAccess::default() {
        tracing::info!("socket owner, group and mode come from the .socket unit (SocketUser=, SocketGroup=, SocketMode=), not from the configuration");
    }
    // Every LUN of a target ('*'): listed over the sessions they then share.
    let discovery = match expand_all_luns(&cfg.luns, &iscsi_options(&cfg)) {
        Ok((expanded, discovery)) => {
            cfg.luns = expanded;
            discovery
        }
        Err(e) => {
            fail(&e);
            return ExitCode::from(2);
        }
    };
    let luns = match build_lun_table(&cfg) {
        Ok(t) => {
            let live = LiveLuns::new(t, open_options(&cfg), !cfg.incoming);
            live.remember(&cfg.luns);
            live.ring_on_changes(service.status_bell());
            live
        }
        Err(e) => {
            fail(&e);
            return ExitCode::from(2);
        }
    };
    drop(discovery);
    for (t, l, lun) in luns.snapshot().luns() {
        tracing::info!(
            target_id = t,
            lun = l,
            "LUN ready: {}",
            lun.device().describe()
        );
    }
    let current = CurrentDevice::ringing(service.status_bell());
    let remover = socket.remover();
    let upgrade = exe.map(|exe| Upgrade {
        exe,
        socket: socket.handover(),
    });
    let control = match cfg
        .control
        .as_deref()
        .map(|p| ControlServer::start(p, &cfg.control_access, luns.clone(), vm_name.clone()))
    {
        None => None,
        Some(Ok(c)) => Some(c.remover().clone()),
        Some(Err(e)) => {
            fail(&e);
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = cfg.metrics {
        if let Err(e) = vscsid::control::http::start(addr, luns.clone(), vm_name.clone()) {
            fail(&e);
            return ExitCode::from(2);
        }
    }
    // Everything that needs privileges is open: the LUNs, the sockets, the iSCSI sessions.
    if let Some(u) = &user {
        if let Err(e) = sandbox::drop_privileges(u) {
            fail(&e);
            return ExitCode::FAILURE;
        }
        tracing::info!(uid = u.uid, gid = u.gid, "continuing as user {}", u.name);
    }
    let shutdown = Shutdown {
        luns: luns.clone(),
        service: service.clone(),
        control,
        running: Arc::new(std::sync::Mutex::new(cfg.clone())),
    };
    if let Err(e) = handle_signals(signals, current.clone(), shutdown.clone(), remover, upgrade) {
        fail(&format!("cannot start the signal thread: {e}"));
        return ExitCode::FAILURE;
    }
    // Every LUN is open (every iSCSI LUN logged in) and the socket listens.
    let status = {
        let (luns, current) = (luns.clone(), current.clone());
        move || {
            let table = luns.snapshot();
            let down = table.luns().map(|(_, _, l)| l.device().paths_down()).sum();
            let unannounced_changes = table.luns().any(|(_, _, l)| l.device().has_paths());
            StatusLine {
                text: status_text(table.luns().count(), current.is_connected(), down),
                unannounced_changes,
            }
        }
    };
    service.ready(&status().text);
    if let Err(e) = service.start_monitor(status) {
        fail(&format!("cannot start the service thread: {e}"));
        return ExitCode::FAILURE;
    }
    if let Some(w) = service.watchdog() {
        tracing::info!("watchdog: {w:?}, fed while every worker thread makes progress");
    }
    // Everything is open and bound, and the signal and service threads have their own
    // filters: the main thread's comes now, and the workers it starts inherit it.
    sandbox::enter(ThreadKind::Main);
    match cfg.sandbox {
        SandboxMode::On => tracing::info!("system call filters installed for every thread"),
        SandboxMode::Log => tracing::warn!(
            "system call filters only log (--sandbox log): calls outside them are allowed"
        ),
        SandboxMode::Off => tracing::info!("no system call filters (--sandbox off)"),
    }
    match serve(&cfg, luns, socket, &current, service.heartbeats()) {
        Ok(()) => {
            // The frontend left and no other is awaited.
            service.stopping("stopping: the frontend disconnected");
            shutdown.end_sessions(Instant::now() + LOGOUT_WAIT);
            ExitCode::SUCCESS
        }
        Err(e) => {
            fail(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints one line to stderr, prefixed with the program's name; a stderr that cannot be
/// written to (a closed pipe) loses the line rather than panicking.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "vscsid: {line}");
}

/// How long the iSCSI LUNs' logouts may take in all at the end.
const LOGOUT_WAIT: Duration = Duration::from_secs(3);

/// What ending the daemon needs besides the device: its LUNs and its service manager.
#[derive(Clone)]
struct Shutdown {
    luns: Arc<LiveLuns>,
    service: Arc<Service>,
    /// The control socket, removed at the end.
    control: Option<SocketRemover>,
    /// The configuration as it runs (a reload compares against it).
    running: Arc<std::sync::Mutex<Config>>,
}

impl Shutdown {
    /// Ends every LUN's sessions with remote devices (iSCSI logouts) by `deadline`.
    fn end_sessions(&self, deadline: Instant) {
        for (t, l, lun) in self.luns.snapshot().luns() {
            let _span = tracing::info_span!("lun", target_id = t, lun = l).entered();
            lun.device()
                .shut_down(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

/// How long the whole shutdown may take: below the shipped unit's TimeoutStopSec (45 s), so
/// systemd never has to kill a daemon that is still flushing.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(40);

/// How long an upgrade waits for in-flight commands before it hands over: what is still
/// running then is served again by the new program (the frontend's in-flight region).
const UPGRADE_DRAIN: Duration = Duration::from_secs(5);

/// Set for the program an upgrade executes: it opens its images without their locks and
/// takes them when the device starts, because the old program's files may stay open a
/// moment longer (block I/O still in the kernel holds them).
const UPGRADED_ENV: &str = "VSCSID_UPGRADED_FROM";

/// What an upgrade in place needs: the program to execute and the socket to hand over.
struct Upgrade {
    exe: std::path::PathBuf,
    socket: SocketHandover,
}

impl Upgrade {
    /// SIGUSR2: stop taking requests, let in-flight commands complete (bounded), and
    /// execute the program now at `exe` (the new version) with the same arguments and the
    /// listening socket. The frontend's connection closes with this program; QEMU 8.2+
    /// reconnects (chardev `reconnect`), the new program serves what was left in flight
    /// first. Returns only if the new program cannot be executed; the daemon then goes on.
    fn run(&self, current: &CurrentDevice) {
        use std::os::unix::process::CommandExt;
        let exe = &self.exe;
        let runnable = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
            .ok()
            // SAFETY: access(2) reads the NUL-terminated path and nothing else.
            .is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0);
        if !runnable {
            tracing::error!(program = %exe.display(), "upgrade refused: the program cannot be executed");
            return;
        }
        tracing::info!(program = %exe.display(), "upgrade: draining, then handing over the socket");
        if !current.drain_within(UPGRADE_DRAIN) {
            tracing::warn!("upgrade: commands still running; the new program serves them again");
        }
        let mut cmd = std::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1))
            .env(UPGRADED_ENV, std::process::id().to_string());
        if sandbox::active() {
            // This thread's filter goes with the new program: it need not add another.
            cmd.env(sandbox::INHERITED_ENV, "1");
        } else {
            cmd.env_remove(sandbox::INHERITED_ENV);
        }
        self.socket.prepare(&mut cmd);
        // A program still being written (ETXTBSY: the installer, or a process that forked
        // while it had the file open for writing) is tried again for a moment.
        let mut err = cmd.exec();
        for _ in 0..40 {
            if err.kind() != std::io::ErrorKind::ExecutableFileBusy {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            err = cmd.exec();
        }
        tracing::error!(program = %exe.display(), "upgrade failed, serving on: {err}");
        current.resume();
    }
}

/// SIGTERM/SIGINT: stop taking requests, let in-flight commands complete, make completed
/// writes durable, remove the socket, and exit, all within [`SHUTDOWN_BUDGET`]: a stuck
/// medium cannot hold the exit (what could not be flushed in time is logged, and the exit
/// status says so). SIGUSR1: log every LUN's state (for iSCSI LUNs, each path's state and
/// counters). SIGUSR2: upgrade in place ([`Upgrade::run`]).
fn handle_signals(
    mut signals: signal_hook::iterator::Signals,
    current: CurrentDevice,
    shutdown: Shutdown,
    socket: SocketRemover,
    upgrade: Option<Upgrade>,
) -> std::io::Result<()> {
    let luns = shutdown.luns.clone();
    sandbox::spawn(ThreadKind::Signals, "signals", move || {
        for sig in signals.forever() {
            if sig == SIGUSR1 {
                for line in status_lines(&luns.snapshot()) {
                    tracing::info!("status: {line}");
                }
                continue;
            }
            if sig == SIGHUP {
                reload_config(&shutdown.luns, &shutdown.running, &shutdown.service);
                continue;
            }
            if sig == SIGUSR2 {
                match &upgrade {
                    Some(u) => u.run(&current),
                    None => tracing::error!("upgrade refused: the program's path is unknown"),
                }
                continue;
            }
            tracing::info!(signal = sig, "shutting down: draining in-flight I/O");
            shutdown
                .service
                .stopping("stopping: draining in-flight I/O");
            let deadline = Instant::now() + SHUTDOWN_BUDGET;
            let mut clean = current.drain();
            if !clean {
                tracing::error!("in-flight I/O did not complete in time");
            }
            // Flushing can block on a stuck medium: it runs on its own thread, waited
            // for only until the deadline.
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let flushing = luns.clone();
            let spawned = sandbox::spawn(ThreadKind::Flush, "shutdown-flush", move || {
                for (_, _, lun) in flushing.snapshot().luns() {
                    lun.device().make_durable();
                }
                let _ = done_tx.send(());
            });
            let left = deadline.saturating_duration_since(Instant::now());
            if spawned.is_err() || done_rx.recv_timeout(left).is_err() {
                tracing::error!("completed writes could not be made durable in time");
                clean = false;
            }
            // Nothing is in flight any more: the iSCSI sessions log out.
            shutdown.end_sessions(deadline.min(Instant::now() + LOGOUT_WAIT));
            socket.remove();
            if let Some(c) = &shutdown.control {
                c.remove();
            }
            std::process::exit(if clean { 0 } else { 1 });
        }
    })?;
    Ok(())
}
