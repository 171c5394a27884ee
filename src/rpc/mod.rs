//! The peer-request protocol.
