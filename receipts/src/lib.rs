//! Signed, hash-chained receipts: the record of every decision openclaw makes,
//! written durably before the decision takes effect and verifiable offline.
#![forbid(unsafe_code)]
