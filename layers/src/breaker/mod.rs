//! breaker (under construction in this session).
