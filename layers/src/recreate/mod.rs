//! recreate (under construction in this session).
