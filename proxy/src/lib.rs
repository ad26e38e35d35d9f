//! The sandbox's only way out: a TLS-intercepting HTTP proxy with its own DNS
//! responder, which decides every request against the session's capability
//! token and receipts each decision.
#![forbid(unsafe_code)]
