//! DROP EXTENSION synclink must leave nothing behind, but the servers, user mappings, foreign
//! tables, triggers, functions and types synclink makes at run time are not extension members
//! (user mappings and triggers cannot be). An event trigger at ddl_command_start looks at the
//! DROP statement itself and, when synclink is among the extensions dropped, removes them
//! first — and asks each peer to drop its half of every link, so the peer stops sending.

use crate::control::link;
use crate::pg::error::{OrRaise, Result};
use crate::pg::spi::{self, Missing};
use pgrx::prelude::*;
use std::ffi::CStr;

/// Does this DROP statement name the synclink extension?
// SAFETY: callers must pass NULL or a valid parse node whose sub-nodes stay valid and unchanged
// for the call, as the `parsetree` of the EventTriggerData of a ddl_command_start event trigger
// is for the trigger's whole run.
unsafe fn drops_synclink(parsetree: *mut pg_sys::Node) -> bool {
    // SAFETY: `parsetree` is NULL or valid (above); each read follows a check: the tag before
    // the cast to DropStmt, `objects` non-NULL before its `length` elements are read, and each
    // element non-NULL and tagged T_String before its NUL-terminated `sval` is read.
    unsafe {
        if parsetree.is_null() || (*parsetree).type_ != pg_sys::NodeTag::T_DropStmt {
            return false;
        }
        let stmt = parsetree as *mut pg_sys::DropStmt;
        if (*stmt).removeType != pg_sys::ObjectType::OBJECT_EXTENSION || (*stmt).objects.is_null() {
            return false;
        }
        let list = (*stmt).objects;
        (0..(*list).length as usize).any(|i| {
            let node = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::Node;
            !node.is_null()
                && (*node).type_ == pg_sys::NodeTag::T_String
                && CStr::from_ptr((*(node as *mut pg_sys::String)).sval).to_bytes() == b"synclink"
        })
    }
}

fn remove_everything() -> Result<()> {
    // Taken before anything is dropped, in the order delivery takes them: a delivery worker
    // busy with a round finishes it first, and one that starts after waits for the drop,
    // instead of each holding a table the other waits for.
    if crate::data::queue::fanout_exists() {
        Spi::run(&format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            crate::data::queue::LOCK_ORDER
        ))?;
    }
    for seq in spi::column::<pg_sys::Oid>("SELECT seq FROM synclink.shared_sequence", &[])? {
        crate::control::sequence::unshare_by_seq(seq, true)?;
    }
    for id in spi::column::<i32>("SELECT link_id FROM synclink.link ORDER BY link_id", &[])? {
        link::unlink_by_id(id, true, true)?;
    }
    for p in spi::column::<String>("SELECT peer_name FROM synclink.peer", &[])? {
        let peer = crate::catalog::peer::find(&p)?.ok_or(Missing("peer"))?;
        crate::control::peer::drop_objects(&peer)?;
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_synclink_before_drop() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// Event trigger function, installed by sql/finalize.sql for ddl_command_start / DROP EXTENSION.
///
/// # Safety
///
/// Called by PostgreSQL's fmgr only, with a valid `fcinfo` for this call (sql/finalize.sql
/// declares it `LANGUAGE c RETURNS event_trigger`).
// SAFETY: the function is exported for fmgr, which calls it with a valid FunctionCallInfo;
// #[pg_guard] keeps Rust panics and PostgreSQL errors from crossing the C boundary unhandled.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn synclink_before_drop(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fmgr passes a valid FunctionCallInfo for this call; its `context` is NULL or a
    // node PostgreSQL made for the call, read as EventTriggerData only once its tag says so.
    let data = unsafe {
        let context = (*fcinfo).context;
        (!context.is_null() && (*context).type_ == pg_sys::NodeTag::T_EventTriggerData)
            .then_some(context as *mut pg_sys::EventTriggerData)
    };
    // Errors are raised here, not returned: PostgreSQL calls this C function directly and
    // there is no caller a Result could go back to.
    let Some(data) = data else {
        error!("synclink_before_drop() may only be called as an event trigger");
    };
    // SAFETY: an event trigger's `parsetree` is the statement being run, valid and unchanged
    // for the trigger's whole run: what drops_synclink requires.
    if unsafe { drops_synclink((*data).parsetree) } {
        // The event trigger function is C: nothing pins the search path for it. An error is
        // raised, as the ERROR that aborts the DROP EXTENSION.
        crate::pg::privilege::pinned(remove_everything).or_raise();
    }
    pg_sys::Datum::from(0)
}
