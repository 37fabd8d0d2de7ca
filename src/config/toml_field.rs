//! Names the field of a configuration file a TOML error points at (`lun[1].cache`), so a
//! type error or an unknown key names the field as every other configuration error does,
//! not only its line.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Where in `text` byte `at` lies: its line (from 1) and the dotted name of the deepest
/// key or value there (`daemon.socket`, `lun[1].limits.iops`, `lun[0]` for a `[[lun]]`
/// header), when the text parses as TOML and a key or value holds it.
pub fn locate(text: &str, at: usize) -> (usize, Option<String>) {
    let at = at.min(text.len());
    let line = text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let field = DeTable::parse(text)
        .ok()
        .and_then(|doc| field_in_table(doc.get_ref(), at, ""));
    (line, field)
}

fn field_in_table(table: &DeTable<'_>, at: usize, prefix: &str) -> Option<String> {
    let mut here = None;
    for (key, value) in table.iter() {
        let name = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let Some(deeper) = field_in_value(value, at, &name) {
            return Some(deeper);
        }
        if key.span().contains(&at) || value.span().contains(&at) {
            here = Some(name);
        }
    }
    here
}

/// A field inside `value` (a table or an array) that holds `at`.
fn field_in_value(value: &Spanned<DeValue<'_>>, at: usize, name: &str) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(t) => field_in_table(t, at, name),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let name = format!("{name}[{i}]");
            field_in_value(item, at, &name).or_else(|| item.span().contains(&at).then_some(name))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[daemon]\nsocket = \"/x\"\n\n[[lun]]\nlun = 0\npath = \"/x\"\n\n\
                        [[lun]]\nlun = \"one\"\npath = \"/y\"\nlimits = { iops = 3 }\n";

    fn at(needle: &str) -> usize {
        TEXT.find(needle).expect("in the text")
    }

    #[test]
    fn names_the_key_or_value_at_an_offset() {
        assert_eq!(
            locate(TEXT, at("\"/x\"")),
            (2, Some("daemon.socket".into()))
        );
        assert_eq!(locate(TEXT, at("\"one\"")), (9, Some("lun[1].lun".into())));
        // A key at the start of its line is on that line.
        assert_eq!(
            locate(TEXT, at("path = \"/y\"")),
            (10, Some("lun[1].path".into()))
        );
        assert_eq!(
            locate(TEXT, at("3 }")),
            (11, Some("lun[1].limits.iops".into()))
        );
        assert_eq!(
            locate(TEXT, at("[[lun]]\nlun = \"")),
            (8, Some("lun[1]".into()))
        );
        // Between fields: the line only.
        assert_eq!(locate(TEXT, at("\n\n[[lun]]\nlun = 0")), (2, None));
    }

    #[test]
    fn text_that_is_not_toml_gives_the_line_only() {
        assert_eq!(locate("a = \nb = [", 7), (2, None));
        assert_eq!(locate("", 5), (1, None));
    }
}
