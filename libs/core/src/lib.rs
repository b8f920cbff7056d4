//! Domain types shared by every Helix service, their validation, and the error type
//! that crosses service boundaries.
//!
//! Nothing here does I/O: the types are plain data, so every service and the gateway
//! agree on what a valid node is without calling each other.

pub mod error;
pub mod graph;
pub mod node;

pub use error::{Error, ErrorKind, Result};
