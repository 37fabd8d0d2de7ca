//! iSCSI addresses in libiscsi/QEMU URL syntax:
//! `iscsi://[user[%password]@]host[:port]/<target-iqn>/<lun>`.

use std::fmt;

use crate::scsi::lun_id::{LunId, MAX_LUN};

/// A parsed iSCSI URL.
#[derive(Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub target: String,
    pub lun: LunId,
}

impl fmt::Debug for IscsiUrl {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.user {
            Some(u) => write!(
                f,
                "iscsi://{u}@{host}:{}/{}/{}",
                self.port, self.target, self.lun
            ),
            None => write!(
                f,
                "iscsi://{host}:{}/{}/{}",
                self.port, self.target, self.lun
            ),
        }
    }
}

/// `text` (an `iscsi://` URL as given, options and all) with the password of its
/// `user%password@` part, if any, shown as `***`: for messages about a URL that did not
/// parse, which must not repeat the secret.
pub fn redact_password(text: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = text.strip_prefix("iscsi://") else {
        return text.into();
    };
    // As `parse` reads it: the user ends at the first '%', the password at the last '@'.
    match (rest.find('%'), rest.rfind('@')) {
        (Some(from), Some(to)) if from < to => {
            format!("iscsi://{}%***{}", &rest[..from], &rest[to..]).into()
        }
        _ => text.into(),
    }
}

impl IscsiUrl {
    /// `host:port` for connecting.
    pub fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn parse(url: &str) -> Result<IscsiUrl, String> {
        let rest = url
            .strip_prefix("iscsi://")
            .ok_or_else(|| "scheme: the URL must start with iscsi://".to_string())?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once('%') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
        };
        if user.as_deref() == Some("") {
            return Err("user: empty user name before '@'".into());
        }
        // Neither host names nor IPv6 literals contain '/': the first one ends the portal.
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| "host: unterminated '[' in an IPv6 address".to_string())?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err("host: missing".into());
        }
        let port = match port {
            None | Some("") => 3260,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port: '{p}' is not a TCP port"))?,
        };
        let (target, lun) = path
            .rsplit_once('/')
            .ok_or_else(|| "lun: the URL must end in /<target-iqn>/<lun>".to_string())?;
        if target.is_empty() || target.contains('/') {
            return Err("target: missing or malformed target name".into());
        }
        let lun = lun
            .parse::<u16>()
            .ok()
            .and_then(LunId::new)
            .ok_or_else(|| format!("lun: '{lun}' is not a LUN number (0..={MAX_LUN})"))?;
        Ok(IscsiUrl {
            user,
            password,
            host,
            port,
            target: target.to_string(),
            lun,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_not_repeated() {
        assert_eq!(
            redact_password("iscsi://alice%s3%c@r@10.0.0.5:99999/iqn.x:y/0,path=h:1"),
            "iscsi://alice%***@10.0.0.5:99999/iqn.x:y/0,path=h:1"
        );
        for plain in [
            "iscsi://alice@10.0.0.5/iqn.x:y/0",
            "iscsi://10.0.0.5/iqn.x:y/0",
            "http://a%b@c/d",
        ] {
            assert_eq!(redact_password(plain), plain);
        }
    }

    #[test]
    fn full_url() {
        let u =
            IscsiUrl::parse("iscsi://alice%s3cret@10.0.0.5:3261/iqn.2024-01.com.example:disk1/2")
                .unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.5", 3261));
        assert_eq!(u.target, "iqn.2024-01.com.example:disk1");
        assert_eq!(u.lun.value(), 2);
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(u.portal(), "10.0.0.5:3261");
    }

    #[test]
    fn defaults_and_ipv6() {
        let u = IscsiUrl::parse("iscsi://127.0.0.1/iqn.x:y/0").unwrap();
        assert_eq!((u.port, u.lun.value(), u.user), (3260, 0, None));
        let u = IscsiUrl::parse("iscsi://127.0.0.1/iqn.x:y/16383").unwrap();
        assert_eq!(u.lun.value(), 16383);
        let u = IscsiUrl::parse("iscsi://[::1]:3262/iqn.x:y/1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3262));
        assert_eq!(u.portal(), "[::1]:3262");
    }

    #[test]
    fn errors_name_the_part() {
        let e = |s: &str| IscsiUrl::parse(s).unwrap_err();
        assert!(e("http://h/t/0").starts_with("scheme"));
        assert!(e("iscsi://h:99999/t/0").starts_with("port"));
        assert!(e("iscsi://h/t/x").starts_with("lun"));
        assert!(e("iscsi://h/t/16384").starts_with("lun"));
        assert!(e("iscsi://h/t").starts_with("lun"));
        assert!(e("iscsi:///t/0").starts_with("host"));
        assert!(e("iscsi://h//0").starts_with("target"));
        assert!(e("iscsi://[::1/t/0").starts_with("host"));
    }
}
