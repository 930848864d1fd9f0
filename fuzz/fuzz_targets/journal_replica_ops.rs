//! libFuzzer entry for `journal_replica_ops`: `journal_ops` with a
//! replica's truncations and hard states; the input type and the checks live
//! in `ringstore_fuzz::journal_ops` (see `fuzz/src/journal_ops.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: ringstore_fuzz::log_panics(),
    |input: ringstore_fuzz::journal_ops::ReplicaInput| {
        ringstore_fuzz::journal_ops::run(&input);
    }
);
