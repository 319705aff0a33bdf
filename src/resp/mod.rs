//! RESP, the Redis protocol: [`parser`] turns the bytes a client sends into requests (RESP
//! arrays or inline commands, with Redis's limits and errors), [`reply`] turns replies into
//! RESP2 or RESP3 bytes.

pub mod parser;
pub mod reply;

pub use parser::{Limits, ProtocolError, RequestParser};
pub use reply::{Protocol, Reply};
