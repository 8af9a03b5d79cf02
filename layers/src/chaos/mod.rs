//! chaos (under construction in this session).
