//! The functions users call.
