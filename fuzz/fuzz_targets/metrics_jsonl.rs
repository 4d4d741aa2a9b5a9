//! `encdecc report`'s reader of metrics.jsonl on any text, and its table and plot of what
//! it read: a run or an error, never a panic.
#![no_main]

use encdecc_cli::cli::report::{comparison_chart, parse_run, results_table};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(run) = parse_run("fuzz".into(), Path::new("metrics.jsonl"), text) {
        let runs = [run];
        let _ = results_table(&runs);
        let _ = comparison_chart(&runs, "held-out loss").to_svg();
    }
});
