//! Behaviour that Resilience4j, Polly v8 and tower pin in their own test suites, replayed against
//! these layers (issue 21). Each test names the upstream test it ports; where this crate chose
//! differently, the test pins the choice and says why.

mod breaker;
mod budget;
mod retry;
