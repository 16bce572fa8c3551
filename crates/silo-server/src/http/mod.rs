//! HTTP listeners: the accept loop they share, and the proxy handler.

pub mod proxy;
pub mod serve;
