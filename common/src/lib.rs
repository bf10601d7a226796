//! What the master and the slave both run, in one crate so that changing one binary
//! cannot silently change the other.
//!
//! - `protocol` — the wire types between master and slave; the only definition of the wire.
//! - `eval`     — meval behind `catch_unwind`: a finite value or an error in words
//!   (the slave runs it, the master checks submissions with it).
//! - `auth`     — the cluster token, compared in constant time.
//! - `serve`    — HTTP/1.1 serving with a header read timeout, and signal handling.
//! - `logging`  — the tracing subscriber, text or JSON.

pub mod auth;
pub mod eval;
pub mod logging;
pub mod protocol;
pub mod serve;
