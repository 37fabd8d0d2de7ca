//! What a forbidden system call does: the filters answer SECCOMP_RET_TRAP, the kernel
//! sends SIGSYS to the calling thread, and this handler writes one line naming the thread
//! and the call (with one write(2), no allocation: it runs in a signal handler) and ends
//! the process with [`EXIT_STATUS`].

use std::sync::atomic::{AtomicBool, Ordering};

/// Exit status after a forbidden call: 128 + SIGSYS, as a shell reports a process that
/// SIGSYS killed.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// The line goes to the journal (stderr is its stream): prefixed `<3>` for priority err.
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Marks stderr as the journal's stream, so the line gets the error priority.
pub fn set_journal(on: bool) {
    JOURNAL.store(on, Ordering::Relaxed);
}

/// Installs the SIGSYS handler for the whole process.
pub(super) fn install() -> std::io::Result<()> {
    // The name table is built now: the handler must not allocate.
    let _ = super::filters::call_name(0);
    // SAFETY: an all-zero sigaction is valid; the fields that matter are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sigemptyset writes the mask of `action`, which lives across the call.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialised and its handler is async-signal-safe; the old
    // action is not asked for.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A fixed buffer the handler formats its line into.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The text of the line for a trapped call `nr` on thread `thread`.
fn describe(nr: i64, thread: &[u8], journal: bool) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    if journal {
        line.push(b"<3>");
    }
    line.push(b"vscsid: sandbox: thread '");
    line.push(thread);
    line.push(b"' made system call ");
    match super::filters::call_name(nr) {
        Some(name) => line.push(name.as_bytes()),
        None => line.push(b"number"),
    }
    line.push(b" (");
    line.push_number(nr.unsigned_abs());
    line.push(b"), which its filter does not allow: ending the daemon (--sandbox off runs without the filters)\n");
    line
}

/// The SIGSYS handler: one line, then the process ends.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // The SIGSYS fields follow si_signo, si_errno, si_code and padding: the call's
    // address (a pointer) at offset 16, the call number (an int) at 24.
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers, and a SIGSYS
    // from seccomp fills `_sigsys`; the read stays within the 128-byte structure.
    let nr = unsafe {
        info.cast::<u8>()
            .add(24)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into `name`.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let line = describe(i64::from(nr), &name[..end], JOURNAL.load(Ordering::Relaxed));
    // SAFETY: write(2) reads `line.len` bytes of the buffer; _exit(2) ends the process
    // without running anything else. Both are async-signal-safe and in every filter.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_STATUS);
    }
}

/// Ends the daemon after a failure to confine a thread (not in a signal handler).
pub(super) fn fatal(message: &str) -> ! {
    tracing::error!("{message}");
    if !tracing::enabled!(tracing::Level::ERROR) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "vscsid: {message}");
    }
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_thread_and_call() {
        let l = describe(libc::SYS_ptrace, b"vscsid-q0", false);
        let text = std::str::from_utf8(&l.buf[..l.len]).expect("utf-8");
        assert!(
            text.starts_with("vscsid: sandbox: thread 'vscsid-q0' made system call ptrace ("),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        let l = describe(100_000, b"signals", true);
        let text = std::str::from_utf8(&l.buf[..l.len]).expect("utf-8");
        assert!(text
            .starts_with("<3>vscsid: sandbox: thread 'signals' made system call number (100000)"));
    }
}
