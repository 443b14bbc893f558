//! Shared by the benches: the filter given on the command line.
// Each bench uses part of this module.
#![allow(dead_code)]

/// Criterion options that take a value (so that the value is not taken for a filter).
const WITH_VALUE: [&str; 16] = [
    "--profile-time",
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--measurement-time",
    "--warm-up-time",
    "--sample-size",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--output-format",
    "--color",
    "--format",
    "--plotting-backend",
];

/// The benchmark filter (`cargo bench ... -- FILTER`), if any.
pub fn filter() -> Option<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filter = None;
    let mut i = 0;
    while i < args.len() {
        if WITH_VALUE.contains(&args[i].as_str()) {
            i += 2;
            continue;
        }
        if !args[i].starts_with('-') {
            filter = Some(args[i].clone());
        }
        i += 1;
    }
    filter
}

/// Whether the run measures (`--bench`), rather than testing, listing or profiling.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time" || a == "--list")
}
