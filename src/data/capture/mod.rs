//! Capture: turning a statement on a linked table into change records in the outbox.

pub mod one_row;
pub mod statement;
pub mod writer;
