//! The wire format: the one text form in which row values travel between nodes and are
//! compared across them.
//!
//! Rows travel as the text of an array of the link's row type, each with a `synclink.stamp`
//! (the version the change made and the version it replaced). A value's text depends on
//! session settings; these fix it, so that the receiving node reads back exactly the value
//! that was sent, whatever the sender's or receiver's own settings. postgres_fdw gives the
//! peer's session the same settings for the statements it runs there.

use std::ffi::CStr;

/// The settings under which values are turned into text to be sent: ISO dates read back in
/// any DateStyle (the field order matters only when reading), the postgres interval style
/// is the one every IntervalStyle reads, hex bytea, and shortest-exact floats.
pub const SETTINGS: [(&CStr, &CStr); 4] = [
    (c"DateStyle", c"ISO, YMD"),
    (c"IntervalStyle", c"postgres"),
    (c"bytea_output", c"hex"),
    (c"extra_float_digits", c"3"),
];

/// Values whose text names catalog objects (reg* types, types outside pg_catalog in arrays
/// of composites) are written with schema names wherever the search path would not find them:
/// with this path, which the generated capture function pins too, every name but pg_catalog's
/// is qualified, on every node alike.
pub const SEARCH_PATH: (&CStr, &CStr) = (c"search_path", c"pg_catalog, pg_temp");

/// For comparing text across nodes (sync_diff's hashes, the conflict log's row hashes) the
/// text must be the same byte for byte, so a timestamptz is written in one time zone too.
pub const COMPARED: [(&CStr, &CStr); 5] = [
    SETTINGS[0],
    SETTINGS[1],
    SETTINGS[2],
    SETTINGS[3],
    (c"TimeZone", c"UTC"),
];

/// [`SETTINGS`] as the SET clauses of a generated function.
pub fn set_clauses() -> String {
    SETTINGS
        .iter()
        .map(|(name, value)| {
            format!(
                "    SET {} = '{}'\n",
                quoted_setting(name),
                value.to_str().unwrap_or_default()
            )
        })
        .collect()
}

/// A setting's name as SQL writes it: mixed-case names need quotes.
fn quoted_setting(name: &CStr) -> String {
    let name = name.to_str().unwrap_or_default();
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        format!("\"{name}\"")
    } else {
        name.to_string()
    }
}

/// Run `f` with values written as they are compared across nodes ([`COMPARED`]), restoring
/// the caller's settings afterwards.
pub fn compared<T>(f: impl FnOnce() -> T) -> T {
    crate::pg::plan::with_settings(&COMPARED, f)
}

/// Does this session already write values as [`SETTINGS`] would? Any extra_float_digits
/// above 0 prints floats the same (shortest exact); DateStyle only needs to be ISO (the
/// field order matters only when reading).
pub fn session_writes_wire_text() -> bool {
    // SAFETY: DateStyle, IntervalStyle and extra_float_digits are plain ints the GUC machinery
    // keeps current in this backend; GetConfigOption returns a pointer into the GUC's own
    // value (or NULL with missing_ok), valid until the setting changes, and it is read at once.
    unsafe {
        let bytea = pgrx::pg_sys::GetConfigOption(c"bytea_output".as_ptr(), true, false);
        pgrx::pg_sys::DateStyle == pgrx::pg_sys::USE_ISO_DATES as i32
            && pgrx::pg_sys::IntervalStyle == pgrx::pg_sys::INTSTYLE_POSTGRES as i32
            && pgrx::pg_sys::extra_float_digits > 0
            && !bytea.is_null()
            && CStr::from_ptr(bytea) == c"hex"
    }
}

/// The fields of a synclink.stamp before 0.6.0 gave it a generation.
const FIELDS_BEFORE_GENERATIONS: usize = 5;

/// A record's stamps (the text of a synclink.stamp[]) as this version reads them: a stamp
/// written before 0.6.0 (queued then, or sent by a node not yet updated) has no generation
/// field, which PostgreSQL's record input refuses, and gets generation 0, which is what every
/// version made then had. Stamps that have it come back as they are, without a copy.
pub fn with_generations(stamps: &str) -> std::borrow::Cow<'_, str> {
    // Each element of the array is a quoted composite: `"(at,node,base_at,base_node,op)"`.
    // Inside the element's quotes a backslash escapes the next character; inside the
    // composite, a field may be quoted (`"` … `"`, a quote in it doubled) and a backslash
    // escapes the next character. A comma outside both separates fields.
    let bytes = stamps.as_bytes();
    let mut short = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        // an element: find its end, counting the composite's separators
        let (mut commas, mut quoted, mut escaped, mut last) = (0, false, false, None);
        i += 1;
        while i < bytes.len() && bytes[i] != b'"' {
            let mut c = bytes[i];
            if c == b'\\' && i + 1 < bytes.len() {
                i += 1;
                c = bytes[i];
            }
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                quoted = !quoted;
            } else if c == b',' && !quoted {
                commas += 1;
            }
            last = Some(i);
            i += 1;
        }
        if commas + 1 == FIELDS_BEFORE_GENERATIONS {
            if let Some(close) = last.filter(|&l| bytes[l] == b')') {
                short.push(close);
            }
        }
        i += 1;
    }
    if short.is_empty() {
        return std::borrow::Cow::Borrowed(stamps);
    }
    let mut out = String::with_capacity(stamps.len() + 2 * short.len());
    let mut from = 0;
    for close in short {
        out.push_str(&stamps[from..close]);
        out.push_str(",0");
        from = close;
    }
    out.push_str(&stamps[from..]);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::with_generations;

    #[test]
    fn stamps_without_a_generation_get_generation_0() {
        assert_eq!(
            with_generations(r#"{"(1,a,,,I)","(3,b,2,a,U)"}"#),
            r#"{"(1,a,,,I,0)","(3,b,2,a,U,0)"}"#
        );
        // a node name with a comma, a quote, a parenthesis and a backslash, quoted in the
        // composite and escaped in the array
        let odd = r#"{"(5,\"x,\"\"y)\\\\\",4,\"x,\"\"y)\\\\\",D)"}"#;
        assert_eq!(
            with_generations(odd),
            r#"{"(5,\"x,\"\"y)\\\\\",4,\"x,\"\"y)\\\\\",D,0)"}"#
        );
        // a run of records queued before and after the update
        assert_eq!(
            with_generations(r#"{"(1,a,,,I)","(3,b,2,a,U,4)"}"#),
            r#"{"(1,a,,,I,0)","(3,b,2,a,U,4)"}"#
        );
    }

    #[test]
    fn stamps_with_a_generation_are_not_copied() {
        let text = r#"{"(1,a,,,I,0)","(3,\"b,c\",2,a,U,7)"}"#;
        assert!(matches!(
            with_generations(text),
            std::borrow::Cow::Borrowed(t) if t == text
        ));
        assert!(matches!(
            with_generations("{}"),
            std::borrow::Cow::Borrowed("{}")
        ));
    }

    #[test]
    fn set_clauses_quote_mixed_case_names() {
        assert_eq!(
            super::set_clauses(),
            "    SET \"DateStyle\" = 'ISO, YMD'\n    SET \"IntervalStyle\" = 'postgres'\n    SET bytea_output = 'hex'\n    SET extra_float_digits = '3'\n"
        );
    }
}
