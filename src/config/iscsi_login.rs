//! Login settings of an iSCSI LUN besides its URL and paths: digests, the CHAP algorithms
//! offered, mutual CHAP (the name and secret the target proves itself with) and SendTargets
//! discovery of the target's portals. One parser serves the `--iscsi` options
//! (`URL,chap_algorithms=sha3-256:sha256,mutual_user=...`) and the TOML keys of the same
//! names; dashes are taken for underscores, as by the path options. The mutual secret is
//! read from a file or an environment variable, never from the command line.

use std::path::Path;

use super::{disk_spec, Secret};
use crate::iscsi::{ChapAlgorithm, IscsiOptions};

/// What a LUN's configuration says about its login; the defaults change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IscsiLoginSettings {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The CHAP algorithms to offer, preferred first (None: the initiator's default order).
    pub chap_algorithms: Option<Vec<ChapAlgorithm>>,
    /// Mutual CHAP: the name the target must answer with.
    pub mutual_user: Option<String>,
    /// Mutual CHAP: the secret the target must prove.
    pub mutual_secret: Option<Secret>,
    /// Ask the URL's portal for the target's other portals (SendTargets) and add them as
    /// paths.
    pub discover: bool,
}

impl IscsiLoginSettings {
    /// Applies one option of the command line (`value` None for a bare key). Returns None
    /// when the key is not a login setting. Errors name the key.
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Option<Result<(), String>> {
        let key = key.replace('-', "_");
        let flag = |v: Option<&str>| match v {
            None => Ok(true),
            Some(v) => disk_spec::parse_bool(v).map_err(|_| format!("'{v}' is not on/off")),
        };
        fn needs(v: Option<&str>) -> Result<&str, &'static str> {
            v.filter(|v| !v.is_empty()).ok_or("missing value")
        }
        let r = match key.as_str() {
            "header_digest" => flag(value).map(|b| self.header_digest = b),
            "data_digest" => flag(value).map(|b| self.data_digest = b),
            "discover" => flag(value).map(|b| self.discover = b),
            "chap_algorithms" => needs(value)
                .map_err(String::from)
                .and_then(|v| self.set_algorithms(v.split(':'))),
            "mutual_user" => needs(value)
                .map_err(String::from)
                .map(|v| self.mutual_user = Some(v.to_string())),
            "mutual_secret_file" => needs(value)
                .map_err(String::from)
                .and_then(|v| self.read_secret_file(Path::new(v))),
            "mutual_secret_env" => needs(value)
                .map_err(String::from)
                .and_then(|v| self.read_secret_env(v)),
            "mutual_secret" => Err(
                "not taken here, so that it stays out of ps and logs (use mutual_secret_file or mutual_secret_env)"
                    .into(),
            ),
            _ => return None,
        };
        Some(r.map_err(|e| format!("{key}: {e}")))
    }

    /// The algorithms to offer, in order; none, an unknown or a repeated one is an error.
    pub fn set_algorithms<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let mut list: Vec<ChapAlgorithm> = Vec::new();
        for n in names {
            let a: ChapAlgorithm = n.parse()?;
            if list.contains(&a) {
                return Err(format!("{a} is listed twice"));
            }
            list.push(a);
        }
        if list.is_empty() {
            return Err("no algorithm listed".into());
        }
        self.chap_algorithms = Some(list);
        Ok(())
    }

    pub fn read_secret_file(&mut self, path: &Path) -> Result<(), String> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        self.mutual_secret = Some(Secret(s.trim_end_matches(['\n', '\r']).to_string()));
        Ok(())
    }

    pub fn read_secret_env(&mut self, var: &str) -> Result<(), String> {
        let s = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        self.mutual_secret = Some(Secret(s));
        Ok(())
    }

    /// Checks the settings against the LUN's CHAP credentials (`chap`: the URL's user and
    /// its secret, when CHAP is used). Errors name the field.
    pub fn check(&self, chap: Option<(&str, Option<&str>)>) -> Result<(), String> {
        if self.chap_algorithms.is_some() && chap.is_none() {
            return Err("chap_algorithms: the URL names no CHAP user".into());
        }
        let secret = self.mutual_secret.as_ref().map(|s| s.0.as_str());
        match (&self.mutual_user, secret) {
            (None, None) => return Ok(()),
            (None, Some(_)) => {
                return Err("mutual_secret_file: no mutual_user given for the secret".into())
            }
            (Some(u), None | Some("")) => {
                return Err(format!(
                "mutual_user: '{u}' has no secret (give mutual_secret_file or mutual_secret_env)"
            ))
            }
            (Some(_), Some(_)) => {}
        }
        match chap {
            None => Err("mutual_user: mutual CHAP needs the CHAP user of the URL".into()),
            // RFC 7143 12.1.3: a secret must not authenticate both directions.
            Some((_, Some(own))) if Some(own) == secret => {
                Err("mutual_secret_file: the mutual secret must differ from the CHAP secret".into())
            }
            Some(_) => Ok(()),
        }
    }

    /// The session options with these settings applied; `opts.chap` is set already.
    pub fn apply(&self, opts: &mut IscsiOptions) {
        opts.header_digest = self.header_digest;
        opts.data_digest = self.data_digest;
        if let Some(list) = &self.chap_algorithms {
            opts.chap_algorithms = list.clone();
        }
        if let (Some(chap), Some(user), Some(secret)) =
            (opts.chap.as_mut(), &self.mutual_user, &self.mutual_secret)
        {
            chap.mutual = Some(Box::new(crate::iscsi::Chap {
                user: user.clone(),
                secret: secret.0.clone(),
                mutual: None,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_set_what_they_name() {
        let mut s = IscsiLoginSettings::default();
        for (k, v) in [
            ("header_digest", Some("on")),
            ("data-digest", None),
            ("discover", Some("yes")),
            ("chap_algorithms", Some("sha3-256:sha1")),
            ("mutual_user", Some("array")),
        ] {
            s.set(k, v).expect("a login key").expect(k);
        }
        assert!(s.header_digest && s.data_digest && s.discover);
        assert_eq!(
            s.chap_algorithms,
            Some(vec![ChapAlgorithm::Sha3_256, ChapAlgorithm::Sha1])
        );
        assert_eq!(s.mutual_user.as_deref(), Some("array"));
        s.set("header-digest", Some("off")).unwrap().unwrap();
        assert!(!s.header_digest);
        assert!(s.set("policy", Some("failover")).is_none());
    }

    #[test]
    fn errors_name_the_option() {
        let mut s = IscsiLoginSettings::default();
        for (k, v) in [
            ("header_digest", Some("maybe")),
            ("data_digest", Some("")),
            ("discover", Some("2")),
            ("chap_algorithms", Some("sha512")),
            ("chap_algorithms", Some("md5:md5")),
            ("chap_algorithms", None),
            ("mutual_user", None),
            ("mutual_secret_file", Some("/nonexistent/secret")),
            ("mutual_secret_env", Some("VSCSID_TEST_UNSET_VARIABLE_42")),
            ("mutual_secret", Some("hunter2")),
        ] {
            let e = s.set(k, v).expect("a login key").expect_err(k);
            assert!(e.starts_with(k), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn mutual_chap_is_checked_as_a_whole_and_its_secret_stays_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mutual");
        std::fs::write(&file, "target-secret-7\n").unwrap();
        let mut s = IscsiLoginSettings::default();
        let f = file.display().to_string();
        s.set("mutual_secret_file", Some(&f)).unwrap().unwrap();
        assert_eq!(
            s.check(Some(("alice", Some("a")))).unwrap_err(),
            "mutual_secret_file: no mutual_user given for the secret"
        );
        s.set("mutual_user", Some("array")).unwrap().unwrap();
        s.check(Some(("alice", Some("initiator-secret"))))
            .expect("complete mutual CHAP");
        assert!(s.check(None).unwrap_err().starts_with("mutual_user:"));
        assert!(s
            .check(Some(("alice", Some("target-secret-7"))))
            .unwrap_err()
            .contains("must differ"));
        assert!(!format!("{s:?}").contains("target-secret-7"));
        let mut o = IscsiOptions {
            chap: Some(crate::iscsi::Chap {
                user: "alice".into(),
                secret: "initiator-secret".into(),
                mutual: None,
            }),
            ..IscsiOptions::default()
        };
        s.apply(&mut o);
        let m = o
            .chap
            .as_ref()
            .and_then(|c| c.mutual.as_ref())
            .expect("mutual");
        assert_eq!(
            (m.user.as_str(), m.secret.as_str()),
            ("array", "target-secret-7")
        );
        assert!(!format!("{o:?}").contains("target-secret-7"));
        let only_user = IscsiLoginSettings {
            mutual_user: Some("array".into()),
            ..IscsiLoginSettings::default()
        };
        assert!(only_user
            .check(Some(("alice", None)))
            .unwrap_err()
            .contains("has no secret"));
        let algorithms = IscsiLoginSettings {
            chap_algorithms: Some(vec![ChapAlgorithm::Md5]),
            ..IscsiLoginSettings::default()
        };
        assert!(algorithms
            .check(None)
            .unwrap_err()
            .starts_with("chap_algorithms:"));
        algorithms
            .check(Some(("alice", None)))
            .expect("with a CHAP user");
    }

    fn login_of(l: &crate::config::LunConfig) -> &IscsiLoginSettings {
        match &l.kind {
            crate::config::LunKind::Iscsi { login, .. } => login,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_takes_every_login_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mutual");
        std::fs::write(&file, "array-secret-5\n").unwrap();
        let spec = format!(
            "iscsi://alice%pw-1@127.0.0.1/iqn.x:y/1,header_digest=on,data-digest=on,chap_algorithms=sha256:md5,mutual_user=array,mutual_secret_file={},discover,path=127.0.0.2",
            file.display()
        );
        let l = crate::config::lun_from_spec("iscsi", &spec, 0, 1).expect("spec");
        let s = login_of(&l);
        assert!(s.header_digest && s.data_digest && s.discover);
        assert_eq!(
            s.chap_algorithms,
            Some(vec![ChapAlgorithm::Sha256, ChapAlgorithm::Md5])
        );
        assert_eq!(s.mutual_user.as_deref(), Some("array"));
        assert_eq!(
            s.mutual_secret.as_ref().map(|s| s.0.as_str()),
            Some("array-secret-5")
        );
        assert!(!format!("{l:?}").contains("array-secret-5"));
        // Off by default.
        let l = crate::config::lun_from_spec("iscsi", "iscsi://127.0.0.1/iqn.x:y/1", 0, 1)
            .expect("spec");
        assert_eq!(login_of(&l), &IscsiLoginSettings::default());
    }

    #[test]
    fn command_line_errors_name_the_key() {
        for (opts, key) in [
            ("header-digest=maybe", "header_digest"),
            ("data_digest=2", "data_digest"),
            ("chap_algorithms=sha3-256,md5", "unknown option"),
            ("chap_algorithms=sha3-512", "chap_algorithms"),
            ("mutual_secret=hunter2", "mutual_secret"),
            ("mutual_user=array", "mutual_user"),
            ("discover=sometimes", "discover"),
        ] {
            let spec = format!("iscsi://alice%pw-1@127.0.0.1/iqn.x:y/1,{opts}");
            let e = crate::config::lun_from_spec("iscsi", &spec, 0, 1)
                .expect_err(opts)
                .0;
            assert!(e.contains(key), "{opts}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        // Without a CHAP user, CHAP keys do not apply.
        let e = crate::config::lun_from_spec(
            "iscsi",
            "iscsi://127.0.0.1/iqn.x:y/1,chap_algorithms=md5",
            0,
            1,
        )
        .expect_err("no CHAP user")
        .0;
        assert!(
            e.contains("chap_algorithms: the URL names no CHAP user"),
            "{e}"
        );
    }

    #[test]
    fn toml_takes_every_login_key_and_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mutual");
        std::fs::write(&file, "array-secret-6\n").unwrap();
        let lun = "[[lun]]\nlun = 0\nkind = \"iscsi\"\nurl = \"iscsi://alice%pw-1@127.0.0.1/iqn.x:y/1\"\n";
        let text = format!(
            "{lun}chap_algorithms = [\"sha3-256\", \"sha1\"]\nmutual_user = \"array\"\nmutual_secret_file = \"{}\"\ndiscover = true\ndata_digest = true\n",
            file.display()
        );
        let cfg = crate::config::parse_config_text(&text).expect("parse");
        let s = login_of(&cfg.luns[0]);
        assert_eq!(
            s.chap_algorithms,
            Some(vec![ChapAlgorithm::Sha3_256, ChapAlgorithm::Sha1])
        );
        assert_eq!(s.mutual_user.as_deref(), Some("array"));
        assert!(s.discover && s.data_digest && !s.header_digest);
        assert!(!format!("{cfg:?}").contains("array-secret-6"));
        for (extra, key) in [
            ("chap_algorithms = [\"md4\"]\n", "lun[0].chap_algorithms"),
            ("chap_algorithms = []\n", "lun[0].chap_algorithms"),
            (
                "mutual_secret_file = \"/nonexistent/x\"\n",
                "lun[0].mutual_secret_file",
            ),
            (
                "mutual_user = \"a\"\nmutual_secret_env = \"VSCSID_TEST_UNSET_VARIABLE_43\"\n",
                "lun[0].mutual_secret_env",
            ),
            ("mutual_user = \"array\"\n", "mutual_user"),
            // serde names the line and the type, as for every boolean key.
            ("discover = \"yes\"\n", "expected a boolean"),
        ] {
            let e = crate::config::parse_config_text(&format!("{lun}{extra}"))
                .expect_err(extra)
                .0;
            assert!(e.contains(key), "{extra}: {e}");
        }
        let disk = "[[lun]]\nlun = 0\npath = \"/a\"\n";
        for key in [
            "discover = true",
            "mutual_user = \"x\"",
            "chap_algorithms = [\"md5\"]",
        ] {
            let e = crate::config::parse_config_text(&format!("{disk}{key}\n"))
                .expect_err(key)
                .0;
            assert!(e.contains("does not apply to disk LUNs"), "{e}");
        }
    }
}
