//! The token server side: the OAuth2 endpoint, client authentication,
//! signing, and the discovery documents.

pub mod client_auth;
pub mod discovery;
pub mod endpoint;
pub mod mint;
pub mod throttle;
