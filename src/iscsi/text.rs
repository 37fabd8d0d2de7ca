//! Text parameters (RFC 7143 section 6): `key=value` pairs separated by NUL bytes, and the
//! negotiation rules that combine what the initiator offered with what the target answered.

/// Parses `key=value\0...`; ignores empty entries and entries without '='.
pub fn parse(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Serialises pairs as `key=value\0...`.
pub fn encode(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The value of `key`, if present.
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Parses a Yes/No value.
pub fn yes(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = encode(&[
            ("HeaderDigest", "None".into()),
            ("MaxBurstLength", "262144".into()),
        ]);
        assert_eq!(d, b"HeaderDigest=None\0MaxBurstLength=262144\0");
        let p = parse(&d);
        assert_eq!(get(&p, "MaxBurstLength"), Some("262144"));
        assert_eq!(get(&p, "Nope"), None);
    }

    #[test]
    fn tolerates_garbage() {
        let p = parse(b"\0\0novalue\0a=b=c\0\xff\xfe=1\0");
        assert_eq!(get(&p, "a"), Some("b=c"));
        assert_eq!(p.len(), 2);
        assert_eq!(yes("Yes"), Some(true));
        assert_eq!(yes("maybe"), None);
    }
}
