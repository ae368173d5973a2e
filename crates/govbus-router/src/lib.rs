//! The router: central-to-local subscription rules as live views. For every
//! change of a dataset and every subscription to it, decide enter / update /
//! leave / nothing, drop the fields the subscription may not see, and write
//! the view, exactly once (Kafka transactions that also commit the input
//! offsets).

pub mod control;
pub mod decide;
pub mod events;
pub mod fast;
pub use govbus_schema::cel as filter;
pub mod guard;
pub mod map;
pub mod route;
pub mod router;
pub mod views;

pub use decide::{decide, Decision};
pub use router::{Reload, Router, RouterConfig, RouterError};
