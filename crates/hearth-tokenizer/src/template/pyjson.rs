//! JSON text as Python's `json.dumps` writes it, which is what chat templates were written
//! against (`", "` and `": "` separators, no HTML escaping, `indent` puts one item per line).

use std::fmt::Write;

use minijinja::value::{Value, ValueKind};

/// The `json.dumps` arguments templates use.
pub(super) struct Options {
    pub indent: Option<usize>,
    pub ensure_ascii: bool,
    pub sort_keys: bool,
}

pub(super) fn to_string(value: &Value, options: &Options) -> String {
    let mut out = String::new();
    write_value(&mut out, value, options, 0);
    out
}

fn write_value(out: &mut String, value: &Value, options: &Options, depth: usize) {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::Bytes => {
            let items: Vec<Value> = value
                .as_bytes()
                .unwrap_or_default()
                .iter()
                .map(|&b| Value::from(b))
                .collect();
            write_seq(out, &items, options, depth);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter().map(|it| it.collect()).unwrap_or_default();
            write_seq(out, &items, options, depth);
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = value
                .try_iter()
                .map(|keys| {
                    keys.map(|k| {
                        let v = value.get_item(&k).unwrap_or(Value::UNDEFINED);
                        let k = k.as_str().map_or_else(|| k.to_string(), str::to_owned);
                        (k, v)
                    })
                    .collect()
                })
                .unwrap_or_default();
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                separator(out, i == 0, options, depth + 1);
                write_str(out, k, options);
                out.push_str(": ");
                write_value(out, v, options, depth + 1);
            }
            close(out, options, depth);
            out.push('}');
        }
        // Plain objects (and kinds added by future minijinja versions) print as their string.
        _ => write_str(out, value.as_str().unwrap_or(&value.to_string()), options),
    }
}

fn write_seq(out: &mut String, items: &[Value], options: &Options, depth: usize) {
    if items.is_empty() {
        out.push_str("[]");
        return;
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        separator(out, i == 0, options, depth + 1);
        write_value(out, item, options, depth + 1);
    }
    close(out, options, depth);
    out.push(']');
}

fn separator(out: &mut String, first: bool, options: &Options, depth: usize) {
    match options.indent {
        Some(indent) => {
            if !first {
                out.push(',');
            }
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent * depth));
        }
        None if !first => out.push_str(", "),
        None => {}
    }
}

fn close(out: &mut String, options: &Options, depth: usize) {
    if let Some(indent) = options.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', indent * depth));
    }
}

fn write_number(out: &mut String, value: &Value) {
    // `as_i64` also accepts integral floats, which Python would print as `2.0`.
    if let Some(i) = value.as_i64().filter(|_| value.is_integer()) {
        let _ = write!(out, "{i}");
        return;
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_nan() => out.push_str("NaN"),
        Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
        // Python prints integral floats with a trailing `.0`.
        Ok(f) if f.fract() == 0.0 && f.abs() < 1e16 => {
            let _ = write!(out, "{f:.1}");
        }
        Ok(f) => {
            let _ = write!(out, "{f}");
        }
        // Integers beyond i64 (u64/i128) print fine through Display.
        Err(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

fn write_str(out: &mut String, s: &str, options: &Options) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (options.ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(expr: &str, indent: Option<usize>, ensure_ascii: bool) -> String {
        let options = Options {
            indent,
            ensure_ascii,
            sort_keys: false,
        };
        let env = minijinja::Environment::new();
        let value = env.compile_expression(expr).unwrap().eval(()).unwrap();
        to_string(&value, &options)
    }

    #[test]
    fn like_python() {
        let v = r#"{"a": [1, 2.0, 0.5, none, true], "b": "x\"<é>\n", "c": {}}"#;
        assert_eq!(
            dumps(v, None, false),
            r#"{"a": [1, 2.0, 0.5, null, true], "b": "x\"<é>\n", "c": {}}"#
        );
        assert_eq!(
            dumps(v, Some(2), true),
            "{\n  \"a\": [\n    1,\n    2.0,\n    0.5,\n    null,\n    true\n  ],\n  \
             \"b\": \"x\\\"<\\u00e9>\\n\",\n  \"c\": {}\n}"
        );
        assert_eq!(dumps(r#""🦙""#, None, true), r#""\ud83e\udd99""#);
        let mut out = String::new();
        let options = Options {
            indent: None,
            ensure_ascii: false,
            sort_keys: false,
        };
        write_str(&mut out, "\u{1}\u{8}\t", &options);
        assert_eq!(out, r#""\u0001\b\t""#);
    }
}
