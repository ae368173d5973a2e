//! govbus-consumer
