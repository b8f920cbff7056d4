//! The `hx` binary's library: which services a process runs ([`fleet`]) and the
//! command line ([`cli`]; `hx graph` in [`graph`], `hx chat` in [`chat`]). `main.rs`
//! only parses arguments and calls [`cli::run`].

pub mod chat;
pub mod cli;
pub mod client;
pub mod fleet;
pub mod graph;
pub mod jobs;
pub mod keychain;
pub mod model;
pub mod pair;
pub mod setup;
pub mod workflow;
