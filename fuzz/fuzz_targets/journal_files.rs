//! libFuzzer entry for `journal_files`; the input type and the checks live in
//! `ringstore_fuzz::journal_files` (see `fuzz/src/journal_files.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: ringstore_fuzz::log_panics(),
    |input: ringstore_fuzz::journal_files::Input| {
        ringstore_fuzz::journal_files::run(&input);
    }
);
