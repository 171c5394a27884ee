//! DROP EXTENSION synclink must leave nothing behind, but the servers, user mappings, foreign
//! tables, triggers, functions and types synclink makes at run time are not extension members
//! (user mappings and triggers cannot be). An event trigger at ddl_command_start looks at the
//! DROP statement itself and, when synclink is among the extensions dropped, removes them
//! first — and asks each peer to drop its half of every link, so the peer stops sending.

use crate::control::link;
use crate::pg::error::OrRaise;
use crate::pg::spi;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Does this DROP statement name the synclink extension?
unsafe fn drops_synclink(parsetree: *mut pg_sys::Node) -> bool {
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

fn remove_everything() {
    for seq in
        spi::column::<pg_sys::Oid>("SELECT seq FROM synclink.shared_sequence", &[]).or_raise()
    {
        crate::control::sequence::unshare_by_seq(seq, true);
    }
    for id in
        spi::column::<i32>("SELECT link_id FROM synclink.link ORDER BY link_id", &[]).or_raise()
    {
        link::unlink_by_id(id, true, true);
    }
    for p in spi::column::<String>("SELECT peer_name FROM synclink.peer", &[]).or_raise() {
        crate::control::peer::drop_objects(&crate::catalog::peer::find(&p).or_raise().unwrap());
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_synclink_before_drop() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// Event trigger function, installed by sql/finalize.sql for ddl_command_start / DROP EXTENSION.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn synclink_before_drop(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let context = (*fcinfo).context;
    if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_EventTriggerData {
        error!("synclink_before_drop() may only be called as an event trigger");
    }
    let data = context as *mut pg_sys::EventTriggerData;
    if drops_synclink((*data).parsetree) {
        // The event trigger function is C: nothing pins the search path for it.
        crate::pg::privilege::pinned(remove_everything);
    }
    pg_sys::Datum::from(0)
}
