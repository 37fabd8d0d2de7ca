//! `--user NAME[:GROUP]`: the unprivileged user the daemon continues as once its LUNs and
//! socket are open. Resolved (and refused) at start-up; dropped with glibc's setgroups,
//! setgid and setuid, which change the IDs of every thread of the process.

use std::ffi::CString;

/// The user (and group) to continue as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks up `NAME[:GROUP]` (names or numeric IDs; the group defaults to the user's own).
/// Refused: an unknown user or group, and another user when not running as root. `field`
/// names the option in the error.
pub fn resolve_user(spec: &str, field: &str) -> Result<TargetUser, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let bad = |what: &str, name: &str| format!("{field}: no {what} '{name}'");
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(format!("{field}: '{spec}' is not USER or USER:GROUP"));
    }
    let (name, uid, user_gid) = match passwd(user) {
        Some(p) => p,
        None => match user.parse::<u32>() {
            Ok(id) => (user.to_string(), id, None),
            Err(_) => return Err(bad("user", user)),
        },
    };
    let gid = match group {
        Some(g) => match group_id(g).or_else(|| g.parse().ok()) {
            Some(id) => id,
            None => return Err(bad("group", g)),
        },
        None => user_gid.ok_or_else(|| {
            format!("{field}: user ID {uid} has no account, so no group: write USER:GROUP")
        })?,
    };
    // SAFETY: geteuid and getegid only read the process's IDs.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 && (euid != uid || egid != gid) {
        return Err(format!(
            "{field}: only root can continue as another user ({spec}: uid {uid} gid {gid}; running as uid {euid} gid {egid})"
        ));
    }
    Ok(TargetUser { name, uid, gid })
}

/// The account's name, ID and primary group (the socket options resolve names here too).
pub(crate) fn passwd(name: &str) -> Option<(String, u32, Option<u32>)> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to overwrite.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r reads the NUL-terminated name and writes only into `pwd`, `buf`
    // (at most `buf.len()` bytes) and `found`, all of which outlive the call.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then(|| (name.to_string(), pwd.pw_uid, Some(pwd.pw_gid)))
}

/// A group's ID by name.
pub(crate) fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: an all-zero group is a valid value for getgrnam_r to overwrite.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r reads the NUL-terminated name and writes only into `grp`, `buf`
    // (at most `buf.len()` bytes) and `found`, all of which outlive the call.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(grp.gr_gid)
}

/// Continues as `user`: supplementary groups are exactly its group (so a group it is a
/// member of does not bring in more), then the group, then the user. Nothing happens
/// when the process already runs as them (an upgrade in place of a daemon that dropped
/// privileges executes the new program as that user).
pub fn drop_privileges(user: &TargetUser) -> Result<(), String> {
    // SAFETY: these only read the process's IDs.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == user.uid && egid == user.gid {
        return Ok(());
    }
    let fail = |what: &str| {
        format!(
            "--user {}: {what}: {}",
            user.name,
            std::io::Error::last_os_error()
        )
    };
    let groups = [user.gid];
    // SAFETY: setgroups reads one gid from `groups`; glibc applies it to every thread.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(fail("setgroups"));
    }
    // SAFETY: setgid and setuid take plain IDs; glibc applies them to every thread.
    if unsafe { libc::setgid(user.gid) } != 0 {
        return Err(fail("setgid"));
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(user.uid) } != 0 {
        return Err(fail("setuid"));
    }
    // SAFETY: these only read the process's IDs.
    let (ruid, euid, rgid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if (ruid, euid, rgid, egid) != (user.uid, user.uid, user.gid, user.gid) {
        return Err(format!(
            "--user {}: IDs are uid {ruid}/{euid} gid {rgid}/{egid} after the change",
            user.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_users_and_groups_are_named() {
        let e = resolve_user("no-such-user-vscsid", "--user").expect_err("unknown");
        assert_eq!(e, "--user: no user 'no-such-user-vscsid'");
        let e = resolve_user("root:no-such-group-vscsid", "daemon.user").expect_err("group");
        assert_eq!(e, "daemon.user: no group 'no-such-group-vscsid'");
        assert!(resolve_user("", "--user").is_err());
        assert!(resolve_user("root:", "--user").is_err());
    }

    #[test]
    fn root_resolves_to_zero() {
        // SAFETY: geteuid only reads the process's ID.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let u = resolve_user("root", "--user").expect("root");
        assert_eq!((u.uid, u.gid), (0, 0));
    }
}
