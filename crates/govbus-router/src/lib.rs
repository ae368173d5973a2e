//! govbus-router
