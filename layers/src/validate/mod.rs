//! validate (under construction in this session).
