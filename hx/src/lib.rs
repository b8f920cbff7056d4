//! The `hx` binary's library: which services a process runs ([`fleet`]) and the
//! command line ([`cli`]). `main.rs` only parses arguments and calls [`cli::run`].

pub mod cli;
pub mod client;
pub mod fleet;
