//! govbus-producer
