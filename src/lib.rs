//! rampart
#![forbid(unsafe_code)]
