//! Which values a column's type holds, in a form both nodes compute alike and compare before
//! they link: the type with its modifier (numeric(10,2), varchar(3), timestamp(0)), looked
//! through domains to the type underneath, element by element for arrays, with an enum's
//! labels. Two columns whose descriptions differ would round, cut or refuse some of each
//! other's values, so the link is refused (sync_link_table, src/control/link.rs).

use pgrx::pg_sys;

/// The description of type `typid` with modifier `typmod` (as pg_attribute has them).
pub fn detail(typid: pg_sys::Oid, typmod: i32) -> Result<String, pgrx::spi::SpiError> {
    let mut typmod = typmod;
    // SAFETY: getBaseTypeAndTypmod walks the syscache through domains to the base type and
    // writes only `typmod`, a live local; get_element_type takes a plain OID.
    let (base, element) = unsafe {
        let base = pg_sys::getBaseTypeAndTypmod(typid, &mut typmod);
        (base, pg_sys::get_element_type(base))
    };
    if element != pg_sys::InvalidOid {
        // An array's modifier applies to its elements (varchar(3)[]).
        return Ok(format!("{}[]", detail(element, typmod)?));
    }
    let typmod = normalized(base, typmod);
    if base == pg_sys::VARCHAROID && typmod < 0 {
        // varchar without a length holds what text holds
        return Ok("text".into());
    }
    // SAFETY: format_type_with_typemod takes plain values and returns a new palloc'd,
    // NUL-terminated string (never NULL: an unknown type raises an ERROR), copied at once.
    let name = unsafe {
        std::ffi::CStr::from_ptr(pg_sys::format_type_with_typemod(base, typmod))
            .to_string_lossy()
            .into_owned()
    };
    Ok(match enum_labels(base)? {
        Some(labels) => format!("{name} with labels {labels}"),
        None => name,
    })
}

/// A modifier that means the same as none is dropped: time types store microseconds at
/// most, so timestamp(6) is timestamp, and likewise interval(6) with every field.
fn normalized(base: pg_sys::Oid, typmod: i32) -> i32 {
    const MAX_PRECISION: i32 = 6;
    const INTERVAL_FULL_RANGE: i32 = 0x7FFF;
    match base {
        pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID | pg_sys::TIMEOID | pg_sys::TIMETZOID
            if typmod == MAX_PRECISION =>
        {
            -1
        }
        pg_sys::INTERVALOID
            if typmod >= 0
                && (typmod >> 16) & 0x7FFF == INTERVAL_FULL_RANGE
                && typmod & 0xFFFF == MAX_PRECISION =>
        {
            -1
        }
        _ => typmod,
    }
}

/// An enum's labels, sorted (their order decides comparisons, not which values fit).
fn enum_labels(typid: pg_sys::Oid) -> Result<Option<String>, pgrx::spi::SpiError> {
    // SAFETY: get_typtype takes a plain OID, reads the type's syscache entry and returns 0
    // for an unknown type; no pointer is involved.
    if unsafe { pg_sys::get_typtype(typid) } as u8 != b'e' {
        return Ok(None);
    }
    crate::pg::privilege::pinned(|| {
        crate::pg::spi::maybe_one::<String>(
            "SELECT '(' OPERATOR(pg_catalog.||) pg_catalog.string_agg(pg_catalog.quote_literal(e.enumlabel::pg_catalog.text), ', ' \
                    ORDER BY e.enumlabel::pg_catalog.text COLLATE \"C\") OPERATOR(pg_catalog.||) ')' \
               FROM pg_catalog.pg_enum e WHERE e.enumtypid OPERATOR(pg_catalog.=) $1",
            &[typid.into()],
        )
    })
}
