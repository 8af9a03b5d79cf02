//! retry (under construction in this session).
