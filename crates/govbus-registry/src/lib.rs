//! govbus-registry
