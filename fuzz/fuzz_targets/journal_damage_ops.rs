//! libFuzzer entry for `journal_damage_ops`: `journal_replica_ops` with
//! damage at rest (a flipped bit, an unreadable sector) that a scrub pass
//! must report; the input type and the checks live in
//! `ringstore_fuzz::journal_ops` (see `fuzz/src/journal_ops.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: ringstore_fuzz::log_panics(),
    |input: ringstore_fuzz::journal_ops::DamageInput| {
        ringstore_fuzz::journal_ops::run(&input);
    }
);
