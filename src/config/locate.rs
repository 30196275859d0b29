//! Where in the file an error is: the line of a dotted key, and the dotted
//! key of a parser error (even in text that is not TOML at all).

use std::collections::HashMap;
use std::path::Path;

use super::ConfigError;

/// A syntax or type error from the parser, with the dotted key it concerns.
pub(super) fn parse_error(
    text: &str,
    source: &Path,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let inner = e.inner();
    let mut reason = inner.message().trim().to_string();
    // serde_path_to_error spells the root ".", and nested keys as
    // `routes[1].destination`, the form validation errors use too.
    let mut key = match e.path().to_string() {
        root if root == "." => String::new(),
        path => path,
    };
    let line = inner.span().map(|s| line_of(text, s.start));
    // A missing key is reported at its table; name the key itself.
    if let Some(field) = reason
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        key = if key.is_empty() {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
    } else if key.is_empty() {
        // Nothing was deserialized yet: the text is not TOML. Name the key
        // written on that line, which is what the operator will look for.
        let written = line
            .and_then(|l| text.lines().nth(l - 1))
            .unwrap_or_default();
        key = line
            .and_then(|l| key_written_at(text, l))
            .unwrap_or_default();
        reason = format!("not valid TOML: {reason}");
        // `interval = 1s`: the likeliest slip of all.
        let value = written.split_once('=').map_or("", |(_, v)| v.trim());
        if value.starts_with(|c: char| c.is_ascii_digit())
            && value.contains(|c: char| c.is_ascii_alphabetic())
        {
            reason.push_str(" (durations are strings: write \"1s\", with quotes)");
        }
    }
    let line = line.or_else(|| key_line(text, &key));
    ConfigError {
        file: source.to_path_buf(),
        key: (!key.is_empty()).then_some(key),
        line,
        reason,
    }
}

/// The dotted key that line `line` (1-based) of a possibly broken document
/// assigns or opens, read from the text itself: the last table header above
/// it (`[[routes]]` counted, so `routes[1]`), then the name before `=`.
fn key_written_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let mut found = None;
    for (i, raw) in text.lines().enumerate().take(line) {
        let l = raw.trim();
        let here = i + 1 == line;
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            table = format!("{name}[{n}]");
            found = here.then(|| table.clone());
        } else if let Some(name) = l.strip_prefix('[') {
            table = name.split(']').next().unwrap_or(name).trim().to_string();
            found = here.then(|| table.clone());
        } else if here {
            let name = l.split_once('=')?.0.trim();
            if name.is_empty() || name.starts_with('#') {
                return None;
            }
            found = Some(if table.is_empty() {
                name.to_string()
            } else {
                format!("{table}.{name}")
            });
        }
    }
    found
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line of a dotted key path such as `routes[1].destination`,
/// falling back to the deepest part of it that the document spells out.
pub(super) fn key_line(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, idx)) => (name, idx.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, item)) = table.get_key_value(name) else {
            break;
        };
        span = k.span().or(span);
        match (index, item) {
            (Some(i), toml_edit::Item::ArrayOfTables(array)) => match array.get(i) {
                Some(t) => {
                    span = t.span().or(span);
                    table = t;
                }
                None => break,
            },
            (Some(i), _) => {
                span = item
                    .as_array()
                    .and_then(|a| a.get(i))
                    .and_then(toml_edit::Value::span)
                    .or(span);
                break;
            }
            (None, _) => match item.as_table_like() {
                Some(t) => table = t,
                None => break,
            },
        }
    }
    span.map(|s| line_of(text, s.start))
}
