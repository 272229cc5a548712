//! Integration tests of the `tessera` command.
