//! Integration tests of the contract crate: one binary, one module per area.

mod corpus;
mod examples;
