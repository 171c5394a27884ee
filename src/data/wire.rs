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

#[cfg(test)]
mod tests {
    #[test]
    fn set_clauses_quote_mixed_case_names() {
        assert_eq!(
            super::set_clauses(),
            "    SET \"DateStyle\" = 'ISO, YMD'\n    SET \"IntervalStyle\" = 'postgres'\n    SET bytea_output = 'hex'\n    SET extra_float_digits = '3'\n"
        );
    }
}
