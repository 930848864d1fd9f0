//! The `ringstore` command-line tool.
fn main() {}
