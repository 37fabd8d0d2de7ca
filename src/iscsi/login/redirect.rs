//! Connecting a path and logging in, following the target's login redirects (RFC 7143
//! 11.13.5, status class 1): the address a redirect names is tried next, up to
//! [`MAX_REDIRECTS`] hops and never an address twice. A temporary redirect is followed
//! again from the path's own address on every login; a permanent one replaces that address
//! for the path's later logins. A target that refuses a SHA-256 CHAP response is asked
//! once more without SHA-256 (see [`LoginError::Sha256Refused`]), and the path remembers.

use std::borrow::Cow;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{connect, login, LoginError, Negotiated};
use crate::iscsi::chap::ChapAlgorithm;
use crate::iscsi::options::IscsiOptions;

/// Redirects one login follows before it gives up.
pub const MAX_REDIRECTS: usize = 8;

/// The portal of a `TargetAddress` value (`host:port,tpgt`, `[v6]:port,tpgt`, the port and
/// the tag optional): `host:port` or `[v6]:port`, ready to connect to.
pub fn target_address_portal(value: &str) -> Result<String, String> {
    let addr = value.split(',').next().unwrap_or_default().trim();
    let (host, port) = crate::iscsi::multipath::split_portal(addr)
        .map_err(|e| format!("TargetAddress '{value}': {e}"))?;
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Where one path logs in, and what its earlier logins learnt.
#[derive(Debug)]
pub struct PathLogin {
    /// The configured portal.
    configured: String,
    /// Where a permanent redirect moved the path.
    moved_to: Mutex<Option<String>>,
    /// The target refused a SHA-256 response on this path: no longer offered.
    without_sha256: AtomicBool,
}

impl PathLogin {
    pub fn new(portal: &str) -> PathLogin {
        PathLogin {
            configured: portal.to_string(),
            moved_to: Mutex::new(None),
            without_sha256: AtomicBool::new(false),
        }
    }

    /// The address the next login starts from: the configured portal, or where a permanent
    /// redirect moved the path.
    pub fn address(&self) -> String {
        self.moved_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.configured.clone())
    }

    fn move_to(&self, address: &str) {
        let mut moved = self.moved_to.lock().unwrap_or_else(|p| p.into_inner());
        if moved.as_deref() != Some(address) {
            tracing::info!(
                "iSCSI portal {}: the target moved the path permanently to {address}",
                self.configured
            );
            *moved = Some(address.to_string());
        }
    }

    /// Connects and logs in (a discovery session when `target` is None), following
    /// redirects. Errors name the portal; a redirect loop or too many hops name the chain.
    pub fn establish(
        &self,
        opts: &IscsiOptions,
        target: Option<&str>,
        isid: [u8; 6],
    ) -> Result<(TcpStream, Negotiated), LoginError> {
        let mut opts = Cow::Borrowed(opts);
        if self.without_sha256.load(Ordering::Relaxed) {
            opts = Cow::Owned(without_sha256(&opts));
        }
        // One pass per redirect, and one more start for the retry without SHA-256.
        let mut chain = vec![self.address()];
        let mut retried = false;
        for _ in 0..(MAX_REDIRECTS + 2) * 2 {
            let portal = chain.last().cloned().unwrap_or_default();
            let mut stream = connect(&portal, &opts)?;
            let err = match login(&mut stream, &opts, target, isid) {
                Ok(n) => return Ok((stream, n)),
                Err(e) => e.at(&portal, opts.login_timeout),
            };
            match err {
                LoginError::Redirected { address, permanent } => {
                    if chain.contains(&address) {
                        chain.push(address);
                        return Err(LoginError::Protocol(format!(
                            "login redirect loop: {}",
                            chain.join(" -> ")
                        )));
                    }
                    if chain.len() > MAX_REDIRECTS {
                        chain.push(address);
                        return Err(LoginError::Protocol(format!(
                            "more than {MAX_REDIRECTS} login redirects: {}",
                            chain.join(" -> ")
                        )));
                    }
                    if permanent {
                        self.move_to(&address);
                    } else {
                        tracing::debug!("iSCSI portal {portal}: login redirected to {address}");
                    }
                    chain.push(address);
                }
                LoginError::Sha256Refused(e) => {
                    let fallback = without_sha256(&opts);
                    if retried || fallback.chap_algorithms.is_empty() {
                        return Err(LoginError::Sha256Refused(e));
                    }
                    tracing::warn!(
                        "iSCSI portal {portal}: the target refused a SHA-256 CHAP response ({e}); it may take CHAP_A=7 for SHA-1 (tgt does): logging in again without sha256"
                    );
                    self.without_sha256.store(true, Ordering::Relaxed);
                    retried = true;
                    opts = Cow::Owned(fallback);
                    chain = vec![self.address()];
                }
                e => return Err(e),
            }
        }
        Err(LoginError::Protocol(format!(
            "the login never ended: {}",
            chain.join(" -> ")
        )))
    }
}

/// The options with SHA-256 left out of the CHAP algorithms.
fn without_sha256(opts: &IscsiOptions) -> IscsiOptions {
    let mut o = opts.clone();
    o.chap_algorithms.retain(|a| *a != ChapAlgorithm::Sha256);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_addresses_become_portals() {
        for (value, want) in [
            ("127.0.0.2:3261,1", "127.0.0.2:3261"),
            ("127.0.0.2,1", "127.0.0.2:3260"),
            ("127.0.0.2", "127.0.0.2:3260"),
            ("[::1]:3262,2", "[::1]:3262"),
            ("[fe80::1]", "[fe80::1]:3260"),
            ("array.example:3260,7", "array.example:3260"),
        ] {
            assert_eq!(target_address_portal(value).as_deref(), Ok(want), "{value}");
        }
        for bad in ["", ",1", "127.0.0.2:port,1", "[::1:3260,1"] {
            assert!(target_address_portal(bad).is_err(), "{bad}");
        }
    }
}
