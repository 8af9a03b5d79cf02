//! The failure scenarios of `shared/SCENARIOS.md`, each against a real PostgreSQL server, through the
//! ready-made stack a user would build, with the outcome and the counts asserted.
//!
//! Where the fault is on the network the test goes through the in-process fault proxy, whose counters
//! say how many connections were really opened. For S1, S2, S4 and S12 the same workload also runs
//! through a bare tokio-postgres client and through deadpool-postgres with its defaults, to show what the
//! project exists for. Each test prints one summary line (`SCENARIO ...`) that the README's table quotes.
//!
//! Timing is never asserted: waits are bounded loops on counters.

mod support;

mod s01_s04;
mod s05_s09;
mod s10_s14;
mod s15_s19;

mod failover;
mod matrix;
mod mux;
mod outcomes;
mod replicas;
mod resolved;
mod ride;
