//! govbus's side of a Kafka connection: the client settings every agent
//! shares (`config`), topics created and corrected (`admin`), batches
//! polled (`poll`), lag measured off the consumer (`lag`), partitions read
//! to a bound (`read`), compacted topics followed (`tail`) and ACLs
//! described and applied (`acl`). The words these speak (catalog, topics,
//! secrets) are govbus-core's.

pub mod admin;
pub mod config;
pub mod headers;
pub mod lag;
pub mod poll;
pub mod read;
pub mod tail;
// The one module that calls C: librdkafka's ACL admin API (see its docs).
#[allow(unsafe_code)]
pub mod acl;

pub use admin::*;
pub use config::*;
pub use headers::dead_letter_headers;
pub use lag::*;
pub use poll::*;
pub use read::*;
