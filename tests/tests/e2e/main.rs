//! End-to-end tests of the whole cluster: real processes, real HTTP, real ledger files.
//! One test binary (one link) for every scenario.

mod bad_input;
mod cli;
mod core;
mod hardening;
mod load;
mod masters;
mod metrics;
mod openapi;
mod postgres;
mod reliability;
mod restart;
mod security;
