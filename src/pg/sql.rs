//! Building SQL text. Every identifier is quoted and every literal escaped here, so
//! user-supplied names are always names and never fragments of a statement.

/// Quote an identifier unconditionally; generated SQL stays unambiguous whatever the name.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.name`, both parts quoted.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// A string literal that means the same whatever standard_conforming_strings is.
pub fn literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// Join `items` after mapping each, with `sep`.
pub fn join<T, F: Fn(&T) -> String>(items: &[T], sep: &str, f: F) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(sep)
}

/// Names synclink gives its own objects must fit in NAMEDATALEN-1 bytes; a long table name
/// is cut on a character boundary and made unique by the link id.
pub fn object_name(base: &str, suffix: &str, link_id: i32) -> String {
    let full = format!("{base}_{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let tail = format!("_{link_id}_{suffix}");
    let mut cut = 63 - tail.len();
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &base[..cut], tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! cases {
        ($($name:ident: $f:expr, $input:expr => $expected:expr;)*) => {
            $(#[test] fn $name() { assert_eq!($f($input), $expected); })*
        };
    }

    cases! {
        ident_plain: ident, "products" => "\"products\"";
        ident_capitals_and_spaces: ident, "My Table" => "\"My Table\"";
        ident_embedded_quote: ident, "a\"b" => "\"a\"\"b\"";
        ident_sql_fragment: ident, "x\"; DROP TABLE t; --" => "\"x\"\"; DROP TABLE t; --\"";
        literal_plain: literal, "abc" => "'abc'";
        literal_quote: literal, "o'brien" => "'o''brien'";
        literal_backslash: literal, "a\\'b" => "E'a\\\\''b'";
    }

    #[test]
    fn qualified_quotes_both_parts() {
        assert_eq!(
            qualified("Sales", "order items"),
            "\"Sales\".\"order items\""
        );
    }

    #[test]
    fn object_name_short_and_long() {
        assert_eq!(object_name("products_b", "row", 7), "products_b_row");
        let long = "x".repeat(80);
        let n = object_name(&long, "capture", 12);
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("_12_capture"));
        let multibyte = "é".repeat(40);
        assert!(object_name(&multibyte, "row", 3).len() <= 63);
    }
}
